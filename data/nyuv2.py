"""NYU Depth v2, labelled set (1449 images: 795 train / 654 test, 40 classes), for segmentation and depth.

Two on-disk formats, chosen by ``format`` (``auto`` picks whichever is present under ``root``):

* ``mat``: the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read with h5py): datasets
  ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float metres, ``labels`` (N, W, H) uint16 with 894
  classes (0 = unlabelled) -- MATLAB's column-major order shows the axes transposed. Beside it the split
  file ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based) and a 894 -> 40 class mapping
  (``classMapping40.mat`` with ``mapClass``, or a ``.npy`` of 895 ints whose entry 0 is 0).
* ``png``: ``<root>/{train,test}/{rgb,depth,label}/<id>.png`` with depth uint16 in ``depth_unit``
  (``mm`` by default, ``1e-4m`` for raw Kinect-style exports, ``m``; 0 = no measurement) and labels uint8
  (0 = void, classes 1..40).

:meth:`NYUv2Dataset.validate` (called before pre-training) opens every PNG and checks that the median valid
depth of the first images lies in 0.3-15 m (indoor scenes): depth read in the wrong unit stops the run with
one sentence naming ``downstream.depth_unit`` instead of scoring delta_1 = 0.

Samples have the format of data/scenes.py: ``rgb`` (3, H, W) normalised with its RGB_MEAN / RGB_STD,
``depth`` (1, H, W) metres, ``semseg`` (H, W) int64 with classes 0..39 and void -> ``ignore_index``.
Test samples also carry ``depth_full`` / ``semseg_full`` at the original resolution, on which metrics
are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.scenes import RGB_MEAN, RGB_STD
from utils.errors import ConfigError, DataError

#: the 40 classes of Gupta et al. (2013), ids 0..39 here (1..40 in the files)
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
#: semseg value of void (unlabelled) pixels; losses and metrics ignore it
IGNORE_INDEX = 255
SPLITS = ("train", "test")
FORMATS = ("auto", "mat", "png")
#: metres per unit of a depth PNG's uint16 values (``downstream.depth_unit``)
DEPTH_UNITS = {"mm": 1e-3, "1e-4m": 1e-4, "m": 1.0}
#: median depth (metres) an NYUv2 image must have: indoor scenes, as the Kinect measures them
DEPTH_RANGE = (0.3, 15.0)


def _loadmat(path: Path) -> dict:
    """Variables of a MATLAB file, v5 (scipy) or v7.3 (h5py); arrays as numpy."""
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    import scipy.io

    try:
        import h5py
    except ImportError:
        raise ConfigError(
            f'{path}: reading NYUv2\'s .mat file needs h5py: pip install -e ".[vision]" (in the dev extras).'
        ) from None
    try:
        if h5py.is_hdf5(path):  # v7.3
            with h5py.File(path, "r") as f:
                return {k: np.asarray(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed file
        raise DataError(f"{path} is not a readable MATLAB file ({type(exc).__name__}: {exc}).") from None


def load_class_mapping(path: Path) -> np.ndarray:
    """(895,) int64 table: 894-class id (0 = unlabelled) -> 40-class id (1..40, 0 = void)."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"{path} does not exist.")
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable .npy array ({exc}).") from None
    else:
        variables = _loadmat(path)
        if "mapClass" not in variables:
            raise DataError(f"{path} has no variable 'mapClass' (the 894 -> 40 class mapping).")
        table = variables["mapClass"]
    table = np.asarray(table).astype(np.int64).ravel()
    if table.size == 894:
        table = np.concatenate([[0], table])
    if table.size != 895 or table[0] != 0 or table.min() < 0 or table.max() > NUM_CLASSES:
        raise DataError(
            f"{path} is not a 894 -> 40 class mapping (expected 894 values in 1..40, or 895 with entry 0 = 0; "
            f"got {table.size} values in {table.min()}..{table.max()})."
        )
    return table


def load_splits(path: Path, n_images: int) -> dict[str, np.ndarray]:
    """0-based image indices of each split from ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based)."""
    variables = _loadmat(Path(path))
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in variables:
            raise DataError(f"{path} has no variable {key!r}.")
        idx = np.asarray(variables[key]).astype(np.int64).ravel() - 1
        if idx.size and (idx.min() < 0 or idx.max() >= n_images):
            raise DataError(
                f"{path}: {key} holds indices outside 1..{n_images} (the images in the .mat file)."
            )
        out[split] = idx
    return out


