"""Pre-training checkpoints: which one a run resumes, loading and checking that it belongs to this
experiment, the random states kept in it, and restoring a pre-trained module for ``stage=finetune``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback
from omegaconf import DictConfig

from runner.factories import RANDOM_INIT, build_pretraining
from utils.errors import DataError

log = logging.getLogger(__name__)


def resolve_ckpt(path: str | None, out_dir: Path) -> str | None:
    """The checkpoint file ``ckpt_path=path`` names (``last``: this run's last.ckpt), or None without one."""
    if path is None:
        return None
    if path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise DataError(f"ckpt_path=last: no checkpoint at {last}; run without ckpt_path first.")
        return str(last)
    if not Path(path).is_file():
        raise DataError(f"ckpt_path: no checkpoint file at {path}.")
    return str(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a Lightning checkpoint, failing with one sentence if the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(
            f"checkpoint {path} is not a PyTorch/Lightning checkpoint ({type(exc).__name__})."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"checkpoint {path} has no 'state_dict': it is not a Lightning checkpoint.")
    return ckpt


def check_matches(ckpt: dict, module, path, experiment: str) -> None:
    """Fail with one sentence if a checkpoint's weights do not fit this experiment's module."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if missing or unexpected or wrong:
        detail = (missing or unexpected or wrong)[0]
        raise DataError(
            f"checkpoint {path} does not fit experiment '{experiment}' with this model config "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped keys, e.g. '{detail}'): "
            "it belongs to another experiment or model size."
        )


class RNGStateCheckpoint(Callback):
    """Keeps the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and restores
    them on resume, so masking and dropout after a resume draw what the uninterrupted run drew."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        checkpoint["rng_states"] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        states = checkpoint.get("rng_states")
        if not states:
            return
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        if states.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def restore_pretrained(cfg: DictConfig, path: str):
    """Build the experiment's module and load a pre-training checkpoint into it (stage=finetune); with
    ``path == "random"`` keep the fresh initialisation drawn from ``seed`` (the random-init control)."""
    return restore_with_data(cfg, path, setup=False)[1]


def restore_with_data(cfg: DictConfig, path: str, setup: bool = True):
    """``(datamodule, module)``: :func:`restore_pretrained` that also returns the pre-training data, set up
    (``setup=False``: only where the module prepares from it)."""
    datamodule, module = build_pretraining(cfg)
    if setup or module.prepares_from_data:  # before loading: e.g. the vocabulary sized to the tokenizer
        datamodule.prepare_data()
        datamodule.setup("fit")
        module.prepare_for_finetune(datamodule)
    if path != RANDOM_INIT:
        ckpt = load_checkpoint(path)
        check_matches(ckpt, module, path, cfg.experiment)
        module.load_state_dict(ckpt["state_dict"], strict=True)
        if "LossAggregation" in ckpt.get("callbacks", {}):
            module.aggregator.load_state_dict(ckpt["callbacks"]["LossAggregation"])
    return datamodule, module
