"""An ImageNet-style image folder with pseudo-label depth and semantic maps, for MM-MAE pre-training.

Layout (ImageNet-1K, ImageNet-S50): ``<root>/<class>/<image>.JPEG|jpg|png`` or, with a split level,
``<root>/train/<class>/...`` and ``<root>/val/<class>/...``. The labels written by
``python run.py stage=pseudo_label`` (data/pseudo_labels.py) mirror that layout under ``labels_root``:
``<labels_root>/depth/<relative path>.png`` (16-bit, see :data:`META_FILE` for the scale) and
``<labels_root>/semseg/<relative path>.png`` (class ids), one pair per image at the image's resolution.

Batches have the format of :class:`data.scenes.ScenesDataModule`: ``rgb`` (B, 3, H, W) normalised as
``(x - RGB_MEAN) / RGB_STD``, ``depth`` (B, 1, H, W) float, ``semseg`` (B, H, W) int64 and ``label`` (B,)
the class folder's index. One random-resized crop (training) or resize + centre crop (validation) is
applied to every modality at once (nearest-neighbour for the semantic map).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.loading import epoch_subset_loader, eval_loader
from data.scenes import RGB_MEAN, RGB_STD
from utils.errors import ConfigError, DataError

#: image file suffixes (lower case) that count as images
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: modalities this source provides (depth and semseg come from the pseudo-labels)
MODALITIES = ("rgb", "depth", "semseg")
#: pseudo-label sub-folders of labels_root, one per label modality
LABEL_DIRS = ("depth", "semseg")
#: metadata the pseudo-labeler writes at the top of labels_root (models, depth scale, classes)
META_FILE = "pseudo_labels.json"


def find_images(root: Path) -> list[Path]:
    """Every image under ``root`` (any depth), as sorted paths relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        found += [
            rel / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return sorted(found)


def label_path(labels_root: Path, kind: str, rel: Path) -> Path:
    """Where the ``kind`` (depth | semseg) pseudo-label of image ``rel`` (relative to the root) lives."""
    return Path(labels_root) / kind / rel.with_suffix(".png")


def read_meta(labels_root: Path) -> dict:
    path = Path(labels_root) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); delete it and re-run stage=pseudo_label."
        ) from None


class ImageFolderDataset(Dataset):
    """Images ``items`` (paths relative to ``root`` with their class index) with their pseudo-labels."""

    def __init__(
        self,
        root: Path,
        labels_root: Path,
        items: Sequence[tuple[Path, int]],
        image_size: int = 224,
        modalities: Sequence[str] = MODALITIES,
        num_classes: int = 150,
        train: bool = True,
        crop_scale: Sequence[float] = (0.2, 1.0),
        hflip: bool = True,
        depth_scale: float | None = None,
        depth_standardize: bool = True,
        depth_mean: float = 4.0,
        depth_std: float = 2.0,
    ) -> None:
        self.root, self.labels_root, self.items = Path(root), Path(labels_root), list(items)
        self.modalities, self.num_classes = tuple(modalities), int(num_classes)
        self.depth_scale = depth_scale
        self.depth_standardize, self.depth_mean, self.depth_std = (
            bool(depth_standardize),
            depth_mean,
            depth_std,
        )
        size = int(image_size)
        if train:
            ops = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
            ops += [v2.RandomHorizontalFlip()] if hflip else []
        else:
            ops = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.items)

    def _open(self, path: Path) -> Image.Image:
        try:
            img = Image.open(path)
            img.load()
            return img
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable image ({exc}).") from None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rel, label = self.items[index]
        path = self.root / rel
        rgb = np.asarray(self._open(path).convert("RGB"))
        sample: dict = {"rgb": tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1))}
        if "depth" in self.modalities:
            dpath = label_path(self.labels_root, "depth", rel)
            depth = np.asarray(self._open(dpath), dtype=np.float32)
            scale = float(self.depth_scale) if self.depth_scale else 65535.0
            sample["depth"] = tv_tensors.Image(torch.from_numpy(depth / scale)[None])
        if "semseg" in self.modalities:
            spath = label_path(self.labels_root, "semseg", rel)
            semseg = np.asarray(self._open(spath)).astype(np.int64)
            if semseg.ndim != 2:
                raise DataError(f"{spath} is not a single-channel class-id PNG (shape {semseg.shape}).")
            if semseg.size and semseg.max() >= self.num_classes:
                raise DataError(
                    f"{spath} holds class id {int(semseg.max())} >= data.num_classes={self.num_classes}."
                )
            sample["semseg"] = tv_tensors.Mask(torch.from_numpy(semseg))
        for key in ("depth", "semseg"):
            if key in sample and tuple(sample[key].shape[-2:]) != rgb.shape[:2]:
                where = label_path(self.labels_root, key, rel)
                raise DataError(
                    f"{where} is {tuple(sample[key].shape[-2:])} pixels but its image {path} is "
                    f"{rgb.shape[:2]}; re-run stage=pseudo_label."
                )
        sample = self.transform(sample)
        out = {"label": torch.tensor(label, dtype=torch.long)}
        if "rgb" in self.modalities:
            out["rgb"] = (sample["rgb"].as_subclass(torch.Tensor).float() / 255.0 - RGB_MEAN) / RGB_STD
        if "depth" in self.modalities:
            depth = sample["depth"].as_subclass(torch.Tensor)
            if self.depth_standardize:
                depth = self.depth_mean + self.depth_std * robust_standardize(depth)
            out["depth"] = depth
        if "semseg" in self.modalities:
            out["semseg"] = sample["semseg"].as_subclass(torch.Tensor).long()
        return out


