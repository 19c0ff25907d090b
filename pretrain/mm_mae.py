"""MM-MAE pre-training (paper section 4.2): one masked multi-modal forward pass, T = one task per modality.

Each step masks the batch once (Dirichlet shares of the visible-token budget across modalities), runs
the shared encoder once on the visible tokens, decodes every modality and hands the per-task losses,
as sums and counts over the masked patches' pixels, to the shared loss-aggregation callback, which
reduces them across ranks and applies the configured balancer.

For a balancer that needs per-task gradients w.r.t. the encoder output (``features`` mode), every decoder
reads its own detached copy of it (``FeatureCopies``): the callback back-propagates each task's loss through
its decoder alone, computes the weights, and the step's backward sends the weighted sum of the tasks'
gradients into the encoder once, so the step costs one backward, as with ``none``.

The module's default reference loss (``balancer=minimax_ref``, and ``upstream_eval``'s ``context_gain``) is each
modality's context-free loss: the loss, through :meth:`~models.multimae.MultiMAE.losses` itself, of the best
prediction that sees nothing of the scene (:func:`context_free_predictor`: per position, the mean target for
RGB's MSE, the median for depth's L1, the class frequencies for the semantic map's cross-entropy), estimated at
setup on the first ``reference_scenes`` training scenes (:func:`context_free_reference`).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch

from models.multimae import MultiMAE, MultiMAEOutput
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


def context_free_predictor(model: MultiMAE, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per task, the prediction ``(N, values per patch)`` of every patch that minimises the task's loss over the
    scenes ``inputs`` while seeing none of them: per position (patch x pixel x channel) of ``model.targets``
    (so RGB normalised per patch if ``norm_pix_loss``, depth standardised), the mean for RGB (MSE), the median
    for depth (L1) and, for the semantic map, the log class frequencies as logits (cross-entropy; a class never
    seen there gets -1e4, a probability of 0)."""
    out = {}
    for t, target in model.targets(inputs).items():
        if t == "rgb":
            out[t] = target.mean(0)
        elif t == "depth":
            out[t] = target.median(0).values  # any value between the two middle ones minimises L1
        else:
            freq = torch.stack([(target == c).double().mean(0) for c in range(model.num_classes)], -1)
            # (N, pixels x classes), pixel-major as the decoder's logits
            out[t] = freq.log().clamp(min=-1e4).flatten(1)
    return out


