"""The procedural scene generator and its DataModule (data/scenes.py)."""

import numpy as np
import pytest
import torch
from helpers import smoke_values

from data.scenes import (
    CLASS_NAMES,
    NUM_CLASSES,
    RGB_MEAN,
    RGB_STD,
    SceneDataset,
    ScenesDataModule,
    render_scene,
)
from utils.errors import ConfigError


def test_scene_is_a_function_of_seed_split_and_index():
    a, b = render_scene(0, 5), render_scene(0, 5)
    for key in ("rgb", "depth", "semseg"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["label"] == b["label"]
    for other in (render_scene(0, 6), render_scene(1, 5), render_scene(0, 5, split="val")):
        assert not np.array_equal(a["rgb"], other["rgb"])
        assert not np.array_equal(a["depth"], other["depth"])


def test_scene_arrays_types_and_ranges():
    s = render_scene(3, 1, image_size=48)
    assert s["rgb"].shape == (48, 48, 3) and s["rgb"].dtype == np.float32
    assert s["depth"].shape == (48, 48) and s["depth"].dtype == np.float32
    assert s["semseg"].shape == (48, 48) and s["semseg"].dtype == np.int64
    assert 0.0 <= s["rgb"].min() and s["rgb"].max() <= 1.0
    assert s["depth"].min() > 0.5 and s["depth"].max() < 20.0
    assert 0 <= s["semseg"].min() and s["semseg"].max() < NUM_CLASSES
    assert 0 <= s["label"] < NUM_CLASSES - 2


@pytest.mark.parametrize("index", range(12))
def test_depth_ordering_and_occlusion_match_the_class_map(index):
    s = render_scene(7, index, return_layers=True)
    depth, semseg, background = s["depth"], s["semseg"], s["background_depth"]
    stack = np.stack([background] + [d for _, _, d in s["layers"]])  # inf where an object is absent
    np.testing.assert_allclose(depth, stack.min(0), rtol=1e-6)
    nearest = stack.argmin(0)
    classes = np.array([-1] + [c for c, _, _ in s["layers"]])
    on_object = nearest > 0
    # the visible class is the class of the nearest surface...
    np.testing.assert_array_equal(semseg[on_object], classes[nearest[on_object]])
    # ...and where the background is nearest, it is floor (0) or wall (1)
    assert set(np.unique(semseg[~on_object])) <= {0, 1}
    # an object pixel is always in front of the room behind it
    assert (depth[semseg >= 2] < background[semseg >= 2]).all()


def test_room_geometry_floor_recedes_toward_the_horizon_and_wall_is_behind():
    s = render_scene(0, 11, return_layers=True)
    bg, seg = s["background_depth"], s["semseg"]
    uncovered = np.stack([m for _, m, _ in s["layers"]]).any(0) == 0
    for c in range(0, 64, 9):
        col = bg[:, c]
        floor = col < col[0] - 1e-4  # the top row is wall; the floor is nearer than the wall
        rows = np.nonzero(floor)[0]
        assert len(rows) > 5 and rows[-1] == 63 and (np.diff(rows) == 1).all()  # the bottom band
        assert (np.diff(col[rows]) < 0).all()  # lower rows are nearer
        # where no object covers the room, the class map says floor exactly on the floor band
        keep = uncovered[:, c]
        np.testing.assert_array_equal(seg[keep, c] == 0, floor[keep])


def test_label_is_the_object_class_covering_most_pixels():
    for index in range(10):
        s = render_scene(2, index)
        counts = np.bincount(s["semseg"].ravel(), minlength=NUM_CLASSES)[2:]
        if counts.max() > 0:
            assert s["label"] == int(np.argmax(counts))


def test_all_eight_object_classes_occur_and_labels_are_not_degenerate():
    seen, labels = set(), []
    for index in range(150):
        s = render_scene(0, index)
        seen |= set(np.unique(s["semseg"]).tolist())
        labels.append(s["label"])
    assert seen == set(range(len(CLASS_NAMES)))
    counts = np.bincount(labels, minlength=8)
    assert counts.min() >= 5, counts  # every scene label occurs


def test_dataset_tensors_and_modalities():
    ds = SceneDataset(4, modalities=("rgb", "semseg"), seed=1)
    item = ds[2]
    assert set(item) == {"rgb", "semseg", "label"}
    assert item["rgb"].shape == (3, 64, 64) and item["semseg"].dtype == torch.int64
    raw = render_scene(1, 2)["rgb"]
    np.testing.assert_allclose(item["rgb"].permute(1, 2, 0).numpy() * RGB_STD + RGB_MEAN, raw, atol=1e-6)


def test_datamodule_batches_and_fresh_draw_each_epoch():
    dm = ScenesDataModule(batch_size=4, train_size=1000, samples_per_epoch=12, val_size=4, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["rgb"].shape == (4, 3, 64, 64)
    assert batch["depth"].shape == (4, 1, 64, 64)
    assert batch["semseg"].shape == (4, 64, 64)
    loader = dm.train_dataloader()
    first = list(loader.sampler)
    assert list(loader.sampler) == first  # the same epoch draws the same scenes (exact resume)
    loader.sampler.set_epoch(1)  # Lightning calls set_epoch at every epoch
    second = list(loader.sampler)
    assert len(first) == 12 and len(set(first)) == 12  # distinct scenes within an epoch
    assert first != second  # a new draw every epoch
    assert len(loader) == 3
    assert len(dm.val_dataloader().dataset) == 4


def test_smoke_values_shrink_the_data():
    dm = ScenesDataModule(**smoke_values("data", "scenes"))
    assert len(dm.train_dataloader()) == 2 and len(dm.val_dataloader()) == 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"modalities": ["rgb", "normals"]}, "data.modalities"),
        ({"num_classes": 21}, "data.num_classes"),
        ({"min_objects": 4, "max_objects": 2}, "data.min_objects"),
        ({"image_size": 8}, "data.image_size"),
        ({"colour_mode": "hue"}, "data.colour_mode"),
        ({"depth_shading": -0.1}, "data.depth_shading"),
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        ScenesDataModule(**kwargs)
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)


