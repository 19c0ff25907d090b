"""Pseudo-label an image folder once: a depth map and a semantic map per image (``stage=pseudo_label``).

``python run.py stage=pseudo_label pseudo_label=dpt_mask2former pseudo_label.image_root=<folder>
pseudo_label.out_root=<labels>`` runs a ``transformers`` depth estimator (``AutoModelForDepthEstimation``,
default DPT-Hybrid / MiDaS) and a semantic segmenter (``AutoModelForUniversalSegmentation`` such as
Mask2Former, or ``AutoModelForSemanticSegmentation`` such as SegFormer) over every image of an
ImageNet-style folder and writes, at each image's own resolution and mirroring the folder layout:

* ``<out_root>/depth/<relative path>.png``: 16-bit PNG, ``value = round(depth * depth_scale)``; with
  ``depth_scale: null`` each map is divided by its own maximum and stored as ``round(65535 * depth / max)``
  (relative models like MiDaS output unit-less inverse depth, larger = nearer).
* ``<out_root>/semseg/<relative path>.png``: class ids, 8-bit PNG (16-bit above 256 classes).
* ``<out_root>/pseudo_labels.json``: the models, the depth scale and the segmenter's classes.

Resumable: images whose two labels exist are skipped; each file is written under a temporary name then
renamed, so an interrupted run never leaves a half-written label. Within a batch, images of one size
go through the models together (a processor that pads a mixed-size batch would shift the labels).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.image_folder import META_FILE, find_images, label_path
from utils.atomic import atomic_write, remove_stale_temps
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


#: how to write the labels elsewhere, for the out-of-disk sentence
LABELS_RELOCATE = "write the labels to another disk with pseudo_label.out_root=<folder>"


def _atomic_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG at ``path`` via a temporary file in the same folder, then rename."""
    image = Image.fromarray(array)
    atomic_write(
        path, lambda tmp: image.save(tmp, format="PNG"), what="pseudo-label", relocate=LABELS_RELOCATE
    )