def context_free_reference(
    model: MultiMAE, inputs: dict[str, torch.Tensor], chunk: int = 32
) -> dict[str, float]:
    """Each task's context-free loss on the scenes ``inputs``: the per-element mean loss (``model.losses``, every
    patch masked) of :func:`context_free_predictor`, in float64. Masking picks patches independently of their
    content, so this is also the expected loss of that predictor on the masked patches of a training step."""
    inputs = {m: x if m == "semseg" else x.double() for m, x in inputs.items()}
    predictor = context_free_predictor(model, inputs)
    totals = {t: [0.0, 0.0] for t in predictor}
    scenes = next(iter(inputs.values())).shape[0]
    for start in range(0, scenes, chunk):
        part = {m: x[start : start + chunk] for m, x in inputs.items()}
        n = next(iter(part.values())).shape[0]
        output = MultiMAEOutput(
            preds={t: p.expand(n, -1, -1) for t, p in predictor.items()},
            masked={t: torch.ones(n, model.num_patches, dtype=torch.bool) for t in predictor},
            features=torch.empty(0),
            ids_keep=torch.empty(0, dtype=torch.long),
        )
        for t, (total, count) in model.losses(output, part).items():
            totals[t][0] += float(total)
            totals[t][1] += float(count)
    return {t: total / count for t, (total, count) in totals.items()}


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
        reference_scenes: the first this many training scenes (``datamodule.train_set``) give each modality's
            context-free loss at setup (:func:`context_free_reference`): the default reference of
            ``balancer.normalize=reference`` and ``upstream_eval``'s ``reference``; 0: none.
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
        reference_scenes: int = 256,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["model", "balancer", "aggregation", "optimizer", "scheduler"])
        self.model = model
        self.aggregator = LossAggregation.build(
            balancer, list(model.tasks), self.provides, type(self).__name__, **(aggregation or {})
        )
        self.val_mask_seed = int(val_mask_seed)
        if type(reference_scenes) is not int or reference_scenes < 0:
            raise ConfigError(
                f"module.reference_scenes={reference_scenes!r} must be an integer >= 0 (0: none)."
            )
        self.reference_scenes = reference_scenes
        self.reference: dict[str, float] | None = None  # each task's context-free loss (setup)
        self.upstream_eval: dict | None = None  # the last validation's upstream evaluation (results.json)
        self._val_acc: torch.Tensor | None = None
        self.exported_dir: Path | None = None

    def setup(self, stage: str) -> None:
        """Before fitting: each modality's context-free loss on the first ``reference_scenes`` training scenes,
        the default reference of ``balancer.normalize=reference`` (``balancer.reference`` still wins)."""
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        if stage != "fit" or dataset is None or self.reference_scenes == 0 or len(dataset) == 0:
            return
        self.on_fit_start()  # the data's modalities and classes fit the model
        n = min(self.reference_scenes, len(dataset))
        with torch.random.fork_rng(devices=[]):  # a dataset that augments draws the same scenes every time
            torch.manual_seed(self.val_mask_seed)
            scenes = [dataset[i] for i in range(n)]
        if any(m not in scenes[0] for m in self.model.modalities):
            return  # the first training step names the missing modality
        inputs = {m: torch.stack([s[m] for s in scenes]) for m in self.model.modalities}
        self.reference = context_free_reference(self.model, inputs)
        what = f"each modality's context-free loss on {n} training scenes (module.reference_scenes)"
        self.aggregator.default_reference(self.reference, what)

    # ------------------------------------------------------------------------------------ checks
    def on_fit_start(self) -> None:
        """The data provides the model's modalities and no more semantic classes than it predicts."""
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
        if self._val_acc is None:  # called outside a validation loop
            self.on_validation_epoch_start()
        means = {}
        for i, (task, (total, count)) in enumerate(losses.items()):
            self._val_acc[0, i] += total.detach().double()
            self._val_acc[1, i] += float(count)
            count = float(count)
            means[task] = float(total) / max(count, 1.0)
            # weighting each batch's mean by its element count gives the mean over all elements
            self.log(f"val/loss/{task}", means[task], batch_size=max(int(count), 1), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        # per task (in model.tasks order): loss sum (row 0), elements (row 1)
        self._val_acc = torch.zeros(2, len(self.model.tasks), dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self) -> None:
        """The upstream evaluation on the validation scenes (fixed masks): per modality the loss, its context-free
        ``reference`` and ``context_gain = reference - loss``, and the smallest gain (``min_context_gain``)."""
        if self._val_acc is None or self.trainer.sanity_checking:
            return
        acc = self.trainer.strategy.reduce(self._val_acc, reduce_op="sum")
        tasks = {}
        for i, t in enumerate(self.model.tasks):
            n = float(acc[1, i])
            if n == 0:
                continue
            tasks[t] = {"loss": float(acc[0, i]) / n}
            if self.reference is not None:
                tasks[t]["reference"] = self.reference[t]
                tasks[t]["context_gain"] = self.reference[t] - tasks[t]["loss"]
                self.log(f"val/context_gain/{t}", tasks[t]["context_gain"], sync_dist=False)
        result = {"step": int(self.global_step), "tasks": tasks}
        gains = [row["context_gain"] for row in tasks.values() if "context_gain" in row]
        if gains:
            result["min_context_gain"] = min(gains)
        self.upstream_eval = result

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
