"""Procedurally rendered indoor-like scenes: RGB, depth (metres), semantic map and a scene label.

Every sample is a pure function of ``(seed, split, index)``: nothing is downloaded or cached, the
aligned modalities are exact by construction, and no fixed handful of images is ever repeated.

A pinhole camera at height ``CAMERA_HEIGHT`` looks at a room: a floor plane whose depth grows toward
the horizon and a back wall at a random distance. Between 3 and 6 objects (8 classes, each with its
own shape, colour distribution and texture) stand on the floor at random depths; their image size
and floor-contact row follow from perspective, and a z-buffer makes nearer objects occlude farther
ones, so the class map is always the class of the nearest surface. RGB is albedo x shading plus
Gaussian noise. The scene label is the object class that covers the most pixels.

Two options decide how much a single pixel gives away (``data.colour_mode``, ``data.depth_shading``):

* ``colour_mode="class"`` (default): every class has its own mean colour (``_CLASS_STYLE``), as in the
  original generator. ``"random"``: every object's hue, saturation and brightness are drawn at random,
  independently of its class, so the class must be read from shape and texture alone (much harder: a
  tiny model neither pre-trains nor fine-tunes to it in a CPU budget).
* ``depth_shading``: brightness falls by this fraction per metre of depth (``0.06``: the original
  generator, where depth can be read off a pixel's brightness). ``0.0`` (default): no depth-dependent
  shading; each scene gets one random global illumination instead, so depth must be inferred from
  geometry (the floor-contact row, the horizon, apparent size).

``colour_mode="class", depth_shading=0.06`` is the original generator, bit for bit.

``data.depth_relief`` is MM-MAE's heterogeneity dial (docs/heterogeneity.md): a smooth random relief multiplies
every surface's depth by ``exp(depth_relief * r)``, ``r`` a field of zero mean and unit standard deviation per
scene (a Gaussian grid of one cell per 8 pixels, bilinearly interpolated) drawn from its own random stream. So the
standard deviation of ``log(depth / depth without relief)`` is ``depth_relief`` exactly, and RGB, the semantic
map and the label are those of the scene without it (0, the default: the same scenes, bit for bit). The relief
is invisible in RGB: the depth reconstruction gets harder, its loss rises, while the scene geometry it must still
learn (the downstream depth task's target) stays the same.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.loading import epoch_subset_loader, eval_loader
from utils.errors import ConfigError

#: semantic classes: two background surfaces then eight object classes
CLASS_NAMES = ("floor", "wall", "ball", "box", "cone", "ring", "cross", "diamond", "table", "bowl")
NUM_CLASSES = len(CLASS_NAMES)
NUM_OBJECT_CLASSES = NUM_CLASSES - 2
#: modalities this generator provides
MODALITIES = ("rgb", "depth", "semseg")
#: RGB is returned normalised as (rgb - RGB_MEAN) / RGB_STD; depth in metres
RGB_MEAN = 0.45
RGB_STD = 0.25
CAMERA_HEIGHT = 1.2
#: split name -> stream id mixed into the seed, so splits never share an image
SPLITS = {"train": 0, "val": 1, "test": 2}
#: how object colours are chosen: per class (the original generator) or at random per object
COLOUR_MODES = ("class", "random")

# per object class: mean RGB albedo (0..1), colour std, size range (metres), aspect (height / width)
_CLASS_STYLE = {
    2: ((0.85, 0.15, 0.15), 0.08, (0.5, 0.9), 1.0),  # ball: red, radial shading
    3: ((0.20, 0.35, 0.85), 0.08, (0.6, 1.2), 0.9),  # box: blue, checker
    4: ((0.95, 0.75, 0.10), 0.07, (0.6, 1.1), 1.3),  # cone: yellow, horizontal stripes
    5: ((0.15, 0.75, 0.30), 0.08, (0.6, 1.0), 1.0),  # ring: green, plain
    6: ((0.75, 0.20, 0.80), 0.08, (0.6, 1.1), 1.0),  # cross: purple, vertical stripes
    7: ((0.10, 0.80, 0.85), 0.07, (0.5, 1.0), 1.2),  # diamond: cyan, dots
    8: ((0.55, 0.35, 0.15), 0.06, (0.9, 1.5), 0.6),  # table: brown, wood grain
    9: ((0.95, 0.50, 0.60), 0.08, (0.9, 1.4), 0.8),  # bowl: pink, noise
}


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Silhouette of an object class in local coordinates u, v in [-1, 1] (v grows downward)."""
    if cls == 2:
        return u * u + v * v <= 1.0
    if cls == 3:
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if cls == 4:
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if cls == 5:
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if cls == 6:
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if cls == 7:
        return np.abs(u) + np.abs(v) <= 1.0
    if cls == 8:
        top = (np.abs(u) <= 1.0) & (v >= -1.0) & (v <= -0.45)
        legs = (np.abs(np.abs(u) - 0.8) <= 0.14) & (v > -0.45) & (v <= 1.0)
        return top | legs
    if cls == 9:
        return (v >= -0.2) & (u * u + ((v + 0.2) / 1.2) ** 2 <= 1.0)
    raise ValueError(f"unknown object class {cls}")


