"""The procedural scene generator and its DataModule (data/scenes.py)."""

import numpy as np
import pytest
import torch

from data.scenes import (
    CLASS_NAMES,
    NUM_CLASSES,
    RGB_MEAN,
    RGB_STD,
    SceneDataset,
    ScenesDataModule,
    render_scene,
)
from pretrain.errors import ConfigError


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


def test_smoke_shrinks_the_data():
    dm = ScenesDataModule(smoke=True)
    assert len(dm.train_dataloader()) == 2 and len(dm.val_dataloader()) == 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"modalities": ["rgb", "normals"]}, "data.modalities"),
        ({"num_classes": 21}, "data.num_classes"),
        ({"min_objects": 4, "max_objects": 2}, "data.min_objects"),
        ({"image_size": 8}, "data.image_size"),
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        ScenesDataModule(**kwargs)
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)
