"""NYUv2 in its two on-disk formats (data/nyuv2.py) and its downstream suite (finetune/nyuv2.py)."""

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from helpers import run_pipeline
from PIL import Image

from data.nyuv2 import IGNORE_INDEX, NUM_CLASSES, NYUv2Dataset, load_class_mapping
from finetune.figures import sweep_figure
from finetune.nyuv2 import NYUv2Finetune, NYUv2Suite
from models.multimae import MultiMAE
from utils.errors import ConfigError, DataError

H, W, N = 12, 20, 5  # non-square, so a missed transposition shows
TRAIN, TEST = [1, 3, 4], [2, 5]  # 1-based, as in splits.mat


def expected(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image i as (H, W, 3) uint8, (H, W) metres, (H, W) 894-class ids (0 = unlabelled)."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 10, y * 20, np.full_like(x, 10 * i)], -1).astype(np.uint8)
    depth = (1.0 + 0.1 * y + 0.01 * x + i).astype(np.float32)
    labels = np.where(x < 3, 0, 100 + x + 40 * (y % 2)).astype(np.uint16)
    return rgb, depth, labels


MAPPING = np.array([k % 40 + 1 for k in range(1, 895)])  # 894-class k -> 40-class (k % 40) + 1


def write_mat_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = [expected(i) for i in range(N)]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:  # MATLAB v7.3: column-major, axes reversed
        f["images"] = np.stack([rgb.transpose(2, 1, 0) for rgb, _, _ in items])  # (N, 3, W, H)
        f["depths"] = np.stack([d.T for _, d, _ in items])  # (N, W, H)
        f["labels"] = np.stack([lab.T for _, _, lab in items])  # (N, W, H)
    scipy.io.savemat(
        root / "splits.mat", {"trainNdxs": np.array(TRAIN)[:, None], "testNdxs": np.array(TEST)[:, None]}
    )
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": MAPPING[None, :]})
    return root


def write_png_root(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for kind in ("rgb", "depth", "label"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rgb, depth, _ = expected(i)
            label = np.tile(np.arange(W), (H, 1)).astype(np.uint8)  # 0 = void, 1..40
            label[:, 2] = NUM_CLASSES
            Image.fromarray(rgb).save(root / split / "rgb" / f"{i:04d}.png")
            Image.fromarray((depth * 1000).astype(np.uint16)).save(root / split / "depth" / f"{i:04d}.png")
            Image.fromarray(label).save(root / split / "label" / f"{i:04d}.png")
    return root


def test_mat_format_transposes_maps_classes_and_splits(tmp_path):
    root = write_mat_root(tmp_path / "nyu")
    train = NYUv2Dataset(root, "train", image_size=16)
    test = NYUv2Dataset(root, "test", image_size=16)
    assert test.format == "mat" and len(train) == len(TRAIN) and len(test) == len(TEST)
    item = test[1]  # 1-based index 5 -> image 4
    rgb, depth, labels = expected(TEST[1] - 1)
    assert item["rgb"].shape == (3, 16, 16) and item["semseg"].shape == (16, 16)
    assert item["depth_full"].shape == (1, H, W)
    np.testing.assert_allclose(item["depth_full"][0].numpy(), depth)
    want = np.where(labels > 0, MAPPING[np.maximum(labels.astype(int), 1) - 1] - 1, IGNORE_INDEX)
    np.testing.assert_array_equal(item["semseg_full"].numpy(), want)
    assert (item["semseg_full"][:, :3] == IGNORE_INDEX).all() and item["semseg_full"].max() == IGNORE_INDEX
    assert item["semseg_full"][item["semseg_full"] != IGNORE_INDEX].max() < NUM_CLASSES
    sample = train[0]
    assert sample["rgb"].shape == (3, 16, 16) and sample["depth"].shape == (1, 16, 16)
    assert "depth_full" not in sample and sample["semseg"].dtype == torch.int64
    # the class mapping accepts a .npy of 895 ints as well
    np.save(tmp_path / "map.npy", np.concatenate([[0], MAPPING]))
    np.testing.assert_array_equal(load_class_mapping(tmp_path / "map.npy")[1:], MAPPING)


def test_png_format_reads_millimetres_and_void(tmp_path):
    root = write_png_root(tmp_path / "nyu")
    test = NYUv2Dataset(root, "test", image_size=16)
    assert test.format == "png" and len(test) == 2 and len(NYUv2Dataset(root, "train", image_size=16)) == 3
    item = test[1]
    np.testing.assert_allclose(item["depth_full"][0].numpy(), expected(1)[1], atol=1e-3)
    row = item["semseg_full"][0]
    assert row[0] == IGNORE_INDEX and row[1] == 0 and row[2] == NUM_CLASSES - 1 and row[5] == 4


def test_missing_and_malformed_files_fail_with_one_sentence_naming_them(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "none")):
        NYUv2Dataset(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nyu_depth_v2_labeled.mat"):
        NYUv2Dataset(tmp_path / "empty")
    root = write_mat_root(tmp_path / "nyu")
    (root / "splits.mat").unlink()
    with pytest.raises(DataError, match="splits.mat does not exist"):
        NYUv2Dataset(root)
    (root / "splits.mat").write_text("not a mat file")
    with pytest.raises(DataError, match="splits.mat is not a readable MATLAB file") as err:
        NYUv2Dataset(root)
    assert "\n" not in str(err.value)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [9]]), "testNdxs": np.array([[2]])})
    with pytest.raises(DataError, match="outside 1..5"):
        NYUv2Dataset(root)
    scipy.io.savemat(root / "classMapping40.mat", {"className": np.array(["wall"])})
    with pytest.raises(DataError, match="classMapping40.mat has no variable 'mapClass'"):
        NYUv2Dataset(root)
    np.save(tmp_path / "map.npy", MAPPING)  # 894 values: entry 0 (unlabelled) is implied
    (root / "nyu_depth_v2_labeled.mat").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="nyu_depth_v2_labeled.mat is not a MATLAB v7.3"):
        NYUv2Dataset(root, format="mat", mapping_file=str(tmp_path / "map.npy"))
    png = write_png_root(tmp_path / "png")
    (png / "test" / "label" / "0001.png").unlink()
    with pytest.raises(DataError, match="has no .*label/0001.png"):
        NYUv2Dataset(png, "test")
    with pytest.raises(ConfigError, match="downstream.root is not set"):
        NYUv2Suite(root=None)
    with pytest.raises(ConfigError, match="not an NYUv2 task"):
        NYUv2Suite(root=str(png), tasks={"classification": {}})