class _MatSource:
    """Read-only, per-index access to ``nyu_depth_v2_labeled.mat``; h5py opens lazily in each process."""

    def __init__(self, mat_path: Path, mapping: np.ndarray) -> None:
        import h5py

        self.path, self.mapping = Path(mat_path), mapping
        if not self.path.is_file():
            raise DataError(f"{self.path} does not exist.")
        try:
            with h5py.File(self.path, "r") as f:
                shapes = {k: f[k].shape for k in ("images", "depths", "labels") if k in f}
        except OSError as exc:
            raise DataError(f"{self.path} is not a MATLAB v7.3 (HDF5) file ({exc}).") from None
        for key, ndim in (("images", 4), ("depths", 3), ("labels", 3)):
            if key not in shapes or len(shapes[key]) != ndim:
                raise DataError(
                    f"{self.path} lacks a {ndim}-D dataset {key!r} (has {sorted(shapes)}); "
                    "is it nyu_depth_v2_labeled.mat?"
                )
        n = shapes["images"][0]
        if shapes["images"][1] != 3 or shapes["depths"][0] != n or shapes["labels"][0] != n:
            raise DataError(f"{self.path}: images {shapes['images']}, depths and labels do not line up.")
        self.n = n
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # a DataLoader worker opens its own handle

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        f = self._file
        rgb = np.asarray(f["images"][index]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
        depth = np.asarray(f["depths"][index], dtype=np.float32).T  # (W, H) -> (H, W), metres
        labels = np.asarray(f["labels"][index]).T.astype(np.int64)
        if labels.max() >= len(self.mapping):
            raise DataError(f"{self.path}: image {index + 1} has label {labels.max()} > 894.")
        return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), self.mapping[labels]


class _PngSource:
    """``<root>/<split>/{rgb,depth,label}/<id>.png``; depth uint16 in units of ``depth_scale`` metres (mm:
    1e-3), labels uint8 (0 void, 1..40)."""

    def __init__(self, root: Path, split: str, depth_scale: float = DEPTH_UNITS["mm"]) -> None:
        self.dir = Path(root) / split
        self.depth_scale = float(depth_scale)
        rgb_dir = self.dir / "rgb"
        if not rgb_dir.is_dir():
            raise DataError(f"NYUv2 png format: no folder {rgb_dir}.")
        self.ids = sorted(p.stem for p in rgb_dir.glob("*.png"))
        if not self.ids:
            raise DataError(f"NYUv2 png format: no *.png images in {rgb_dir}.")
        for kind in ("depth", "label"):
            for i in self.ids:
                if not (self.dir / kind / f"{i}.png").is_file():
                    raise DataError(
                        f"NYUv2 png format: image {rgb_dir / i}.png has no {self.dir / kind / i}.png."
                    )
        self.n = len(self.ids)

    def _open(self, kind: str, i: str) -> np.ndarray:
        path = self.dir / kind / f"{i}.png"
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB") if kind == "rgb" else img)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable PNG ({exc}).") from None

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = self.ids[index]
        rgb, depth, label = self._open("rgb", i), self._open("depth", i), self._open("label", i)
        if label.ndim != 2 or depth.ndim != 2:
            raise DataError(f"{self.dir}/label|depth/{i}.png must be single-channel PNGs.")
        if label.max() > NUM_CLASSES:
            raise DataError(f"{self.dir / 'label' / i}.png holds label {label.max()} > {NUM_CLASSES}.")
        return rgb, depth.astype(np.float32) * np.float32(self.depth_scale), label.astype(np.int64)

    def check_files(self, ids: Sequence[str]) -> None:
        """Open every PNG of ``ids`` (headers only): rgb, depth and label of an image must be PNGs of one size,
        depth and label single-channel; one sentence naming the first file that is not."""
        for i in ids:
            sizes = {}
            for kind in ("rgb", "depth", "label"):
                path = self.dir / kind / f"{i}.png"
                try:
                    with Image.open(path) as img:
                        sizes[kind], mode, fmt = img.size, img.mode, img.format
                except (OSError, ValueError) as exc:
                    raise DataError(f"{path} is not a readable PNG ({exc}).") from None
                if fmt != "PNG":
                    raise DataError(f"{path} is not a PNG (it is {fmt}).")
                if kind != "rgb" and mode not in ("L", "I", "I;16", "I;16B", "P"):
                    raise DataError(f"{path} must be a single-channel PNG, got mode {mode}.")
            if len(set(sizes.values())) != 1:
                raise DataError(
                    f"{self.dir}/{{rgb,depth,label}}/{i}.png differ in size ({sizes}): they must be aligned."
                )


def _metres(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def detect_format(root: Path, mat_file: str, fmt: str = "auto") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"downstream.format={fmt!r} must be one of {', '.join(FORMATS)}.")
    if fmt != "auto":
        return fmt
    if (root / "train" / "rgb").is_dir():
        return "png"
    if (root / mat_file).is_file():
        return "mat"
    raise DataError(
        f"no NYUv2 data under {root}: expected {root / mat_file} (with its split and class-mapping files) "
        f"or PNG folders {root}/train/rgb, {root}/test/rgb."
    )


