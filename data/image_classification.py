"""The labelled view of an ImageNet-style folder, for the classification column of Table 2.

``<root>/<train_dir>/<class>/<image>`` fine-tunes, ``<root>/<val_dir>/<class>/<image>`` is scored (ImageNet-1K
and ImageNet-S50 with their validation images sorted into class folders, as ImageNet's ``valprep.sh`` does).
The classes are the training split's sub-folders in sorted order (torchvision's ``ImageFolder``); the
validation split uses the same class indices and may lack some classes, never add one.

Samples have the format of data/scenes.py: ``rgb`` (3, H, W) normalised as ``(x - RGB_MEAN) / RGB_STD``
(the normalisation of pre-training) and ``label`` (the class index). Training images get a random-resized
crop and a horizontal flip; validation images are resized so the centre crop keeps ``eval_crop`` of the
shorter side (ImageNet's 224 / 256 = 0.875), then centre-cropped to ``image_size``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from data.image_folder import IMAGE_EXTENSIONS
from data.scenes import RGB_MEAN, RGB_STD
from utils.errors import ConfigError, DataError


def is_image_file(path: str) -> bool:
    """An image of the folder: a visible ``.JPEG`` / ``.jpg`` / ``.png`` file (as in pre-training)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` as RGB; an unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}).") from None


def class_transform(
    image_size: int, train: bool, crop_scale: Sequence[float], eval_crop: float
) -> v2.Compose:
    size = int(image_size)
    if train:
        ops = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops = [v2.Resize(int(round(size / float(eval_crop))), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *ops,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([RGB_MEAN] * 3, [RGB_STD] * 3),
        ]
    )


class ClassFolder(ImageFolder):
    """torchvision's ``ImageFolder`` yielding ``{"rgb", "label"}``; ``classes`` fixes the class indices (the
    training split's, for the validation split), hidden folders are not classes."""

    def __init__(self, root: Path, transform, classes: Sequence[str] | None = None) -> None:
        self._given_classes = None if classes is None else list(classes)
        super().__init__(
            str(root), transform=transform, loader=load_rgb, is_valid_file=is_image_file, allow_empty=True
        )

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = self._given_classes
        if classes is None:
            classes = sorted(
                e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
            )
        return classes, {c: i for i, c in enumerate(classes)}

    def validate(self) -> None:
        """Open every image's header (no decoding): an unreadable or non-image file is a DataError naming it."""
        for path, _ in self.samples:
            try:
                with Image.open(path) as img:
                    img.size  # noqa: B018 - the header is parsed on open; size proves it has one
            except (OSError, ValueError) as exc:
                raise DataError(f"{path} is not a readable image ({exc}).") from None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, label = super().__getitem__(index)
        return {"rgb": rgb, "label": torch.tensor(label, dtype=torch.long)}


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _limit(dataset: ClassFolder, limit: int | None, seed: int) -> ClassFolder:
    """Keep at most ``limit`` images: a fixed draw per seed (not the first classes of the sorted list)."""
    if limit is not None and int(limit) < len(dataset.samples):
        keep = sorted(
            np.random.default_rng(int(seed)).permutation(len(dataset.samples))[: int(limit)].tolist()
        )
        dataset.samples = [dataset.samples[i] for i in keep]
        dataset.imgs, dataset.targets = dataset.samples, [s[1] for s in dataset.samples]
    return dataset


def class_folder_splits(
    root: str | Path | None,
    train_dir: str = "train",
    val_dir: str = "val",
    image_size: int = 224,
    crop_scale: Sequence[float] = (0.08, 1.0),
    eval_crop: float = 0.875,
    train_size: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
    key: str = "downstream",
) -> tuple[ClassFolder, ClassFolder]:
    """(training split, validation split) of an ImageNet-style folder, sharing the training split's classes;
    errors name the folder and the config key (``key``.root, ...)."""
    if root is None:
        raise ConfigError(
            f"{key}.root is not set: give the ImageNet-style folder <root>/{train_dir}/<class>/<image> "
            f"(the pre-training folder, data.root, by default)."
        )
    if len(crop_scale) != 2 or not 0 < float(crop_scale[0]) <= float(crop_scale[1]) <= 1:
        raise ConfigError(f"{key}.crop_scale={list(crop_scale)} must be [lo, hi] with 0 < lo <= hi <= 1.")
    if not 0 < float(eval_crop) <= 1:
        raise ConfigError(
            f"{key}.eval_crop={eval_crop} must be in (0, 1] (the share of the resized image kept)."
        )
    root = Path(root).expanduser()
    train_root, val_root = root / train_dir, root / val_dir
    for split_root, name in ((train_root, "train_dir"), (val_root, "val_dir")):
        if not split_root.is_dir():
            raise DataError(
                f"no folder {split_root} ({key}.root / {key}.{name}): classification needs "
                f"{train_root}/<class>/<image> to fine-tune and {val_root}/<class>/<image> to score."
            )
    classes = _subfolders(train_root)
    if not classes:
        raise DataError(f"{train_root} has no class folders: expected {train_root}/<class>/<image>.")
    loose = sorted(p.name for p in val_root.iterdir() if p.is_file() and is_image_file(p.name))
    if loose:
        raise DataError(
            f"{val_root} holds images outside class folders (e.g. {loose[0]}): sort the validation images into "
            f"{val_root}/<class>/ (ImageNet: valprep.sh)."
        )
    unknown = [c for c in _subfolders(val_root) if c not in classes]
    if unknown:
        raise DataError(
            f"{val_root / unknown[0]} is a class folder that the training split {train_root} lacks."
        )
    train = ClassFolder(train_root, class_transform(image_size, True, crop_scale, eval_crop))
    val = ClassFolder(val_root, class_transform(image_size, False, crop_scale, eval_crop), classes=classes)
    have = {label for _, label in train.samples}
    empty = [c for i, c in enumerate(classes) if i not in have]
    if empty:
        raise DataError(f"{train_root / empty[0]} holds no images (*.JPEG, *.jpg, *.png).")
    if not val.samples:
        raise DataError(f"no images (*.JPEG, *.jpg, *.png) under {val_root}/<class>/.")
    return _limit(train, train_size, seed), _limit(val, val_size, seed + 1)