def robust_standardize(x: torch.Tensor, trim: float = 0.1) -> torch.Tensor:
    """(x - m) / s with m, s the mean and std of the values between the ``trim`` and ``1 - trim`` quantiles
    (MultiMAE's per-image normalisation of pseudo depth, which has no absolute scale)."""
    flat = x.flatten()
    lo, hi = torch.quantile(flat, torch.tensor([trim, 1.0 - trim], dtype=flat.dtype))
    core = flat[(flat >= lo) & (flat <= hi)]
    mean, std = core.mean(), core.std() if core.numel() > 1 else torch.ones(())
    return (x - mean) / std.clamp(min=1e-6)


def _class_items(
    split_root: Path, images: list[Path], classes: list[str], where: str
) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for rel in images:
        if len(rel.parts) < 2:
            raise DataError(f"{split_root / rel} is not inside a class folder ({where}/<class>/<image>).")
        if rel.parts[0] not in index:
            raise DataError(f"{split_root / rel.parts[0]} is a class folder that the training split lacks.")
        items.append((rel, index[rel.parts[0]]))
    return items


def _check_options(modalities: tuple[str, ...], root, labels_root, image_size: int, crop_scale) -> None:
    """The options of :class:`ImageFolderDataModule` that need no file read, each failing with its config key."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigError(
            f"data.modalities names {unknown[0]!r}, which the image folder does not provide "
            f"(it provides {', '.join(MODALITIES)})."
        )
    if root is None:
        raise ConfigError(
            "data.root is not set: give data.root=<ImageNet-style folder <root>/<class>/<image>>."
        )
    if labels_root is None and any(m in modalities for m in LABEL_DIRS):
        raise ConfigError(
            "data.labels_root is not set: give the out_root of `python run.py stage=pseudo_label`."
        )
    if int(image_size) < 16:
        raise ConfigError(f"data.image_size={image_size} is too small; use at least 16 pixels.")
    if len(crop_scale) != 2 or not 0 < float(crop_scale[0]) <= float(crop_scale[1]) <= 1:
        raise ConfigError(f"data.crop_scale={list(crop_scale)} must be [lo, hi] with 0 < lo <= hi <= 1.")


class ImageFolderDataModule(L.LightningDataModule):
    """MM-MAE pre-training batches from an image folder and its pseudo-labels (``data=imagenet_folder``).

    Options mirror :class:`data.scenes.ScenesDataModule` (image_size, modalities, num_classes,
    batch_size, num_workers, seed, samples_per_epoch, val_size); ``train_size`` keeps the first training
    images only. With ``<root>/<train_dir>`` present the splits are its sub-folders ``train_dir`` and
    ``val_dir``; otherwise ``val_fraction`` of the images (a fixed draw per seed) are held out for validation.
    """

    def __init__(
        self,
        root: str | None = None,
        labels_root: str | None = None,
        image_size: int = 224,
        modalities: Sequence[str] = MODALITIES,
        num_classes: int = 150,
        train_dir: str = "train",
        val_dir: str = "val",
        val_fraction: float = 0.01,
        train_size: int | None = None,
        samples_per_epoch: int | None = None,
        val_size: int | None = None,
        crop_scale: Sequence[float] = (0.2, 1.0),
        hflip: bool = True,
        depth_standardize: bool = True,
        depth_mean: float = 4.0,
        depth_std: float = 2.0,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        _check_options(modalities, root, labels_root, image_size, crop_scale)
        self.root = Path(root).expanduser()
        self.labels_root = Path(labels_root).expanduser() if labels_root is not None else self.root
        if not self.root.is_dir():
            raise DataError(f"data.root: no image folder at {self.root}.")
        if labels_root is not None and self.labels_root.resolve().is_relative_to(self.root.resolve()):
            raise ConfigError(
                f"data.labels_root={self.labels_root} must be outside data.root (its PNGs would count as images)."
            )
        self.image_size, self.modalities, self.num_classes = int(image_size), modalities, int(num_classes)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        if train_size is not None and int(train_size) < 1:
            raise ConfigError(f"data.train_size={train_size} must be >= 1 (or null: every training image).")
        self.classes, train, val = self._split_items(train_dir, val_dir, val_fraction)
        if train_size is not None:
            train = train[: int(train_size)]
        if val_size is not None:
            val = val[: int(val_size)]
        self.meta = self._read_label_meta() if labels_root is not None else {}
        self._check_labels(train + val)
        kw = dict(
            image_size=self.image_size,
            modalities=modalities,
            num_classes=self.num_classes,
            crop_scale=crop_scale,
            hflip=hflip,
            depth_scale=self.meta.get("depth_scale"),
            depth_standardize=depth_standardize,
            depth_mean=depth_mean,
            depth_std=depth_std,
        )
        self.train_set = ImageFolderDataset(self.root, self.labels_root, train, train=True, **kw)
        self.val_set = ImageFolderDataset(self.root, self.labels_root, val, train=False, **kw)
        n = len(self.train_set)
        self.samples_per_epoch = n if samples_per_epoch is None else min(int(samples_per_epoch), n)

    def _split_items(self, train_dir: str, val_dir: str, val_fraction: float):
        """``(classes, train, val)``: the class folders and the ``(image, class)`` items of each split, from
        ``<root>/<train_dir>`` and ``<root>/<val_dir>`` where the first exists, else a fixed draw (per seed) of
        ``val_fraction`` of the images under ``root`` held out for validation."""
        train_root = self.root / train_dir
        if train_dir and train_root.is_dir():
            classes = sorted(
                p.name for p in train_root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            train = [(Path(train_dir) / r, c) for r, c in self._items(train_root, classes, train_dir)]
            val_root = self.root / val_dir
            val = []
            if val_dir and val_root.is_dir():
                val = [(Path(val_dir) / r, c) for r, c in self._items(val_root, classes, val_dir)]
        else:
            classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            items = self._items(self.root, classes, "<root>")
            order = np.random.default_rng(self.seed).permutation(len(items))
            n_val = int(round(float(val_fraction) * len(items))) if len(items) > 1 else 0
            val = [items[i] for i in sorted(order[:n_val])]
            train = [items[i] for i in sorted(order[n_val:])]
        if not train:
            raise DataError(f"data.root: no training images under {self.root}.")
        return classes, train, val

    def _read_label_meta(self) -> dict:
        """The pseudo-labels' ``meta.json``, checked against ``num_classes`` where semseg is a modality."""
        meta = read_meta(self.labels_root)
        label_classes = meta.get("num_classes")
        if (
            "semseg" in self.modalities
            and label_classes is not None
            and int(label_classes) > self.num_classes
        ):
            raise ConfigError(
                f"data.num_classes={self.num_classes} but the pseudo-labels in {self.labels_root} have "
                f"{label_classes} classes ({meta.get('segmentation_model', 'segmenter')})."
            )
        return meta

    def validate(self) -> None:
        """Start-up check of the inputs (``runner/pipeline.py``): the folder was scanned and every image
        matched with its pseudo-labels when the module was built; nothing more to read."""

    def _items(self, split_root: Path, classes: list[str], where: str) -> list[tuple[Path, int]]:
        images = find_images(split_root)
        if not images:
            raise DataError(
                f"no images (*.JPEG, *.jpg, *.png) under {split_root}: expected {where}/<class>/<image>."
            )
        return _class_items(split_root, images, classes, where)

    def _check_labels(self, items: list[tuple[Path, int]]) -> None:
        for kind in LABEL_DIRS:
            if kind not in self.modalities:
                continue
            base = self.labels_root / kind
            have = set(find_labels(base)) if base.is_dir() else set()
            for rel, _ in items:
                if rel.with_suffix(".png") not in have:
                    raise DataError(
                        f"image {self.root / rel} has no {kind} label at {label_path(self.labels_root, kind, rel)}: "
                        f"run `python run.py stage=pseudo_label pseudo_label.image_root={self.root} "
                        f"pseudo_label.out_root={self.labels_root}` first."
                    )

    def train_dataloader(self):
        # samples_per_epoch distinct items per epoch, a fresh draw every epoch; the loader's position rides in
        # the checkpoint (exact mid-epoch resume)
        return epoch_subset_loader(
            self.train_set, self.samples_per_epoch, self.batch_size, self.seed, self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self.batch_size, self.num_workers)


def find_labels(base: Path) -> list[Path]:
    """Every ``.png`` under ``base``, relative to it (the written pseudo-labels of one modality)."""
    found = []
    for dirpath, _, filenames in os.walk(base, followlinks=True):
        rel = Path(dirpath).relative_to(base)
        found += [rel / f for f in filenames if f.endswith(".png")]
    return found
