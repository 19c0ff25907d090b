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
from pathlib import Path
from typing import Any

import torch

from models.multimae import MultiMAE
from pretrain.aggregation import LossAggregation
from pretrain.base import PretrainingModule
from pretrain.feature_gradients import FeatureCopies
from utils.errors import ConfigError
from utils.optim import decay_groups, estimated_steps, warmup_decay_schedule

#: what export_pretrained writes into its directory
ENCODER_FILE = "encoder_timm.pth"
ENCODER_META = "encoder_timm.json"
FULL_MODEL_FILE = "multimae.pth"


class MMMAEPretraining(PretrainingModule):
    """Lightning wrapper of :class:`~models.multimae.MultiMAE` pre-training.

    Args:
        model: the MultiMAE (its ``tasks`` are the balanced upstream tasks).
        balancer: ``num_tasks -> Balancer`` (Hydra partial).
        aggregation: options of :class:`~pretrain.aggregation.LossAggregation`.
        lr: peak AdamW learning rate; weight_decay on matrices only (not biases, norms, tokens).
        betas: AdamW betas (MAE: 0.9, 0.95).
        warmup_steps: linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step.
        val_mask_seed: validation masks are drawn from this seed (same masks every validation).
    """

    def __init__(
        self,
        model: MultiMAE,
        balancer: Any,
        aggregation: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.05,
        val_mask_seed: int = 1234,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ConfigError(f"module.lr={lr} must be positive.")
        if warmup_steps < 0:
            raise ConfigError(f"module.warmup_steps={warmup_steps} must be >= 0.")
        self.save_hyperparameters(ignore=["model", "balancer", "aggregation"])
        self.model = model
        self.aggregator = LossAggregation.build(balancer, task_names=list(model.tasks), **(aggregation or {}))
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(betas)
        self.warmup_steps, self.min_lr_ratio = int(warmup_steps), float(min_lr_ratio)
        self.val_mask_seed = int(val_mask_seed)
        self.exported_dir: Path | None = None

    def configure_callbacks(self):
        return [self.aggregator]

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

    # ------------------------------------------------------------------------------------ optim
    def configure_optimizers(self):
        model = decay_groups(self.model.named_parameters(), self.weight_decay, no_decay=("token",))
        balancer = self.aggregator.balancer_param_groups()
        # balancer groups with their own lr keep it (read before AdamW fills in every group's lr)
        constant = [len(model) + i for i, g in enumerate(balancer) if "lr" in g]
        # fused CUDA kernel where the parameters are on a GPU (one launch for all of them); torch's default elsewhere
        fused = True if self.device.type == "cuda" else None
        optimizer = torch.optim.AdamW(model + balancer, lr=self.lr, betas=self.betas, fused=fused)
        # linear warm-up, cosine decay to min_lr_ratio; a balancer's own lr stays constant (utils/optim.py)
        total = estimated_steps(self)
        scheduler = warmup_decay_schedule(
            optimizer,
            min(self.warmup_steps, total),
            total,
            self.min_lr_ratio,
            "cosine",
            constant_groups=constant,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