def _texture(cls: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness multiplier in about [0.55, 1.15] giving each class its own texture."""
    phase = rng.uniform(0, 2 * np.pi)
    if cls == 2:
        return 1.15 - 0.5 * np.clip(u * u + v * v, 0, 1)
    if cls == 3:
        return np.where((np.floor((u + 1) * 2) + np.floor((v + 1) * 2)) % 2 == 0, 1.0, 0.6)
    if cls == 4:
        return 0.8 + 0.25 * np.sign(np.sin(v * 9.0 + phase))
    if cls == 5:
        return np.ones_like(u)
    if cls == 6:
        return 0.8 + 0.25 * np.sign(np.sin(u * 9.0 + phase))
    if cls == 7:
        return np.where(np.sin(u * 10 + phase) * np.sin(v * 10) > 0.4, 0.55, 1.0)
    if cls == 8:
        return 0.85 + 0.15 * np.sin(u * 25 + 2 * np.sin(v * 6) + phase)
    if cls == 9:
        return 0.8 + 0.2 * rng.standard_normal(u.shape)
    raise ValueError(f"unknown object class {cls}")


def _room(rng: np.random.Generator, s: int, f: float, rows: np.ndarray, cols: np.ndarray):
    """The background of one scene: a floor below a back wall at a random depth and tilt.

    Returns ``horizon`` (the horizon row), ``wall_depth`` (metres) and the per-pixel ``depth``, ``semseg``
    (0 floor, 1 wall) and ``albedo`` (floor tiles in world coordinates), as a dict.
    """
    horizon = rng.uniform(0.3, 0.5) * s
    wall_depth = rng.uniform(6.0, 9.0)
    wall_tilt = rng.uniform(-0.15, 0.15)
    # background: floor below the wall line, depth from the ground-plane geometry
    below = np.maximum(rows - horizon, 1e-3)
    floor_depth = CAMERA_HEIGHT * f / below
    wall = wall_depth * (1.0 + wall_tilt * (cols - s / 2) / s) + 0 * rows
    is_floor = (rows > horizon) & (floor_depth < wall)
    depth = np.where(is_floor, floor_depth, wall).astype(np.float32)
    semseg = np.where(is_floor, 0, 1).astype(np.int64)
    # background albedo: floor tiles in world coordinates, plain wall with noise
    floor_col = rng.uniform(0.35, 0.65) * np.array([1.0, 0.85, 0.65]) + rng.normal(0, 0.05, 3)
    wall_col = rng.uniform(0.6, 0.9) * np.array([0.9, 0.95, 1.0]) + rng.normal(0, 0.05, 3)
    world_x = (cols - s / 2) * depth / f
    tiles = ((np.floor(world_x / 0.6) + np.floor(depth / 0.6)) % 2) * 0.12 + 0.88
    albedo = np.where(is_floor[..., None], floor_col * tiles[..., None], wall_col).astype(np.float32)
    return {"horizon": horizon, "wall_depth": wall_depth, "depth": depth, "semseg": semseg, "albedo": albedo}


def _place_object(rng, cls: int, horizon: float, wall_depth: float, f: float, rows, cols):
    """Stand an object of class ``cls`` on the floor at a random depth and column.

    Returns ``(window, mask, depth, u, v)``: its bounding window in the image (a pair of slices), its
    silhouette and depth there, and the local coordinates of the window's pixels; ``None`` when the
    object falls outside the image.
    """
    s = len(rows)
    size_range, aspect = _CLASS_STYLE[cls][2:]
    z = rng.uniform(1.8, wall_depth - 0.8)
    width_m = 1.3 * rng.uniform(*size_range)
    height_m = width_m * aspect * rng.uniform(0.85, 1.15)
    half_w = 0.5 * width_m * f / z
    half_h = 0.5 * height_m * f / z
    bottom = horizon + CAMERA_HEIGHT * f / z  # the row where the floor is at depth z
    cy = bottom - half_h
    cx = rng.uniform(0.1, 0.9) * s
    r0, r1 = max(int(cy - half_h), 0), min(int(np.ceil(cy + half_h)) + 1, s)
    c0, c1 = max(int(cx - half_w), 0), min(int(np.ceil(cx + half_w)) + 1, s)
    if r0 >= r1 or c0 >= c1:
        return None
    u = (cols[:, c0:c1] - cx) / half_w
    v = (rows[r0:r1] - cy) / half_h
    u, v = np.broadcast_arrays(u, v)
    mask = _shape_mask(cls, u, v)
    # small relief: round objects bulge toward the camera
    bulge = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0)) if cls in (2, 9) else 0.0 * u
    obj_depth = (z - 0.5 * width_m * 0.5 * bulge).astype(np.float32)
    return (slice(r0, r1), slice(c0, c1)), mask, obj_depth, u, v


def _object_colour(rng: np.random.Generator, cls: int, colour_mode: str) -> np.ndarray:
    """An object's RGB albedo: near its class's mean colour, or (``colour_mode="random"``) any colour."""
    if colour_mode == "class":
        mean_col, col_std = _CLASS_STYLE[cls][:2]
        return np.clip(np.asarray(mean_col) + rng.normal(0, col_std, 3), 0.02, 1.0)
    # any hue, any class: the class is in the shape and the texture only
    hue, sat, val = rng.uniform(0.0, 1.0), rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val))


def _layer(cls: int, window, mask: np.ndarray, obj_depth: np.ndarray, s: int) -> tuple:
    """``(class, mask, depth)`` of one object over the whole image, before occlusion (depth inf off it)."""
    full_mask = np.zeros((s, s), bool)
    full_mask[window] = mask
    full_depth = np.full((s, s), np.inf, np.float32)
    full_depth[window] = np.where(mask, obj_depth, np.inf)
    return cls, full_mask, full_depth


def _add_objects(rng, count: int, room: dict, f: float, rows, cols, colour_mode: str, layers: bool) -> list:
    """Stand ``count`` objects of random classes in the :func:`_room`, painting its depth, semseg and albedo in
    place through a z-buffer, so nearer surfaces occlude farther ones; returns each object's :func:`_layer`
    where ``layers`` (else ``[]``)."""
    depth, semseg, albedo = room["depth"], room["semseg"], room["albedo"]
    out = []
    for _ in range(count):
        cls = int(rng.integers(2, NUM_CLASSES))
        placed = _place_object(rng, cls, room["horizon"], room["wall_depth"], f, rows, cols)
        if placed is None:
            continue
        win, mask, obj_depth, u, v = placed
        colour = _object_colour(rng, cls, colour_mode)
        tex = _texture(cls, u, v, rng)
        if layers:
            out.append(_layer(cls, win, mask, obj_depth, len(rows)))
        nearer = mask & (obj_depth < depth[win])
        depth[win] = np.where(nearer, obj_depth, depth[win])
        semseg[win] = np.where(nearer, cls, semseg[win])
        albedo[win] = np.where(nearer[..., None], colour * tex[..., None], albedo[win])
    return out


def _shade(rng, albedo, depth, semseg, noise_std: float, depth_shading: float) -> tuple[np.ndarray, int]:
    """RGB (albedo x shading + noise, clipped to [0, 1]) and the label: the object class covering most pixels."""
    if depth_shading > 0:
        shading = np.clip(1.15 - float(depth_shading) * depth, 0.35, 1.0)[..., None]
    else:  # one random illumination per scene: brightness says nothing about depth
        shading = np.full(depth.shape + (1,), rng.uniform(0.7, 1.0), np.float32)
    rgb = albedo * shading + rng.normal(0.0, noise_std, albedo.shape)
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    counts = np.bincount(semseg.ravel(), minlength=NUM_CLASSES)[2:]
    label = int(np.argmax(counts)) if counts.max() > 0 else int(rng.integers(0, NUM_OBJECT_CLASSES))
    return rgb, label


def _relief(seed: int, split: str, index: int, s: int, rms: float) -> np.ndarray:
    """``rms * r``: the log-depth relief of one scene (see the module docstring), from its own random stream."""
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index), 1])
    cells = max(s // 8, 1)
    grid = rng.standard_normal((cells + 1, cells + 1))
    x = (np.arange(s) + 0.5) / s * cells
    i = np.minimum(x.astype(int), cells - 1)
    t = x - i
    rows = grid[i] * (1 - t)[:, None] + grid[i + 1] * t[:, None]
    field = rows[:, i] * (1 - t) + rows[:, i + 1] * t
    return (rms * (field - field.mean()) / field.std()).astype(np.float32)


def render_scene(
    seed: int,
    index: int,
    split: str = "train",
    image_size: int = 64,
    min_objects: int = 3,
    max_objects: int = 6,
    noise_std: float = 0.03,
    return_layers: bool = False,
    colour_mode: str = "class",
    depth_shading: float = 0.0,
    depth_relief: float = 0.0,
) -> dict[str, np.ndarray | int | list]:
    """Render one scene, a pure function of (seed, split, index) and the options.

    ``colour_mode`` (``class`` | ``random``), ``depth_shading`` and ``depth_relief`` are described in the module
    docstring; ``colour_mode="class", depth_shading=0.06`` is the original generator.

    Returns ``rgb`` (H, W, 3) float32 in [0, 1], ``depth`` (H, W) float32 metres, ``semseg`` (H, W)
    int64 class ids in [0, NUM_CLASSES), ``label`` int in [0, NUM_OBJECT_CLASSES) (the object class
    covering most pixels, minus 2). With ``return_layers`` also ``layers``: per object
    ``(class, mask, depth)`` before occlusion, and ``background_depth``.
    """
    if colour_mode not in COLOUR_MODES:
        raise ValueError(f"colour_mode={colour_mode!r}; choose among {', '.join(COLOUR_MODES)}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    s = image_size
    f = 0.9 * s  # focal length in pixels
    rows = np.arange(s, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(s, dtype=np.float32)[None, :] + 0.5
    room = _room(rng, s, f, rows, cols)
    background_depth = room["depth"].copy()
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    layers = _add_objects(rng, n_objects, room, f, rows, cols, colour_mode, return_layers)
    depth, semseg = room["depth"], room["semseg"]
    rgb, label = _shade(rng, room["albedo"], depth, semseg, noise_std, depth_shading)
    if depth_relief > 0:  # after the shading: RGB never sees it
        depth = depth * np.exp(_relief(seed, split, index, s, float(depth_relief)))
    out: dict = {"rgb": rgb, "depth": depth, "semseg": semseg, "label": label}
    if return_layers:
        out["layers"] = layers
        out["background_depth"] = background_depth
    return out


class SceneDataset(Dataset):
    """``size`` scenes of one split; item ``i`` is ``render_scene(seed, i, split)`` as tensors."""

    def __init__(
        self,
        size: int,
        split: str = "train",
        seed: int = 0,
        image_size: int = 64,
        modalities: Sequence[str] = MODALITIES,
        min_objects: int = 3,
        max_objects: int = 6,
        noise_std: float = 0.03,
        colour_mode: str = "class",
        depth_shading: float = 0.0,
        depth_relief: float = 0.0,
    ) -> None:
        self.size, self.split, self.seed, self.image_size = int(size), split, int(seed), int(image_size)
        self.modalities = tuple(modalities)
        self.min_objects, self.max_objects, self.noise_std = min_objects, max_objects, noise_std
        self.colour_mode, self.depth_shading = str(colour_mode), float(depth_shading)
        self.depth_relief = float(depth_relief)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene = render_scene(
            self.seed,
            index,
            self.split,
            self.image_size,
            self.min_objects,
            self.max_objects,
            self.noise_std,
            colour_mode=self.colour_mode,
            depth_shading=self.depth_shading,
            depth_relief=self.depth_relief,
        )
        out = {"label": torch.tensor(scene["label"])}
        if "rgb" in self.modalities:
            out["rgb"] = (torch.from_numpy(scene["rgb"]).permute(2, 0, 1) - RGB_MEAN) / RGB_STD
        if "depth" in self.modalities:
            out["depth"] = torch.from_numpy(scene["depth"])[None]
        if "semseg" in self.modalities:
            out["semseg"] = torch.from_numpy(scene["semseg"])
        return out


def check_scene_options(
    image_size: int,
    modalities: Sequence[str],
    min_objects: int,
    max_objects: int,
    prefix: str = "data",
    modalities_key: str = "modalities",
    colour_mode: str = "class",
    depth_shading: float = 0.0,
    depth_relief: float = 0.0,
) -> None:
    """Raise ConfigError, naming the key, for options the generator cannot honour."""
    if (
        isinstance(depth_relief, bool)
        or not isinstance(depth_relief, (int, float))
        or not 0 <= depth_relief <= 1
    ):
        raise ConfigError(
            f"{prefix}.depth_relief={depth_relief!r} must be a number in [0, 1] (the standard deviation of the "
            "log-depth relief; 0: none)."
        )
    if colour_mode not in COLOUR_MODES:
        raise ConfigError(
            f"{prefix}.colour_mode={colour_mode!r} is not a colour mode; choose among {', '.join(COLOUR_MODES)}."
        )
    if not 0.0 <= float(depth_shading) <= 0.2:
        raise ConfigError(
            f"{prefix}.depth_shading={depth_shading} must be in [0, 0.2] (brightness lost per metre; 0: none)."
        )
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigError(
            f"{prefix}.{modalities_key} names {unknown[0]!r}, which the scene generator does not provide "
            f"(it provides {', '.join(MODALITIES)})."
        )
    if int(image_size) < 16:
        raise ConfigError(f"{prefix}.image_size={image_size} is too small; use at least 16 pixels.")
    if not 1 <= int(min_objects) <= int(max_objects):
        raise ConfigError(
            f"{prefix}.min_objects={min_objects} and {prefix}.max_objects={max_objects} must satisfy "
            "1 <= min_objects <= max_objects."
        )


class ScenesDataModule(L.LightningDataModule):
    """Pre-training batches of procedurally rendered scenes, each a dict of aligned modalities.

    A batch holds ``rgb`` (B, 3, H, W) normalised, ``depth`` (B, 1, H, W) in metres, ``semseg``
    (B, H, W) class ids and ``label`` (B,), restricted to ``modalities`` (plus ``label``).

    ``train_size`` distinct training scenes exist (indices ``0..train_size-1`` of split ``train``); each
    epoch draws ``samples_per_epoch`` of them without replacement, a fresh draw every epoch, so an
    "epoch" (DWA's unit, the validation cadence) is short while scenes are rarely repeated. Validation
    uses the first ``val_size`` scenes of split ``val``.
    """

    def __init__(
        self,
        image_size: int = 64,
        modalities: Sequence[str] = MODALITIES,
        num_classes: int = NUM_CLASSES,
        train_size: int = 1_000_000,
        samples_per_epoch: int = 6400,
        val_size: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        min_objects: int = 3,
        max_objects: int = 6,
        noise_std: float = 0.03,
        colour_mode: str = "class",
        depth_shading: float = 0.0,
        depth_relief: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        check_scene_options(
            image_size,
            modalities,
            min_objects,
            max_objects,
            colour_mode=colour_mode,
            depth_shading=depth_shading,
            depth_relief=depth_relief,
        )
        if int(num_classes) != NUM_CLASSES:
            raise ConfigError(
                f"data.num_classes={num_classes} but the scene generator renders {NUM_CLASSES} classes "
                f"({', '.join(CLASS_NAMES)})."
            )
        if int(samples_per_epoch) < 1 or int(train_size) < 1:
            raise ConfigError(
                f"data.train_size={train_size} and data.samples_per_epoch={samples_per_epoch} must be >= 1."
            )
        self.image_size, self.modalities, self.num_classes = int(image_size), modalities, NUM_CLASSES
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self._kw = dict(
            seed=seed,
            image_size=image_size,
            modalities=modalities,
            min_objects=min_objects,
            max_objects=max_objects,
            noise_std=noise_std,
            colour_mode=colour_mode,
            depth_shading=depth_shading,
            depth_relief=depth_relief,
        )
        self.train_size, self.val_size = int(train_size), int(val_size)
        self.samples_per_epoch = min(int(samples_per_epoch), self.train_size)
        self.train_set = SceneDataset(self.train_size, "train", **self._kw)
        self.val_set = SceneDataset(self.val_size, "val", **self._kw)

    def validate(self) -> None:
        """Start-up check of the inputs (``runner/pipeline.py``): rendered scenes, nothing to read."""

    def train_dataloader(self):
        # samples_per_epoch distinct items per epoch, a fresh draw every epoch; the loader's position rides in
        # the checkpoint (exact mid-epoch resume)
        return epoch_subset_loader(
            self.train_set, self.samples_per_epoch, self.batch_size, int(self._kw["seed"]), self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self.batch_size, self.num_workers)