def encode_depth(depth: np.ndarray, depth_scale: float | None) -> np.ndarray:
    """Float depth map -> uint16 (see the module docstring for the scale); negatives clip to 0."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0).clip(min=0.0)
    if depth_scale is None:
        top = depth.max()
        scaled = depth * (65535.0 / top) if top > 0 else depth
    else:
        scaled = depth * float(depth_scale)
    return np.round(scaled).clip(0, 65535).astype(np.uint16)


def encode_semseg(semseg: np.ndarray, num_classes: int) -> np.ndarray:
    return np.asarray(semseg).astype(np.uint8 if num_classes <= 256 else np.uint16)


class PseudoLabeler:
    """Write aligned depth and semantic pseudo-labels for every image under ``image_root``.

    Args:
        image_root: the image folder (``<root>/[train|val/]<class>/<image>``).
        out_root: where the labels go (mirrors image_root; keep it outside image_root).
        depth_model / segmentation_model: ``transformers`` model ids or local directories.
        depth_scale: stored depth = round(depth * depth_scale); None: per-image ``65535 * depth / max``.
        segmentation_short_side: the segmenter sees each image resized (aspect kept) to this short side,
            both sides rounded to multiples of 32, so its processor never pads (padding would shift the
            labels); None: the processor's own resizing.
        batch_size: images per forward pass of each model.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        local_files_only: never reach the Hugging Face Hub (models must be cached or local paths).
        progress: show a progress bar.
    """

    def __init__(
        self,
        image_root: str | None = None,
        out_root: str | None = None,
        depth_model: str = "Intel/dpt-hybrid-midas",
        segmentation_model: str = "facebook/mask2former-swin-small-ade-semantic",
        depth_scale: float | None = None,
        segmentation_short_side: int | None = 512,
        batch_size: int = 8,
        device: str = "cpu",
        local_files_only: bool = False,
        progress: bool = True,
    ) -> None:
        if image_root is None:
            raise ConfigError("pseudo_label.image_root is not set: give the image folder to label.")
        if out_root is None:
            raise ConfigError("pseudo_label.out_root is not set: give the folder the labels go to.")
        if depth_scale is not None and not float(depth_scale) > 0:
            raise ConfigError(f"pseudo_label.depth_scale={depth_scale} must be positive (or null).")
        if int(batch_size) < 1:
            raise ConfigError(f"pseudo_label.batch_size={batch_size} must be >= 1.")
        self.image_root, self.out_root = Path(image_root).expanduser(), Path(out_root).expanduser()
        if self.out_root.resolve().is_relative_to(self.image_root.resolve()):
            raise ConfigError(
                f"pseudo_label.out_root={self.out_root} must be outside pseudo_label.image_root "
                "(its PNGs would count as images)."
            )
        self.depth_model_name, self.seg_model_name = str(depth_model), str(segmentation_model)
        self.depth_scale = None if depth_scale is None else float(depth_scale)
        self.seg_short = None if segmentation_short_side is None else int(segmentation_short_side)
        self.batch_size, self.device = int(batch_size), str(device)
        self.local_files_only, self.progress = bool(local_files_only), bool(progress)
        self.images_labelled = 0  # images written by the last run() (the rest were skipped)

    # ------------------------------------------------------------------------------------ models
    def _load(self):
        from transformers import (
            AutoImageProcessor,
            AutoModelForDepthEstimation,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
        )

        kw = {"local_files_only": self.local_files_only}

        def load(name: str, key: str, classes: Sequence) -> tuple:
            errors = []
            for cls in classes:
                try:
                    model = cls.from_pretrained(name, **kw)
                    return model.to(self.device).eval(), AutoImageProcessor.from_pretrained(name, **kw)
                except (OSError, ValueError, KeyError) as exc:
                    errors.append(exc)
            raise DataError(
                f"pseudo_label.{key}={name!r} could not be loaded with {classes[0].__name__} "
                f"(offline, not cached, or another kind of model: {str(errors[0]).splitlines()[0]})."
            )

        depth = load(self.depth_model_name, "depth_model", [AutoModelForDepthEstimation])
        seg = load(
            self.seg_model_name,
            "segmentation_model",
            [AutoModelForUniversalSegmentation, AutoModelForSemanticSegmentation],
        )
        return depth, seg

    def _seg_size(self, size: tuple[int, int]) -> dict:
        """Processor override: (height, width) with the short side ~ segmentation_short_side, multiples of 32."""
        if self.seg_short is None:
            return {}
        scale = self.seg_short / min(size)
        h, w = (max(32, int(round(x * scale / 32)) * 32) for x in size)
        return {"size": {"height": h, "width": w}}

    # ------------------------------------------------------------------------------------ run
    def pending(self) -> list[Path]:
        """Images (relative to image_root) whose depth or semantic label is missing."""
        if not self.image_root.is_dir():
            raise DataError(f"pseudo_label.image_root: no image folder at {self.image_root}.")
        images = find_images(self.image_root)
        if not images:
            raise DataError(
                f"pseudo_label.image_root: no images (*.JPEG, *.jpg, *.png) under {self.image_root}."
            )
        return [
            rel
            for rel in images
            if not all(label_path(self.out_root, kind, rel).is_file() for kind in ("depth", "semseg"))
        ]

    def _write_meta(self, id2label: dict) -> None:
        meta = {
            "depth_model": self.depth_model_name,
            "segmentation_model": self.seg_model_name,
            "depth_scale": self.depth_scale,
            "depth_encoding": "round(depth * depth_scale)"
            if self.depth_scale
            else "round(65535 * depth / max(depth)) per image",
            "num_classes": len(id2label),
            "class_names": [id2label[i] for i in sorted(id2label)],
        }
        path = self.out_root / META_FILE
        if path.is_file():
            old = json.loads(path.read_text())
            for key in ("depth_model", "segmentation_model", "depth_scale"):
                if old.get(key) != meta[key]:
                    raise DataError(
                        f"{path} says its labels come from {key}={old.get(key)!r}, not {meta[key]!r}: "
                        "choose another pseudo_label.out_root or delete that folder."
                    )
            return
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write(
            path, lambda tmp: tmp.write_text(text), what="pseudo-label metadata", relocate=LABELS_RELOCATE
        )

    def run(self) -> int:
        """Label every pending image; returns how many were labelled."""
        import torch

        todo = self.pending()
        self.images_labelled = 0
        remove_stale_temps(self.out_root, recursive=True)  # half-written labels of killed runs
        log.info(
            "pseudo-labels: %d images to label under %s -> %s", len(todo), self.image_root, self.out_root
        )
        if not todo:
            return 0
        (depth_model, depth_proc), (seg_model, seg_proc) = self._load()
        id2label = {int(k): v for k, v in seg_model.config.id2label.items()}
        num_classes = len(id2label)
        self._write_meta(id2label)
        from rich.progress import Progress

        with Progress(disable=not self.progress) as bar:
            task = bar.add_task("pseudo-labels", total=len(todo))
            for start in range(0, len(todo), self.batch_size):
                rels = todo[start : start + self.batch_size]
                images = []
                for rel in rels:
                    try:
                        with Image.open(self.image_root / rel) as img:
                            images.append(img.convert("RGB"))
                    except (OSError, ValueError) as exc:
                        raise DataError(f"{self.image_root / rel} is not a readable image ({exc}).") from None
                sizes = [(img.height, img.width) for img in images]
                # one forward pass per distinct size: a processor that pads a mixed batch would misalign labels
                groups: dict[tuple[int, int], list[int]] = {}
                for i, size in enumerate(sizes):
                    groups.setdefault(size, []).append(i)
                for size, idx in groups.items():
                    group = [images[i] for i in idx]
                    with torch.inference_mode():
                        inputs = depth_proc(images=group, return_tensors="pt").to(self.device)
                        depth_out = depth_proc.post_process_depth_estimation(
                            depth_model(**inputs), target_sizes=[size] * len(idx)
                        )
                        inputs = seg_proc(images=group, return_tensors="pt", **self._seg_size(size))
                        inputs = inputs.to(self.device)
                        seg_out = seg_proc.post_process_semantic_segmentation(
                            seg_model(**inputs), target_sizes=[size] * len(idx)
                        )
                    for i, d, sem in zip(idx, depth_out, seg_out, strict=True):
                        depth = d["predicted_depth"].float().cpu().numpy().reshape(size)
                        semseg = sem.cpu().numpy().reshape(size)
                        rel = rels[i]
                        _atomic_png(
                            encode_depth(depth, self.depth_scale), label_path(self.out_root, "depth", rel)
                        )
                        _atomic_png(
                            encode_semseg(semseg, num_classes), label_path(self.out_root, "semseg", rel)
                        )
                        self.images_labelled += 1
                bar.advance(task, len(rels))
        log.info("pseudo-labels: wrote %d label pairs under %s", self.images_labelled, self.out_root)
        return self.images_labelled
