"""MM-MAE pre-training (paper section 4.2): one masked multi-modal forward pass, T = one task per modality.

Each step masks the batch once (Dirichlet shares of the visible-token budget across modalities), runs
the shared encoder once on the visible tokens, decodes every modality and hands the per-task losses,
as sums and counts over the masked patches' pixels, to the shared loss-aggregation callback, which
reduces them across ranks and applies the configured balancer.

For a balancer that needs per-task gradients w.r.t. the encoder output (``features`` mode), every decoder
reads its own detached copy of it (``FeatureCopies``): the callback back-propagates each task's loss through
its decoder alone, computes the weights, and the step's backward sends the weighted sum of the tasks'
gradients into the encoder once, so the step costs one backward, as with ``none``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch

from models.multimae import MultiMAE
from pretrain.aggregation import LossAggregation
from pretrain.base import PretrainingModule
from pretrain.feature_gradients import FeatureCopies
from utils.errors import ConfigError
from utils.optim import warmup_decay_schedule

#: what export_pretrained writes into its directory
ENCODER_FILE = "encoder_timm.pth"
ENCODER_META = "encoder_timm.json"
FULL_MODEL_FILE = "multimae.pth"
#: the optimizer and schedule of a module built from Python without them (conf/module/scheduler/warmup_cosine.yaml
#: holds the same schedule, conf/module/optimizer/adamw_mae.yaml the same AdamW with lr 2e-3)
ADAMW = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
SCHEDULE = partial(
    warmup_decay_schedule, warmup_steps=50, min_lr_ratio=0.05, decay="cosine", clip_warmup=True
)


class MMMAEPretraining(PretrainingModule):
    """Lightning wrapper of :class:`~models.multimae.MultiMAE` pre-training.

    Args:
        model: the MultiMAE (its ``tasks`` are the balanced upstream tasks).
        balancer: ``num_tasks -> Balancer`` (Hydra partial).
        aggregation: options of :class:`~pretrain.aggregation.LossAggregation`.
        optimizer, scheduler: see :class:`~pretrain.base.PretrainingModule` (default: :data:`ADAMW`, MAE's
            betas, weight decay on matrices only, not biases, norms or tokens; :data:`SCHEDULE`, linear
            warm-up, then cosine decay).
        val_mask_seed: validation masks are drawn from this seed (same masks every validation).
    """

    no_decay = ("token",)
    # the last shared layer, and the representation: as FeatureCopies (every task's feature gradients from one
    # backward) for a balancer that needs features but not shared_params, else as the plain tensor
    provides = frozenset({"shared_params", "features", "feature_grads"})

    def __init__(
        self,
        model: MultiMAE,
        balancer: Any,
        aggregation: dict | None = None,
        optimizer=ADAMW,
        scheduler=SCHEDULE,
        val_mask_seed: int = 1234,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["model", "balancer", "aggregation", "optimizer", "scheduler"])
        self.model = model
        self.aggregator = LossAggregation.build(
            balancer, list(model.tasks), self.provides, type(self).__name__, **(aggregation or {})
        )
        self.val_mask_seed = int(val_mask_seed)
        self.exported_dir: Path | None = None

    # ------------------------------------------------------------------------------------ checks
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        provided = getattr(datamodule, "modalities", None)
        if provided is not None:
            missing = [m for m in self.model.modalities if m not in provided]
            if missing:
                raise ConfigError(
                    f"model.modalities names {missing[0]!r}, which the data does not provide "
                    f"(data.modalities={list(provided)})."
                )
        classes = getattr(datamodule, "num_classes", None)
        if "semseg" in self.model.modalities and classes is not None and classes > self.model.num_classes:
            raise ConfigError(
                f"model.num_classes={self.model.num_classes} is smaller than the {classes} classes of the "
                "data's semantic maps."
            )

    def _inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        missing = [m for m in self.model.modalities if m not in batch]
        if missing:
            raise ConfigError(
                f"model.modalities names {missing[0]!r}, which the data does not provide "
                f"(its batches hold {sorted(k for k in batch if k != 'label')})."
            )
        return {m: batch[m] for m in self.model.modalities}

    # ------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int):
        inputs = self._inputs(batch)
        copies = self.aggregator.needs_feature_gradients
        output = self.model(inputs, detach_features=copies)
        losses = self.model.losses(output, inputs)
        features = FeatureCopies(output.features, output.task_features) if copies else output.features
        return self.aggregator(self, losses, shared_params=self.model.shared_params(), features=features)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        inputs = self._inputs(batch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.val_mask_seed + batch_idx)
            output = self.model(inputs)
        losses = self.model.losses(output, inputs)
        means = {}
        for task, (total, count) in losses.items():
            count = float(count)
            means[task] = float(total) / max(count, 1.0)
            # weighting each batch's mean by its element count gives the mean over all elements
            self.log(f"val/loss/{task}", means[task], batch_size=max(int(count), 1), sync_dist=True)

    # ------------------------------------------------------------------------------------ throughput
    def throughput_units(self, batch: dict) -> dict[str, int]:
        """What a training batch holds, for the throughput callback: its scenes (samples = images, each with
        every modality)."""
        n = int(next(iter(self._inputs(batch).values())).shape[0])
        return {"samples": n, "images": n}

    # ------------------------------------------------------------------------------------ export
    def export_pretrained(self, out_dir: Path) -> None:
        """Write ``encoder_timm.pth`` (RGB encoder under timm ViT keys), ``encoder_timm.json`` (how to
        load it) and ``multimae.pth`` (the whole MultiMAE state dict) into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = self.model.timm_encoder_state_dict()
        torch.save(state, out_dir / ENCODER_FILE)
        torch.save(
            {k: v.detach().cpu() for k, v in self.model.state_dict().items()}, out_dir / FULL_MODEL_FILE
        )
        meta = {
            "timm_name": self.model.timm_name,
            "timm_kwargs": self.model.timm_kwargs(),
            "keys": sorted(state),
            "load": (
                f"m = timm.create_model({self.model.timm_name!r}, pretrained=False, **timm_kwargs); "
                f"m.load_state_dict(torch.load('{ENCODER_FILE}'), strict=True)"
            ),
            "input": "RGB (B, 3, H, W) normalised as (x - 0.45) / 0.25 with x in [0, 1] (data.scenes)",
        }
        (out_dir / ENCODER_META).write_text(json.dumps(meta, indent=2) + "\n")
        self.exported_dir = out_dir
