"""NYUv2 downstream suite of MM-MAE (``downstream=nyuv2``): 40-class segmentation and depth on real images.

Reuses finetune/vision.py: :class:`NYUv2Suite` is a :class:`~finetune.vision.VisionSuite` whose data come
from data/nyuv2.py, and :class:`NYUv2Finetune` is a :class:`~finetune.vision.VisionFinetune` that honours
void pixels (``ignore_index``) in the loss and in mIoU / pixel accuracy, ignores pixels without depth, and
scores predictions upsampled to each test image's full resolution (every test image is evaluated).

Test images of any size: the model sees each test image resized to its input size (``image_size``, square);
the prediction is resized back (bilinear logits / log-depth) to that image's own resolution and scored there.
:func:`collate_full_resolution` batches the resized inputs as tensors and keeps the full-resolution targets
as lists, so images of different sizes share a batch. Figure 3 (``figure3_<balancer>.png``) shows the first
``figure_images`` test images at the model's input size, drawn with their own aspect ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from data.nyuv2 import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, NYUv2Dataset
from finetune.vision import VisionFinetune, VisionSuite
from models.multimae import MultiMAE
from utils.errors import ConfigError

log = logging.getLogger(__name__)

#: NYUv2 tasks (it has no image-level labels)
NYU_TASKS = ("segmentation", "depth")
#: encoder inputs NYUv2 can feed (its semantic maps are targets, with void pixels)
NYU_INPUTS = ("rgb", "depth")
#: keys of a test sample at the image's own resolution (batched as lists: sizes may differ)
FULL_KEYS = ("semseg_full", "depth_full")


def collate_full_resolution(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Batch NYUv2 samples: the model's inputs and targets at ``image_size`` stacked as tensors, the
    full-resolution targets (``semseg_full`` / ``depth_full``) as lists of tensors, one per image."""
    batch = default_collate([{k: v for k, v in it.items() if k not in FULL_KEYS} for it in items])
    for key in FULL_KEYS:
        if key in items[0]:
            batch[key] = [it[key] for it in items]
    return batch


class NYUv2Finetune(VisionFinetune):
    """:class:`VisionFinetune` with void pixels ignored and full-resolution evaluation."""

    def __init__(
        self, backbone: MultiMAE, task: str, ignore_index: int = IGNORE_INDEX, **kwargs: Any
    ) -> None:
        super().__init__(backbone, task, **kwargs)
        self.ignore_index = int(ignore_index)
        if task == "segmentation":
            n = int(kwargs.get("num_classes", NUM_CLASSES))
            self.metrics = nn.ModuleDict(
                {
                    "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=self.ignore_index),
                    "pixel_acc": MulticlassAccuracy(n, average="micro", ignore_index=self.ignore_index),
                }
            )

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task == "classification":
            return super()._loss(batch)
        out = self.head(self.patch_tokens(batch))
        if self.task == "segmentation":
            target = batch["semseg"]
            if not (target != self.ignore_index).any():  # every pixel void: no signal, no NaN
                return out.sum() * 0.0, out
            return F.cross_entropy(out, target, ignore_index=self.ignore_index), out
        log_pred = out[:, 0] + self.log_depth_offset
        target = batch["depth"][:, 0]
        valid = target > 1e-3  # 0 = no measurement
        if not valid.any():
            return log_pred.sum() * 0.0, torch.exp(log_pred)
        return (log_pred[valid] - target[valid].log()).abs().mean(), torch.exp(log_pred)

    def _update_metrics(self, batch: dict) -> None:
        if self.task == "classification":
            return super()._update_metrics(batch)
        out = self.head(self.patch_tokens(batch))
        key = "semseg" if self.task == "segmentation" else "depth"
        targets = batch.get(f"{key}_full", batch[key])  # a list when the test images differ in size
        for i in range(out.shape[0]):  # one image at a time: 40 full-resolution logit maps are large
            target = targets[i][None]
            size = target.shape[-2:]
            pred = out[i : i + 1]
            if pred.shape[-2:] != size:
                pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
            if self.task == "segmentation":
                pred = pred.argmax(1)
                self.metrics["miou"].update(pred, target)
                self.metrics["pixel_acc"].update(pred, target)
            else:
                self.metrics["depth"].update(torch.exp(pred[:, 0] + self.log_depth_offset), target[:, 0])
        return None


