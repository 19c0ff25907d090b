"""The run behind ``python run.py``: one function per ``stage`` (:data:`STAGES`). The training stages (all,
pretrain, finetune: runner/training.py) pre-train -> export -> fine-tune every downstream task -> results.json;
the others label an image folder, save the wandb dashboard, rebuild a sweep's report, or read what a PoS-BERT's
NSP relies on. Each stage imports what it needs, so the light ones start without torch or Lightning.

Everything is built from the composed Hydra config with ``hydra.utils.instantiate``; see ``conf/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.factories import RANDOM_INIT, instantiate_node
from utils.errors import ConfigError

log = logging.getLogger(__name__)


def run_all(cfg: DictConfig, out_dir: Path) -> dict | None:
    """``stage=all``: pre-train, then fine-tune every downstream task from the result."""
    from runner.training import pretrain_and_adapt

    return pretrain_and_adapt(cfg, out_dir)


def run_pretrain(cfg: DictConfig, out_dir: Path) -> dict | None:
    """``stage=pretrain``: pre-train and export; results.json without downstream results."""
    from runner.training import pretrain_only

    return pretrain_only(cfg, out_dir)


def run_finetune(cfg: DictConfig, out_dir: Path) -> dict:
    """``stage=finetune``: fine-tune every downstream task from ``pretrained_ckpt`` (``random``: the random-init
    control)."""
    from runner.training import adapt_checkpoint

    return adapt_checkpoint(cfg, out_dir)


def run_pseudo_label(cfg: DictConfig, out_dir: Path) -> None:
    """``stage=pseudo_label``: write depth/semantic maps for an image folder (data/pseudo_labels.py)."""
    from runner.console import quiet_console

    quiet_console()
    instantiate_node(cfg.get("pseudo_label"), "pseudo_label").run()


def run_dashboard(cfg: DictConfig, out_dir: Path) -> None:
    """``stage=dashboard``: save the wandb workspace of the project (runner/dashboard.py)."""
    from runner.dashboard import save

    log.info("wandb workspace saved: %s", save(cfg))


def run_report(cfg: DictConfig, out_dir: Path) -> None:
    """``stage=report``: rebuild summary.md, summary.csv and the figures of ``report.sweep_dir`` (and store it
    under ``results/<report.store>``), or render the docs from ``results/`` (``report.docs``)."""
    from runner.report import report_stage

    report_stage(**OmegaConf.to_container(cfg.report))


def run_nsp_cues(cfg: DictConfig, out_dir: Path) -> None:
    """``stage=nsp_cues``: a PoS-BERT's NSP accuracy by kind of validation pair, for each of ``nsp_cues.runs``."""
    from runner.console import quiet_console
    from runner.nsp_cues import print_cues

    quiet_console()
    print_cues(OmegaConf.select(cfg, "nsp_cues.runs"))


def run_plan(cfg: DictConfig, out_dir: Path) -> None:
    """``stage=plan``: plan.json (parameters, FLOPs, memory per device, fit on named GPUs, GPU-hours) without
    training (runner/plan.py)."""
    from runner.console import quiet_console
    from runner.plan import write_plan

    quiet_console()
    write_plan(cfg, out_dir)


#: ``stage=<name>`` -> the function that runs it (``cfg``, the run directory) and returns results.json or None
STAGES: dict[str, Callable[[DictConfig, Path], dict | None]] = {
    "all": run_all,
    "pretrain": run_pretrain,
    "finetune": run_finetune,
    "pseudo_label": run_pseudo_label,
    "dashboard": run_dashboard,
    "report": run_report,
    "nsp_cues": run_nsp_cues,
    "plan": run_plan,
}


def run(cfg: DictConfig) -> dict | None:
    """Run the configured stage; returns the results dict (stage all/finetune/pretrain) or None."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    if results_path.exists():
        results_path.unlink()  # never leave an earlier run's results beside a new run's failure
    stage = STAGES.get(str(cfg.stage))
    if stage is None:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got stage={cfg.stage}.")
    if cfg.get("pretrained_ckpt") == RANDOM_INIT and cfg.stage != "finetune":
        raise ConfigError(
            f"pretrained_ckpt=random (the random-init control, balancer=random_init) needs stage=finetune, got stage={cfg.stage}."
        )
    return stage(cfg, out_dir)
