"""Vision downstream tasks from a pre-trained MultiMAE encoder: classification, segmentation, depth.

Each task fine-tunes a fresh copy of the pre-trained encoder (RGB input, every patch visible, by
default) with a light head, then evaluates on every image of the dev split in one process:

* ``classification``: mean-pooled patch tokens -> LayerNorm -> linear; top-1 accuracy
  (``torchmetrics.MulticlassAccuracy``).
* ``segmentation``: dense head (3x3 conv on the token grid, per-patch linear to pixels); mIoU
  (``torchmetrics.MulticlassJaccardIndex``, macro over classes) and pixel accuracy.
* ``depth``: the same dense head predicting log-depth, trained with L1 on log-depth; ``delta_1`` (share of
  pixels with ``max(pred/gt, gt/pred) < 1.25``), ``abs_rel`` and ``rmse`` (metres), :class:`DepthMetrics`.

:class:`VisionSuite` runs the enabled tasks (the ``downstream`` config group) and saves Figure 3 for a few
fixed dev images (finetune/figures.py: input | this run's segmentation | ground truth, with the arrays a sweep
needs to put every balancer side by side). A suite on other data (NYUv2) overrides
:meth:`VisionSuite.figure_batch` and sets ``class_names`` / ``ignore_index``. :class:`DepthMetrics` is in
finetune/metrics.py.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from data.scenes import (
    CLASS_NAMES,
    NUM_CLASSES,
    NUM_OBJECT_CLASSES,
    SceneDataset,
    check_scene_options,
)
from finetune.figures import balancer_name, save_figure3
from finetune.metrics import DepthMetrics
from finetune.protocol import (
    CachedBatches,
    CachedItems,
    DownstreamSuite,
    adapt,
    cache_features,
    check_protocol,
    clip_sizes,
    nested_subset,
    parse_seeds,
    parse_train_samples,
    protocol_record,
    task_seed,
)
from models.multimae import MultiMAE, unpatchify
from utils.errors import ConfigError
from utils.optim import decay_groups, warmup_decay_schedule

log = logging.getLogger(__name__)

TASKS = ("classification", "segmentation", "depth")
#: task -> (primary metric, higher is better)
PRIMARY = {"classification": "top1", "segmentation": "miou", "depth": "delta_1"}


class DenseHead(nn.Module):
    """Tokens (B, N, D) on a (gh, gw) grid -> (B, out_channels, gh*p, gw*p).

    LayerNorm, a 3x3 convolution over the token grid (context between neighbouring patches), GELU,
    then a per-patch linear map to ``p*p*out_channels`` pixel values."""

    def __init__(
        self, dim: int, grid: tuple[int, int], patch_size: int, out_channels: int, hidden: int = 128
    ):
        super().__init__()
        self.grid, self.patch_size, self.out_channels = grid, patch_size, out_channels
        self.norm = LayerNorm(dim)
        self.context = nn.Conv2d(dim, hidden, 3, padding=1)
        self.to_pixels = nn.Linear(hidden, patch_size * patch_size * out_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        x = self.norm(tokens).transpose(1, 2).reshape(b, d, *self.grid)
        x = F.gelu(self.context(x)).flatten(2).transpose(1, 2)
        return unpatchify(self.to_pixels(x), self.patch_size, self.grid, self.out_channels)


class ClassificationHead(nn.Module):
    """Mean of the patch tokens -> LayerNorm -> (optional hidden layer) -> linear."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        layers: list[nn.Module] = [LayerNorm(dim)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.GELU()]
        layers.append(nn.Linear(hidden or dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens.mean(1))


class VisionFinetune(L.LightningModule):
    """Fine-tune a copy of a MultiMAE encoder on one downstream task.

    Args:
        backbone: the pre-trained MultiMAE (copied; its decoders are dropped).
        task: ``classification`` | ``segmentation`` | ``depth``.
        lr / weight_decay / warmup_steps: AdamW with linear warm-up and cosine decay.
        encoder_lr_scale: the encoder's learning rate is ``lr * encoder_lr_scale``.
        freeze_encoder: train the head only (the linear probe; its batches may carry the frozen encoder's
            cached patch tokens as ``features``).
        head_hidden: hidden width of the head (classification: 0 = linear).
        input_modalities: the encoder's inputs (every patch visible), RGB by default.
    """

    def __init__(
        self,
        backbone: MultiMAE,
        task: str,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
        encoder_lr_scale: float = 0.5,
        freeze_encoder: bool = False,
        head_hidden: int = 128,
        input_modalities: Sequence[str] = ("rgb",),
        num_classes: int = NUM_CLASSES,
        num_labels: int = NUM_OBJECT_CLASSES,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"downstream task {task!r} is unknown; choose among {', '.join(TASKS)}.")
        self.task, self.lr, self.weight_decay = task, float(lr), float(weight_decay)
        self.warmup_steps, self.encoder_lr_scale = int(warmup_steps), float(encoder_lr_scale)
        self.freeze_encoder, self.input_modalities = bool(freeze_encoder), tuple(input_modalities)
        encoder = copy.deepcopy(backbone)
        encoder.decoders = nn.ModuleDict()
        encoder.input_adapters = nn.ModuleDict({m: encoder.input_adapters[m] for m in self.input_modalities})
        if self.freeze_encoder:
            encoder.requires_grad_(False)
        self.encoder = encoder
        dim, grid, p = encoder.embed_dim, encoder.grid, encoder.patch_size
        if task == "classification":
            self.head = ClassificationHead(dim, num_labels, head_hidden)
            self.metrics = nn.ModuleDict({"top1": MulticlassAccuracy(num_labels, average="micro")})
        elif task == "segmentation":
            self.head = DenseHead(dim, grid, p, num_classes, head_hidden)
            self.metrics = nn.ModuleDict(
                {
                    "miou": MulticlassJaccardIndex(num_classes, average="macro"),
                    "pixel_acc": MulticlassAccuracy(num_classes, average="micro"),
                }
            )
        else:
            self.head = DenseHead(dim, grid, p, 1, head_hidden)
            self.metrics = nn.ModuleDict({"depth": DepthMetrics()})
        self.log_depth_offset = math.log(max(encoder.depth_mean, 1e-3))
        self.results: dict[str, float] = {}
        self.scored = 0  # dev images scored by the last test

    def patch_tokens(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, N, D): the encoder's patch tokens, averaged over input modalities at each position (the cached
        ``features`` of a linear probe's batch, when it has them)."""
        if "features" in batch:
            return batch["features"]
        missing = [m for m in self.input_modalities if m not in batch]
        if missing:
            raise ConfigError(
                f"downstream.input_modalities names {missing[0]!r}, which the downstream data does not provide."
            )
        tokens = self.encoder.forward_features(batch, self.input_modalities)[:, 1:]
        m = len(self.input_modalities)
        return tokens.reshape(tokens.shape[0], m, -1, tokens.shape[-1]).mean(1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits (classification: (B, K); segmentation: (B, C, H, W)) or depth in metres (B, H, W)."""
        out = self.head(self.patch_tokens(batch))
        if self.task == "depth":
            return torch.exp(out[:, 0] + self.log_depth_offset)
        return out

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.patch_tokens(batch))
        if self.task == "classification":
            return F.cross_entropy(out, batch["label"]), out
        if self.task == "segmentation":
            return F.cross_entropy(out, batch["semseg"]), out
        log_pred = out[:, 0] + self.log_depth_offset
        target = batch["depth"][:, 0].clamp(min=1e-3).log()
        return (log_pred - target).abs().mean(), torch.exp(log_pred)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log(f"downstream/{self.task}/train_loss", loss, prog_bar=False)
        return loss

    def _update_metrics(self, batch: dict) -> None:
        _, out = self._loss(batch)
        if self.task == "classification":
            self.metrics["top1"].update(out.argmax(-1), batch["label"])
        elif self.task == "segmentation":
            pred = out.argmax(1)
            self.metrics["miou"].update(pred, batch["semseg"])
            self.metrics["pixel_acc"].update(pred, batch["semseg"])
        else:
            self.metrics["depth"].update(out, batch["depth"][:, 0])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._update_metrics(batch)
        self.scored += len(batch["features"] if "features" in batch else batch[self.input_modalities[0]])

    def on_test_epoch_start(self) -> None:
        self.scored = 0
        for metric in self.metrics.values():
            metric.reset()

    def on_test_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for name, metric in self.metrics.items():
            result = metric.compute()
            if isinstance(result, dict):
                values.update({k: float(v) for k, v in result.items()})
            else:
                values[name] = float(result)
        self.results = values
        self.log_dict({f"downstream/{self.task}/{k}": v for k, v in values.items()})

    def configure_optimizers(self):
        head = [p for p in self.head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.lr, "weight_decay": self.weight_decay}]
        encoder = decay_groups(
            self.encoder.named_parameters(),
            self.weight_decay,
            no_decay=("token",),
            lr=self.lr * self.encoder_lr_scale,
        )
        groups += [g for g in encoder if g["params"]]  # none under a frozen encoder
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # linear warm-up, cosine decay to 0 (utils/optim.py)
        scheduler = warmup_decay_schedule(optimizer, min(self.warmup_steps, total), total, 0.0, "cosine")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


_TASK_DEFAULTS = {
    "enabled": True,
    "protocol": None,
    "epochs": 3,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 20,
    "encoder_lr_scale": 0.5,
    "head_hidden": 128,
}
#: the targets a cached linear-probe batch keeps
_TARGETS = ("label", "semseg", "depth", "semseg_full", "depth_full")


def _task_options(tasks: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``downstream.tasks``: each enabled task's options over ``_TASK_DEFAULTS`` (``None``: every task with its
    defaults), refusing an unknown task or option, epochs below 1 and an unknown protocol."""
    tasks = dict(tasks or {t: {} for t in TASKS})
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"downstream.tasks.{unknown[0]} is not a task; choose among {', '.join(TASKS)}.")
    enabled: dict[str, dict[str, Any]] = {}
    for name, opts in tasks.items():
        opts = dict(opts or {})
        bad = [k for k in opts if k not in _TASK_DEFAULTS]
        if bad:
            raise ConfigError(
                f"downstream.tasks.{name}.{bad[0]} is not an option; use {', '.join(_TASK_DEFAULTS)}."
            )
        merged = {**_TASK_DEFAULTS, **opts}
        if int(merged["epochs"]) < 1:
            raise ConfigError(f"downstream.tasks.{name}.epochs={merged['epochs']} must be >= 1.")
        if merged["protocol"] is not None:
            check_protocol(merged["protocol"], f"downstream.tasks.{name}.protocol")
        if merged["enabled"]:
            enabled[name] = merged
    return enabled


class VisionSuite(DownstreamSuite):
    """The downstream stage of MM-MAE (``downstream=scenes``): fine-tune and evaluate each task.

    Args:
        tasks: per task (classification, segmentation, depth) its options: enabled, protocol (null: the
            suite's), epochs, lr, weight_decay, warmup_steps, encoder_lr_scale, head_hidden (under
            ``linear_probe`` epochs / lr / weight_decay / warmup_steps train the head alone).
        protocol: ``finetune`` (encoder and head) or ``linear_probe`` (frozen encoder whose patch tokens are
            computed once for every task, the head alone), see ``finetune.protocol``.
        train_samples: ``None`` (all ``train_size`` images), N, or a list of N (nested subsets, a curve).
        finetune_seeds: each task is adapted once per seed from the same pre-trained weights.
        image_size: must equal the pre-trained model's image size.
        train_size / dev_size: fine-tuning images (split ``train``) and evaluation images (split
            ``test``, never seen in pre-training); metrics use every dev image. A subclass that reads its
            images passes ``train_size=None`` and calls :meth:`clip_train_samples` once it knows how many.
        batch_size / num_workers: loaders of both.
        input_modalities: the encoder's inputs during fine-tuning (all patches visible).
        figure_images: how many fixed dev images go into the Figure-3 PNG.
        min_objects / max_objects / noise_std / colour_mode / depth_shading: the scene generator's options (those
            of pre-training, ``data/scenes.py``).
        seed: scenes are a function of (seed, split, index).
        max_steps: cap on optimizer steps per (task, N, seed) (``None``: the task's epochs).
    """

    def __init__(
        self,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        protocol: str = "finetune",
        train_samples: Any = None,
        finetune_seeds: Any = (0,),
        image_size: int = 64,
        train_size: int | None = 2048,
        dev_size: int = 512,
        batch_size: int = 64,
        num_workers: int = 0,
        input_modalities: Sequence[str] = ("rgb",),
        figure_images: int = 4,
        min_objects: int = 3,
        max_objects: int = 6,
        noise_std: float = 0.03,
        colour_mode: str = "class",
        depth_shading: float = 0.0,
        seed: int = 0,
        max_steps: int | None = None,
    ) -> None:
        self.tasks = _task_options(tasks)
        input_modalities = tuple(input_modalities)
        check_scene_options(
            image_size,
            input_modalities,
            min_objects,
            max_objects,
            "downstream",
            modalities_key="input_modalities",
            colour_mode=colour_mode,
            depth_shading=depth_shading,
        )
        self.image_size, self.input_modalities = int(image_size), input_modalities
        self.scene_kw = dict(
            seed=seed,
            image_size=image_size,
            min_objects=min_objects,
            max_objects=max_objects,
            noise_std=noise_std,
            colour_mode=colour_mode,
            depth_shading=depth_shading,
        )
        self.protocol = check_protocol(protocol)
        self.sizes, self.curve = parse_train_samples(train_samples)
        self.seeds = parse_seeds(finetune_seeds)
        self.data_seed = int(seed)
        if max_steps is not None and int(max_steps) < 1:
            raise ConfigError(
                f"downstream.max_steps={max_steps} must be >= 1 (or null: the epochs of each task)."
            )
        self.max_steps = None if max_steps is None else int(max_steps)
        self.dev_size = int(dev_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.figure_images = min(int(figure_images), self.dev_size)
        self.extra_results: dict[str, Any] = {}
        self.train_size = None if train_size is None else int(train_size)
        self.clip_train_samples(self.train_size)

    def clip_train_samples(self, available: int | None) -> None:
        """Every N of ``train_samples`` within the ``available`` training images (a larger one is cut to it,
        with a warning), recorded in ``extra_results``; ``None``: not known yet, left as configured."""
        self.sizes = clip_sizes(self.sizes, available, "training images")
        self.extra_results["protocol"] = protocol_record(self.protocol, self.sizes, self.curve, self.seeds)

    # ---------------------------------------------------------------------------------- data
    #: the training images are a pure function of their index (no augmentation): under ``finetune`` each
    #: training subset is rendered once and kept in memory (a subclass with random crops sets False)
    render_once = True
    #: how the loaders batch items (``None``: torch's default); NYUv2 keeps full-resolution targets as lists
    collate_fn: Callable | None = None
    #: Figure 3's class names (the colour of class id c is the c-th), and the id of void pixels (drawn black)
    class_names: Sequence[str] = CLASS_NAMES
    ignore_index: int | None = None

    def datasets(self) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """(training set, dev set) of the suite (a subclass reads its own data)."""
        modalities = tuple(dict.fromkeys(("rgb", "depth", "semseg") + self.input_modalities))
        train = SceneDataset(self.train_size, "train", modalities=modalities, **self.scene_kw)
        dev = SceneDataset(self.dev_size, "test", modalities=modalities, **self.scene_kw)
        return train, dev

    def loader(self, dataset, shuffle: bool = False, generator: torch.Generator | None = None) -> DataLoader:
        workers = self.num_workers if len(dataset) > self.batch_size else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=generator,
            collate_fn=self.collate_fn,
        )

    # ---------------------------------------------------------------------------------- run
    def make_module(self, backbone: MultiMAE, name: str, opts: dict) -> VisionFinetune:
        """The fine-tuning module of downstream task ``name`` (a subclass may use its own)."""
        return VisionFinetune(backbone, name, num_classes=backbone.num_classes, **self.finetune_kwargs(opts))

    def finetune_kwargs(self, opts: dict) -> dict:
        """The per-task options every fine-tuning module takes."""
        keys = ("lr", "weight_decay", "warmup_steps", "encoder_lr_scale", "head_hidden")
        probe = self.task_protocol(opts) == "linear_probe"
        return {k: opts[k] for k in keys} | {
            "input_modalities": self.input_modalities,
            "freeze_encoder": probe,
        }

    def task_protocol(self, opts: dict) -> str:
        """The task's own ``protocol`` if set, else the suite's."""
        return str(opts.get("protocol") or self.protocol)

    def run(
        self, pretrained: L.LightningModule, make_trainer: Callable[..., L.Trainer], out_dir: Path
    ) -> dict[str, dict]:
        backbone: MultiMAE = getattr(pretrained, "model", pretrained)
        if backbone.image_size != self.image_size:
            raise ConfigError(
                f"downstream.image_size={self.image_size} differs from model.image_size={backbone.image_size}."
            )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        train_set, dev_set = self.datasets()
        largest = nested_subset(len(train_set), self.sizes[-1], self.data_seed, "training images")
        cache: dict[str, list] = {}
        results: dict[str, dict] = {}
        for k, (name, opts) in enumerate(self.tasks.items()):
            if self.task_protocol(opts) == "linear_probe" and not cache:
                cache = self.cache_features(
                    self.make_module(backbone, name, opts), train_set, dev_set, largest
                )
            results[name] = self.adapt_task(k, name, opts, backbone, train_set, dev_set, cache, make_trainer)
            if name == "segmentation" and self.figure_images:
                module, trainer = self._figure_module
                self.extra_results["figure3"] = self.save_figure(module, trainer, out_dir, pretrained)
        encoder_dir = getattr(pretrained, "exported_dir", None)
        if encoder_dir is not None:
            meta = Path(encoder_dir) / "encoder_timm.json"
            if meta.exists():
                info = json.loads(meta.read_text())
                self.extra_results["pretrained_encoder"] = {
                    "path": str(Path(encoder_dir) / "encoder_timm.pth"),
                    "timm_name": info["timm_name"],
                    "timm_kwargs": info["timm_kwargs"],
                }
        return results

    def cache_features(
        self, probe: VisionFinetune, train_set, dev_set, largest: list[int]
    ) -> dict[str, list]:
        """The frozen encoder's patch tokens (and the targets) of the largest training subset, in the order of
        the nested subsets (so N examples are the first N), and of every dev image: computed once, shared by
        every linear-probe task and seed."""
        probe.eval()
        featurize = probe.patch_tokens
        with torch.no_grad():
            return {
                "train": cache_features(self.loader(Subset(train_set, largest)), featurize, _TARGETS),
                "dev": cache_features(self.loader(dev_set), featurize, _TARGETS),
            }

    def adapt_task(
        self, k: int, name: str, opts: dict, backbone, train_set, dev_set, cache, make_trainer
    ) -> dict:
        """Adapt task ``name`` for every N and fine-tuning seed (``finetune.protocol.adapt``)."""
        probe = self.task_protocol(opts) == "linear_probe"
        self._figure_module = None
        rendered: dict[int | None, list] = {}

        def fit_and_score(n: int | None, seed: int) -> dict[str, float]:
            torch.manual_seed(task_seed(seed, k))
            g = torch.Generator().manual_seed(task_seed(seed, k))
            module = self.make_module(backbone, name, opts)
            if probe:  # the first n cached items are the nested subset of size n
                count = len(train_set) if n is None else n
                train = DataLoader(
                    CachedItems(cache["train"], range(count)),
                    batch_size=self.batch_size,
                    shuffle=True,
                    drop_last=count >= self.batch_size,
                    generator=g,
                )
                dev = DataLoader(CachedBatches(cache["dev"]), batch_size=None)
            else:
                subset = nested_subset(len(train_set), n, self.data_seed, "training images")
                items = Subset(train_set, subset)
                if self.render_once:  # deterministic images: render the subset once, not once per epoch
                    items = rendered.setdefault(n, [items[i] for i in range(len(items))])
                train, dev = self.loader(items, shuffle=True, generator=g), self.loader(dev_set)
            trainer = make_trainer(max_epochs=int(opts["epochs"]), max_steps=self.max_steps, name=name)
            trainer.fit(module, train_dataloaders=train)
            trainer.test(module, dataloaders=dev, verbose=False)
            log.info("downstream %s (N=%s, seed %d): %s", name, n, seed, json.dumps(module.results))
            if self._figure_module is None and n == self.sizes[-1]:
                self._figure_module = (module, trainer)  # the first seed at the largest N draws Figure 3
            return {**module.results, "dev_rows": module.scored}

        return {
            **adapt(fit_and_score, self.sizes, self.seeds, PRIMARY[name], self.curve),
            "primary": PRIMARY[name],
            "higher_is_better": True,
        }

    # ---------------------------------------------------------------------------------- Figure 3
    def figure_batch(self) -> dict[str, torch.Tensor]:
        """The fixed dev images of the figure, at the model's input size: ``rgb`` (normalised), ``semseg``
        (ground truth) and optionally ``aspect`` (each image's original height / width, for display); here the
        first ``figure_images`` of split ``test``."""
        dev = SceneDataset(self.dev_size, "test", modalities=("rgb", "depth", "semseg"), **self.scene_kw)
        items = [dev[i] for i in range(self.figure_images)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def save_figure(self, module: VisionFinetune, trainer: L.Trainer, out_dir: Path, pretrained: Any) -> dict:
        """Figure 3 of this run (``finetune.figures.save_figure3``) on :meth:`figure_batch`'s images."""
        return save_figure3(
            module,
            self.figure_batch(),
            out_dir,
            balancer_name(pretrained),
            self.class_names,
            self.ignore_index,
            trainer,
        )