def test_void_pixels_are_ignored_by_loss_and_metrics():
    torch.manual_seed(0)
    backbone = MultiMAE(
        image_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_dim=16, num_visible=4
    )
    module = NYUv2Finetune(backbone, "segmentation", num_classes=4, head_hidden=8)
    target = torch.tensor([[0, 1, 2, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 2, 3]])  # the only wrong pixel is void
    module.metrics["miou"].update(pred, target)
    module.metrics["pixel_acc"].update(pred, target)
    assert module.metrics["pixel_acc"].compute().item() == pytest.approx(1.0)
    assert module.metrics["miou"].compute().item() == pytest.approx(1.0)
    batch = {"rgb": torch.randn(2, 3, 16, 16), "semseg": torch.full((2, 16, 16), IGNORE_INDEX)}
    loss, _ = module._loss(batch)
    assert loss.item() == 0.0
    batch["semseg_full"] = torch.randint(0, 4, (2, 24, 40))  # metrics at the full resolution
    module._update_metrics(batch)
    depth = NYUv2Finetune(backbone, "depth", head_hidden=8)
    batch = {"rgb": torch.randn(1, 3, 16, 16), "depth": torch.zeros(1, 1, 16, 16)}
    batch["depth"][..., :8] = 2.0  # half the pixels have no depth
    loss, _ = depth._loss(batch)
    assert math.isfinite(loss.item()) and loss.item() > 0


def write_png_split(root: Path, split: str, sizes: list[tuple[int, int]]) -> None:
    """NYUv2 PNG images of the given (height, width): depth 1.5 m + 1 mm per column, labels 0 (void) in the
    first column and class id 1 + column % 5 elsewhere."""
    for kind in ("rgb", "depth", "label"):
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 9, y * 13, np.full_like(x, 40 * i)], -1).astype(np.uint8)
        label = np.where(x == 0, 0, 1 + x % 5).astype(np.uint8)
        Image.fromarray(rgb).save(root / split / "rgb" / f"{i:04d}.png")
        Image.fromarray((1500 + x).astype(np.uint16)).save(root / split / "depth" / f"{i:04d}.png")
        Image.fromarray(label).save(root / split / "label" / f"{i:04d}.png")