class NYUv2Dataset(Dataset):
    """One split of NYUv2 (labelled) as aligned rgb / depth / semseg samples (see the module docstring).

    Training samples get one random-resized crop and flip applied to every modality (nearest for depth and
    labels, so no invalid depth is blended in); test samples are resized to ``image_size`` for the model
    and also keep full-resolution targets ``depth_full`` / ``semseg_full``, which may differ in size from image
    to image (finetune/nyuv2.py batches them as lists and scores each at its own resolution).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        format: str = "auto",  # noqa: A002 - the config key
        mat_file: str = "nyu_depth_v2_labeled.mat",
        splits_file: str = "splits.mat",
        mapping_file: str = "classMapping40.mat",
        image_size: int = 224,
        train: bool | None = None,
        crop_scale: Sequence[float] = (0.5, 1.0),
        ignore_index: int = IGNORE_INDEX,
        limit: int | None = None,
        depth_unit: str = "mm",
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"NYUv2 split {split!r} must be train or test.")
        if depth_unit not in DEPTH_UNITS:
            raise ConfigError(
                f"downstream.depth_unit={depth_unit!r} must be one of {', '.join(DEPTH_UNITS)} (the unit of the "
                "depth PNGs' values)."
            )
        self.split, self.depth_unit = split, str(depth_unit)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"downstream.root: no NYUv2 folder at {self.root}.")
        self.format = detect_format(self.root, mat_file, format)
        self.ignore_index = int(ignore_index)
        if self.format == "mat":
            mapping = load_class_mapping(self._path(mapping_file))
            self.source: _MatSource | _PngSource = _MatSource(self._path(mat_file), mapping)
            self.indices = load_splits(self._path(splits_file), self.source.n)[split]
        else:
            self.source = _PngSource(self.root, split, DEPTH_UNITS[self.depth_unit])
            self.indices = np.arange(self.source.n)
        if limit is not None:
            self.indices = self.indices[: int(limit)]
        self.train = split == "train" if train is None else bool(train)
        size = (int(image_size), int(image_size))
        if self.train:
            self.transform = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True),
                    v2.RandomHorizontalFlip(),
                ]
            )
        else:
            self.transform = v2.Resize(size, antialias=True)

    def validate(self, depth_images: int = 4) -> None:
        """Start-up check, before any pre-training: every PNG of the split is opened (png format; the .mat
        file's datasets were checked when it was opened), and the median valid depth of the first
        ``depth_images`` images must lie in 0.3-15 m, else one sentence naming the key to set."""
        if isinstance(self.source, _PngSource):
            self.source.check_files([self.source.ids[int(i)] for i in self.indices])
        first = [self.source.read(int(i))[1] for i in self.indices[:depth_images]]
        valid = np.concatenate([d[d > 0].ravel() for d in first]) if first else np.zeros(0)
        if valid.size == 0:
            raise DataError(
                f"NYUv2 {self.split} images under {self.root}: the first {len(first)} have no depth."
            )
        median = float(np.median(valid))
        low, high = DEPTH_RANGE
        if low <= median <= high:
            return
        where = f"the median depth of the first {len(first)} {self.split} images under {self.root} is {_metres(median)} m"
        if isinstance(self.source, _MatSource):
            raise DataError(
                f"downstream.mat_file: {where}, outside the {low:g}-{high:g} m of indoor scenes; NYUv2's labelled "
                f"set {self.source.path} holds depth in metres: is it that file?"
            )
        raw = median / DEPTH_UNITS[self.depth_unit]
        fits = [u for u, scale in DEPTH_UNITS.items() if low <= raw * scale <= high]
        hint = (
            f"set downstream.depth_unit={fits[0]} (median {_metres(raw * DEPTH_UNITS[fits[0]])} m)"
            if fits
            else f"is it depth? (downstream.depth_unit: {', '.join(DEPTH_UNITS)})"
        )
        raise DataError(
            f"downstream.depth_unit={self.depth_unit}: {where}, outside the {low:g}-{high:g} m of indoor scenes; "
            f"{hint}."
        )

    def _path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.root / path

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, depth, label40 = self.source.read(int(self.indices[index]))
        semseg = torch.from_numpy(np.where(label40 > 0, label40 - 1, self.ignore_index))
        sample = {
            "rgb": tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1)),
            "depth": tv_tensors.Mask(torch.from_numpy(depth)[None]),
            "semseg": tv_tensors.Mask(semseg),
        }
        out = self.transform(sample)
        result = {
            "rgb": (out["rgb"].as_subclass(torch.Tensor).float() / 255.0 - RGB_MEAN) / RGB_STD,
            "depth": out["depth"].as_subclass(torch.Tensor).float(),
            "semseg": out["semseg"].as_subclass(torch.Tensor).long(),
        }
        if not self.train:
            result["depth_full"] = torch.from_numpy(depth)[None]
            result["semseg_full"] = semseg.long()
        return result