def _nyu_task_options(
    tasks: Mapping[str, Mapping[str, Any]] | None, input_modalities: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``downstream.tasks`` as plain dicts (``None``: every NYUv2 task), refusing an enabled task that NYUv2
    lacks and an input modality it cannot feed the encoder."""
    tasks = {k: dict(v or {}) for k, v in dict(tasks or {t: {} for t in NYU_TASKS}).items()}
    for name, opts in tasks.items():
        if name not in NYU_TASKS and opts.get("enabled", True):
            raise ConfigError(
                f"downstream.tasks.{name} is not an NYUv2 task; choose among {', '.join(NYU_TASKS)}."
            )
    bad = [m for m in input_modalities if m not in NYU_INPUTS]
    if bad:
        raise ConfigError(
            f"downstream.input_modalities names {bad[0]!r}, which NYUv2 cannot feed the encoder "
            f"(use {', '.join(NYU_INPUTS)})."
        )
    return tasks


class NYUv2Suite(VisionSuite):
    """Fine-tune on NYUv2's 795 training images and evaluate on all 654 test images, per task.

    Args:
        root: folder holding ``mat_file``, ``splits_file`` and ``mapping_file``, or ``{train,test}/{rgb,depth,label}``.
        format: ``auto`` | ``mat`` | ``png`` (see data/nyuv2.py).
        mat_file / splits_file / mapping_file: file names under root (or absolute paths), ``mat`` format.
        tasks: per task (segmentation, depth) the options of :class:`VisionSuite`.
        protocol / train_samples / finetune_seeds: the adaptation protocol (``finetune.protocol``); a linear
            probe caches one random crop of each training image.
        image_size: the model's input size (must equal the pre-trained model's); test images of any size are
            resized to it and their predictions resized back to their own resolution, where they are scored.
        crop_scale: area range of the training random-resized crop.
        ignore_index: semseg value of void pixels.
        depth_unit: unit of the depth PNGs' uint16 values: ``mm`` | ``1e-4m`` | ``m`` (png format).
        train_size / dev_size: at most this many images per split (null: all).
        figure_images: the first this many test images go into Figure 3 (0: no figure).
        batch_size / num_workers / input_modalities / seed / max_steps: as in :class:`VisionSuite`.
    """

    def __init__(
        self,
        root: str | None = None,
        format: str = "auto",  # noqa: A002 - the config key
        mat_file: str = "nyu_depth_v2_labeled.mat",
        splits_file: str = "splits.mat",
        mapping_file: str = "classMapping40.mat",
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        protocol: str = "finetune",
        train_samples: Any = None,
        finetune_seeds: Any = (0,),
        image_size: int = 224,
        crop_scale: Sequence[float] = (0.5, 1.0),
        ignore_index: int = IGNORE_INDEX,
        depth_unit: str = "mm",
        train_size: int | None = None,
        dev_size: int | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        input_modalities: Sequence[str] = ("rgb",),
        figure_images: int = 4,
        seed: int = 0,
        max_steps: int | None = None,
    ) -> None:
        tasks = _nyu_task_options(tasks, input_modalities)
        super().__init__(
            tasks=tasks,
            protocol=protocol,
            train_samples=train_samples,
            finetune_seeds=finetune_seeds,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            input_modalities=input_modalities,
            figure_images=0,
            seed=seed,
            train_size=None,  # known once the images are read, below
            max_steps=max_steps,
        )
        self.ignore_index = int(ignore_index)
        self._open_splits(
            root,
            train_size,
            dev_size,
            format=format,
            mat_file=mat_file,
            splits_file=splits_file,
            mapping_file=mapping_file,
            image_size=self.image_size,
            crop_scale=crop_scale,
            ignore_index=self.ignore_index,
            depth_unit=depth_unit,
        )
        self.figure_images = min(int(figure_images), self.dev_size)

    def _open_splits(self, root: str | None, train_size: int | None, dev_size: int | None, **kw: Any) -> None:
        """Open the training and test splits under ``root`` (``kw``: the options of :class:`NYUv2Dataset`), here,
        so a missing or malformed file fails when the suite is built; then clip ``train_samples`` to the
        training images read."""
        if root is None:
            raise ConfigError(
                "downstream.root is not set: give the folder holding nyu_depth_v2_labeled.mat (with splits.mat "
                "and classMapping40.mat) or train|test/{rgb,depth,label}/*.png."
            )
        self.train_set = NYUv2Dataset(root, "train", limit=train_size, **kw)
        self.dev_set = NYUv2Dataset(root, "test", limit=dev_size, **kw)
        self.train_size, self.dev_size = len(self.train_set), len(self.dev_set)
        self.clip_train_samples(self.train_size)  # every configured N within the training images read

    render_once = False  # random crops: a fresh crop every epoch
    collate_fn = staticmethod(collate_full_resolution)  # test images of any size in one batch
    class_names = CLASS_NAMES  # (void pixels, self.ignore_index, are drawn black)

    def validate(self) -> None:
        """Before pre-training: every PNG opened, depth of the first images in metres (``NYUv2Dataset.validate``)."""
        self.train_set.validate()
        self.dev_set.validate()

    def datasets(self) -> tuple[NYUv2Dataset, NYUv2Dataset]:
        return self.train_set, self.dev_set

    def figure_batch(self) -> dict[str, torch.Tensor]:
        """The first ``figure_images`` test images at the model's input size, with their original aspect."""
        items = [self.dev_set[i] for i in range(self.figure_images)]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("rgb", "depth", "semseg")}
        batch["aspect"] = torch.tensor(
            [it["semseg_full"].shape[0] / it["semseg_full"].shape[1] for it in items]
        )
        return batch

    def make_module(self, backbone: MultiMAE, name: str, opts: dict) -> NYUv2Finetune:
        return NYUv2Finetune(
            backbone,
            name,
            ignore_index=self.ignore_index,
            num_classes=NUM_CLASSES,
            **self.finetune_kwargs(opts),
        )

    def run(
        self, pretrained: L.LightningModule, make_trainer: Callable[..., L.Trainer], out_dir: Path
    ) -> dict[str, dict]:
        results = super().run(pretrained, make_trainer, out_dir)
        self.extra_results["nyuv2"] = {"train_images": self.train_size, "test_images": self.dev_size}
        return results