@pytest.mark.parametrize("protocol", ["finetune", "linear_probe"])
def test_test_images_of_different_sizes_are_scored_at_their_own_resolution(tmp_path, protocol):
    """Two test images of different sizes share a batch: the model sees both at image_size, each prediction is
    resized back to its image's own size and every one of its pixels is scored; Figure 3 shows them."""
    from test_vision_finetune import make_trainer

    sizes = [(12, 20), (15, 18)]
    root = tmp_path / "nyu"
    write_png_split(root, "train", [(16, 16), (20, 24), (18, 18)])
    write_png_split(root, "test", sizes)
    opts = {"epochs": 1, "warmup_steps": 1, "head_hidden": 8}
    suite = NYUv2Suite(
        root=str(root),
        image_size=16,
        batch_size=2,
        num_workers=0,
        protocol=protocol,
        tasks={"segmentation": opts, "depth": opts},
        figure_images=2,
    )
    batch = next(iter(suite.loader(suite.dev_set)))
    assert batch["rgb"].shape == (2, 3, 16, 16)
    assert [tuple(t.shape) for t in batch["depth_full"]] == [(1, h, w) for h, w in sizes]
    assert [tuple(t.shape) for t in batch["semseg_full"]] == sizes
    backbone = MultiMAE(
        image_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_dim=16, num_visible=4
    )
    depth = NYUv2Finetune(backbone, "depth", head_hidden=8)
    depth._update_metrics(batch)
    assert depth.metrics["depth"].n.item() == sum(h * w for h, w in sizes)  # every pixel, at full resolution
    seg = NYUv2Finetune(backbone, "segmentation", num_classes=NUM_CLASSES, head_hidden=8)
    seg._update_metrics(batch)
    non_void = sum(h * (w - 1) for h, w in sizes)  # the first column is void
    assert seg.metrics["pixel_acc"].tp.sum() + seg.metrics["pixel_acc"].fn.sum() == non_void

    results = suite.run(backbone, make_trainer, tmp_path / "out")
    for name, r in results.items():
        assert r["dev_rows"] == 2, name
        assert 0.0 <= r["metrics"][r["primary"]] <= 1.0 and all(
            math.isfinite(v) for v in r["metrics"].values()
        )
    figure = np.load(tmp_path / "out" / "figure3_data.npz")
    np.testing.assert_allclose(figure["aspect"], [h / w for h, w in sizes])
    assert figure["gt"].shape == (2, 16, 16) and (figure["gt"] == 255).any()  # void drawn apart
    assert len(figure["class_names"]) == NUM_CLASSES and figure["class_names"][0] == "wall"
    assert np.load(tmp_path / "out" / "seg_pred.npy").shape == (2, 16, 16)
    assert Path(suite.extra_results["figure3"]["png"]).stat().st_size > 1000
    (tmp_path / "out" / "results.json").write_text('{"balancer": "none"}')  # a sweep's Figure 3 of such runs
    assert sweep_figure([tmp_path / "out"], tmp_path / "sweep.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoke_run_pretrains_on_an_image_folder_and_finetunes_on_nyuv2(tmp_path):
    from test_image_folder import NUM_CLASSES as FOLDER_CLASSES
    from test_image_folder import write_folder

    write_folder(tmp_path / "img", tmp_path / "lab", {"cat": 3, "dog": 3})
    nyu = write_mat_root(tmp_path / "nyu")
    overrides = [
        "experiment=mm_mae",
        "data=imagenet_folder",
        f"data.root={tmp_path / 'img'}",
        f"data.labels_root={tmp_path / 'lab'}",
        "data.image_size=16",
        f"data.num_classes={FOLDER_CLASSES}",
        "model.num_visible=8",
        "downstream=nyuv2",
        f"downstream.root={nyu}",
        "debug=smoke",
        "logger=none",
        "print_table=false",
    ]
    results = run_pipeline(overrides, tmp_path / "run")
    assert set(results["downstream"]) == {"segmentation", "depth"}
    for r in results["downstream"].values():
        assert all(math.isfinite(v) for v in r["metrics"].values())
    assert results["nyuv2"] == {"train_images": 3, "test_images": 2}
    # without the data the run stops at once, naming what is missing and where
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        run_pipeline([*overrides[:2], f"data.root={tmp_path / 'nowhere'}", *overrides[3:]], tmp_path / "run2")


def write_depth(root: Path, split: str, values: np.ndarray) -> None:
    """Replace every depth PNG of a split with the uint16 ``values`` (H, W)."""
    for path in sorted((root / split / "depth").glob("*.png")):
        Image.fromarray(values.astype(np.uint16)).save(path)


def test_depth_unit_scales_the_pngs_and_a_wrong_unit_stops_with_the_median(tmp_path):
    root = write_png_root(tmp_path / "nyu")
    raw = np.full((H, W), 25_900, dtype=np.uint16)  # 2.59 m in the raw Kinect unit of 1e-4 m
    raw[0, :] = 0  # no measurement: not counted
    for split in ("train", "test"):
        write_depth(root, split, raw)
    suite = NYUv2Suite(root=str(root), image_size=16, num_workers=0)  # depth_unit defaults to mm
    with pytest.raises(DataError) as err:
        suite.validate()
    assert str(err.value) == (
        f"downstream.depth_unit=mm: the median depth of the first 3 train images under {root} is 25.9 m, outside "
        "the 0.3-15 m of indoor scenes; set downstream.depth_unit=1e-4m (median 2.59 m)."
    )
    suite = NYUv2Suite(root=str(root), image_size=16, num_workers=0, depth_unit="1e-4m")
    suite.validate()
    full = suite.dev_set[0]["depth_full"][0]
    assert full[1:].unique().tolist() == [pytest.approx(2.59)] and (full[0] == 0).all()
    write_depth(root, "train", np.full((H, W), 3, dtype=np.uint16))  # whole metres
    assert NYUv2Dataset(root, "train", depth_unit="m")[0]["depth"].unique().tolist() == [3.0]
    with pytest.raises(
        DataError, match=r"is 0.0003 m, outside .*; set downstream.depth_unit=m \(median 3 m\)"
    ):
        NYUv2Dataset(root, "train", depth_unit="1e-4m").validate()
    with pytest.raises(ConfigError, match=r"downstream.depth_unit='cm' must be one of mm, 1e-4m, m"):
        NYUv2Dataset(root, "train", depth_unit="cm")


def test_validate_opens_every_png_and_checks_the_mat_depths(tmp_path):
    root = write_png_root(tmp_path / "nyu", n_train=3, n_test=2)
    NYUv2Dataset(root, "test").validate()  # the fixture's depths: 1-6 m
    (root / "test" / "depth" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"test/depth/0001.png is not a readable PNG"):
        NYUv2Dataset(root, "test").validate()
    Image.fromarray(np.zeros((H + 1, W), dtype=np.uint16)).save(root / "test" / "depth" / "0001.png")
    with pytest.raises(DataError, match=r"test/\{rgb,depth,label\}/0001.png differ in size"):
        NYUv2Dataset(root, "test").validate()
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / "test" / "label" / "0000.png")
    with pytest.raises(DataError, match=r"test/label/0000.png must be a single-channel PNG, got mode RGB"):
        NYUv2Dataset(root, "test").validate()
    mat = write_mat_root(tmp_path / "mat")
    NYUv2Dataset(mat, "train").validate()
    with h5py.File(mat / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["depths"][...] = f["depths"][...] * 1000  # millimetres in a file that must hold metres
    median = np.median(np.concatenate([expected(i - 1)[1].ravel() for i in TRAIN])) * 1000
    with pytest.raises(DataError) as err:
        NYUv2Dataset(mat, "train").validate()
    assert str(err.value) == (
        f"downstream.mat_file: the median depth of the first 3 train images under {mat} is {median:,.0f} m, outside "
        f"the 0.3-15 m of indoor scenes; NYUv2's labelled set {mat / 'nyu_depth_v2_labeled.mat'} holds depth in "
        "metres: is it that file?"
    )