def _colour_to_class_accuracy(colour_mode: str, scenes: int = 80) -> float:
    """How well a pixel region's mean colour predicts its class: nearest class centroid of the mean
    chromaticity (r, g, b) / (r + g + b), centroids from the first half of the scenes, scored on the rest."""
    feats, classes = [], []
    for index in range(scenes):
        s = render_scene(0, index, colour_mode=colour_mode)
        for cls in range(2, NUM_CLASSES):
            pix = s["rgb"][s["semseg"] == cls]
            if len(pix) >= 20:
                mean = pix.mean(0)
                feats.append(mean / mean.sum())
                classes.append(cls)
    feats, classes = np.array(feats), np.array(classes)
    half = len(feats) // 2
    centroids = np.stack([feats[:half][classes[:half] == c].mean(0) for c in range(2, NUM_CLASSES)])
    pred = np.argmin(((feats[half:, None] - centroids[None]) ** 2).sum(-1), 1) + 2
    return float((pred == classes[half:]).mean())


def test_colour_mode_random_decouples_colour_from_class():
    assert _colour_to_class_accuracy("class") > 0.8  # one colour per class: colour gives the class away
    assert _colour_to_class_accuracy("random") < 0.3  # any hue for any class: about chance (1/8)


def test_colour_mode_random_keeps_shapes_labels_and_geometry():
    a, b = render_scene(0, 4, colour_mode="class"), render_scene(0, 4, colour_mode="class")
    np.testing.assert_array_equal(a["rgb"], b["rgb"])  # still a pure function of (seed, split, index)
    labels = [render_scene(0, i, colour_mode="random")["label"] for i in range(150)]
    assert np.bincount(labels, minlength=8).min() >= 5


def _floor_brightness_depth_correlation(depth_shading: float) -> float:
    corrs = []
    for index in range(10):
        s = render_scene(1, index, depth_shading=depth_shading)
        floor = s["semseg"] == 0
        corrs.append(np.corrcoef(s["rgb"].mean(-1)[floor], s["depth"][floor])[0, 1])
    return float(np.mean(corrs))


def test_depth_shading_zero_removes_the_depth_from_brightness_cue():
    assert _floor_brightness_depth_correlation(0.06) < -0.5  # farther floor is darker
    assert abs(_floor_brightness_depth_correlation(0.0)) < 0.2  # brightness says nothing about depth


def test_depth_shading_zero_varies_the_illumination_between_scenes():
    walls = [render_scene(2, i, colour_mode="class")["rgb"][0].mean() for i in range(12)]
    assert np.std(walls) > 0.03


def test_class_colours_with_shading_reproduce_the_original_generator():
    s = render_scene(4, 2, colour_mode="class", depth_shading=0.06)
    assert s["rgb"].astype(np.float64).sum() == pytest.approx(5895.767298917752, rel=1e-6)
    assert s["depth"].astype(np.float64).sum() == pytest.approx(18365.768626213074, rel=1e-6)
    assert s["label"] == 4
    assert np.bincount(s["semseg"].ravel(), minlength=NUM_CLASSES).tolist() == [
        1399,
        1905,
        84,
        236,
        0,
        0,
        273,
        199,
        0,
        0,
    ]


def test_dataset_and_datamodule_pass_the_options_to_the_generator():
    for colour_mode, depth_shading in (("class", 0.06), ("random", 0.0)):
        ds = SceneDataset(3, seed=5, colour_mode=colour_mode, depth_shading=depth_shading)
        raw = render_scene(5, 1, colour_mode=colour_mode, depth_shading=depth_shading)["rgb"]
        np.testing.assert_allclose(ds[1]["rgb"].permute(1, 2, 0).numpy() * RGB_STD + RGB_MEAN, raw, atol=1e-6)
        dm = ScenesDataModule(val_size=2, seed=5, colour_mode=colour_mode, depth_shading=depth_shading)
        np.testing.assert_allclose(
            dm.val_set[1]["rgb"].numpy(),
            SceneDataset(2, "val", seed=5, colour_mode=colour_mode, depth_shading=depth_shading)[1][
                "rgb"
            ].numpy(),
        )
    a = SceneDataset(2, seed=5, colour_mode="class")[1]["rgb"]
    assert not torch.equal(a, SceneDataset(2, seed=5, colour_mode="random")[1]["rgb"])
