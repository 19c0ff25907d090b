"""Classification on an ImageNet-style folder (``downstream=image_folder_cls``): Table 2's first column.

The paper fine-tunes the pre-trained MM-MAE on the labels of its pre-training folder (ImageNet-1K or
ImageNet-S50) and reports top-1 on the validation split. :class:`ImageFolderClsSuite` is a
:class:`~finetune.vision.VisionSuite` with one task, ``classification``, whose data are
``<root>/<train_dir>/<class>/<image>`` (training) and ``<root>/<val_dir>/<class>/<image>`` (scored, every
image) read by data/image_classification.py; the head is :class:`~finetune.vision.ClassificationHead` on the
encoder's mean-pooled patch tokens (RGB, every patch visible), the metric top-1 accuracy
(``torchmetrics.MulticlassAccuracy``), and the adaptation protocol that of every suite (``finetune.protocol``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.image_classification import ClassFolder, class_folder_splits
from finetune.vision import VisionFinetune, VisionSuite
from models.multimae import MultiMAE
from utils.errors import ConfigError

#: the one task of this suite
CLS_TASKS = ("classification",)


class ImageFolderClsSuite(VisionSuite):
    """Fine-tune on the training split's class folders, score top-1 on every validation image.

    Args:
        root: the ImageNet-style folder (by default the pre-training folder, ``data.root``).
        train_dir / val_dir: its training and validation sub-folders, each ``<class>/<image>``.
        tasks: ``{"classification": {...}}`` with the per-task options of :class:`VisionSuite`.
        protocol / train_samples / finetune_seeds: the adaptation protocol (``finetune.protocol``); a linear
            probe caches one random crop of each training image.
        image_size: the model's input size (must equal the pre-trained model's).
        crop_scale: area range of the training random-resized crop.
        eval_crop: validation images are resized so that a centre crop of ``image_size`` keeps this share of
            the shorter side (0.875: ImageNet's 224 of 256).
        train_size / dev_size: at most this many training / validation images (a fixed draw; null: all).
        batch_size / num_workers / seed / max_steps: as in :class:`VisionSuite`.
    """

    def __init__(
        self,
        root: str | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        protocol: str = "finetune",
        train_samples: Any = None,
        finetune_seeds: Any = (0,),
        image_size: int = 224,
        crop_scale: Sequence[float] = (0.08, 1.0),
        eval_crop: float = 0.875,
        train_size: int | None = None,
        dev_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 0,
        max_steps: int | None = None,
    ) -> None:
        tasks = {k: dict(v or {}) for k, v in dict(tasks or {t: {} for t in CLS_TASKS}).items()}
        for name, opts in tasks.items():
            if name not in CLS_TASKS and opts.get("enabled", True):
                raise ConfigError(
                    f"downstream.tasks.{name} is not a task of the image-folder suite; it has classification only."
                )
        super().__init__(
            tasks=tasks,
            protocol=protocol,
            train_samples=train_samples,
            finetune_seeds=finetune_seeds,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            figure_images=0,
            seed=seed,
            train_size=None,  # known once the images are read, below
            max_steps=max_steps,
        )
        # read here, so a missing or malformed folder fails when the suite is built (before pre-training)
        self.train_set, self.dev_set = class_folder_splits(
            root,
            train_dir,
            val_dir,
            image_size=self.image_size,
            crop_scale=crop_scale,
            eval_crop=eval_crop,
            train_size=train_size,
            val_size=dev_size,
            seed=seed,
        )
        self.classes = list(self.train_set.classes)
        self.train_size, self.dev_size = len(self.train_set), len(self.dev_set)
        self.clip_train_samples(self.train_size)  # every configured N within the training images read
        self.extra_results["image_folder_cls"] = {
            "root": str(Path(root).expanduser()),
            "classes": len(self.classes),
            "train_images": self.train_size,
            "val_images": self.dev_size,
        }

    render_once = False  # random crops: a fresh crop every epoch

    def validate(self) -> None:
        """Before pre-training: every image of both splits opened (its header read, not decoded)."""
        self.train_set.validate()
        self.dev_set.validate()

    def datasets(self) -> tuple[ClassFolder, ClassFolder]:
        return self.train_set, self.dev_set

    def make_module(self, backbone: MultiMAE, name: str, opts: dict) -> VisionFinetune:
        return VisionFinetune(
            backbone,
            name,
            num_classes=backbone.num_classes,
            num_labels=len(self.classes),
            **self.finetune_kwargs(opts),
        )
