"""Table 2 on real data: classification on an ImageNet-style folder (finetune/image_folder_cls.py,
data/image_classification.py) and, with NYUv2, the three columns in one run (finetune/combined.py)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_pipeline, smoke_values
from PIL import Image
from test_vision_finetune import make_trainer

from finetune.image_folder_cls import ImageFolderClsSuite
from models.multimae import MultiMAE
from utils.errors import ConfigError, DataError

RED, BLUE = (230, 30, 30), (30, 30, 230)


def write_image(path: Path, colour, size=(24, 20), seed=0) -> None:
    """A noisy image of one colour (w x h), saved as JPEG or PNG by its suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_class_folder(root: Path, val: dict[str, list] | None = None) -> Path:
    """train/red: 4 red JPEGs, train/blue: 4 blue PNGs (sizes vary); val: class -> colours of its images
    (default: red gets 2 red images, blue 1 blue image)."""
    for i in range(4):
        write_image(root / "train" / "red" / f"n{i}.JPEG", RED, (24 + 4 * i, 20), seed=i)
        write_image(root / "train" / "blue" / f"n{i}.png", BLUE, (20, 18 + 2 * i), seed=10 + i)
    val = val or {"red": [RED, RED], "blue": [BLUE]}
    for cls, colours in val.items():
        for i, colour in enumerate(colours):
            write_image(root / "val" / cls / f"v{i}.JPEG", colour, (30, 22), seed=20 + i)
    return root


def tiny_backbone() -> MultiMAE:
    torch.manual_seed(0)
    return MultiMAE(
        image_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_dim=16, num_visible=4
    )


def suite(root: Path, **kw) -> ImageFolderClsSuite:
    opts = dict(
        image_size=16,
        crop_scale=(0.5, 1.0),
        protocol="linear_probe",
        tasks={"classification": {"epochs": 30, "lr": 0.05, "warmup_steps": 1}},
        batch_size=4,
        num_workers=0,
    )
    return ImageFolderClsSuite(root=str(root), **{**opts, **kw})


@pytest.mark.slow
def test_top1_is_scored_on_every_image_of_the_val_split(tmp_path):
    """The probe separates red from blue; top-1 counts the 3 validation images (not the 8 training images): 1.0
    on a validation split labelled like the training one, 0.0 when its class folders hold the other colour."""
    right = suite(write_class_folder(tmp_path / "right"))
    assert right.classes == ["blue", "red"] and len(right.train_set) == 8 and len(right.dev_set) == 3
    assert right.dev_set.targets == [0, 1, 1]
    item = right.dev_set[0]
    assert item["rgb"].shape == (3, 16, 16) and item["label"].item() == 0
    results = right.run(tiny_backbone(), make_trainer, tmp_path / "out")
    r = results["classification"]
    assert r["dev_rows"] == 3 and r["primary"] == "top1" and r["higher_is_better"] is True
    assert r["metrics"]["top1"] == pytest.approx(1.0)
    assert right.extra_results["image_folder_cls"] == {
        "root": str(tmp_path / "right"),
        "classes": 2,
        "train_images": 8,
        "val_images": 3,
    }
    swapped = suite(write_class_folder(tmp_path / "swapped", val={"red": [BLUE, BLUE], "blue": [RED]}))
    r = swapped.run(tiny_backbone(), make_trainer, tmp_path / "out2")["classification"]
    assert r["dev_rows"] == 3 and r["metrics"]["top1"] == pytest.approx(0.0)


def test_val_split_keeps_the_training_classes_and_limits_draw_across_classes(tmp_path):
    root = write_class_folder(tmp_path / "img", val={"red": [RED]})  # val lacks the class blue
    s = suite(root, train_size=4, dev_size=None)
    assert s.dev_set.targets == [1] and s.dev_set.classes == ["blue", "red"]
    assert len(s.train_set) == 4 and set(s.train_set.targets) == {0, 1}  # a draw, not the first class
    smoke = suite(root, **smoke_values("downstream", "image_folder_cls"), train_samples=[64])
    assert smoke.sizes == [8] and smoke.batch_size == 8


def test_folder_errors_are_one_sentence_naming_the_path_or_key(tmp_path):
    with pytest.raises(ConfigError, match=r"downstream\.root is not set"):
        ImageFolderClsSuite(root=None)
    root = write_class_folder(tmp_path / "img")
    with pytest.raises(DataError, match=str(root / "test")):
        suite(root, val_dir="test")
    write_image(root / "val" / "ILSVRC2012_val_00000001.JPEG", RED)
    with pytest.raises(DataError, match="valprep") as err:
        suite(root)
    assert "ILSVRC2012_val_00000001.JPEG" in str(err.value) and "\n" not in str(err.value)
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    write_image(root / "val" / "green" / "v.png", (0, 200, 0))
    with pytest.raises(
        DataError, match=f"{root / 'val' / 'green'} is a class folder that the training split"
    ):
        suite(root)
    (root / "val" / "green" / "v.png").unlink()
    (root / "val" / "green").rmdir()
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=f"{root / 'train' / 'empty'} holds no images"):
        suite(root)
    (root / "train" / "empty").rmdir()
    bad = root / "val" / "red" / "v0.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"{bad} is not a readable image"):
        suite(root).dev_set[1]
    with pytest.raises(DataError, match=f"{bad} is not a readable image"):  # at start-up, before pre-training
        suite(root).validate()
    with pytest.raises(ConfigError, match=r"downstream\.tasks\.depth"):
        suite(root, tasks={"depth": {}})


@pytest.mark.slow
def test_table2_real_runs_the_three_columns_in_one_run(tmp_path):
    """experiment=mm_mae data=imagenet_folder downstream=table2_real: classification on the pre-training folder's
    val split, segmentation and depth on NYUv2 (test images of two sizes), Figure 3 of the NYUv2 test images."""
    from test_image_folder import NUM_CLASSES as FOLDER_CLASSES
    from test_image_folder import write_folder
    from test_nyuv2 import write_png_split

    write_folder(tmp_path / "img", tmp_path / "lab", {"cat": 3, "dog": 3})  # val: 1 image per class
    nyu = tmp_path / "nyu"
    write_png_split(nyu, "train", [(16, 20), (18, 18), (20, 16)])
    write_png_split(nyu, "test", [(12, 20), (15, 18)])
    overrides = [
        "experiment=mm_mae",
        "data=imagenet_folder",
        f"data.root={tmp_path / 'img'}",
        f"data.labels_root={tmp_path / 'lab'}",
        "data.image_size=16",
        f"data.num_classes={FOLDER_CLASSES}",
        "model.num_visible=8",
        "downstream=table2_real",
        f"downstream.suites.nyuv2.root={nyu}",
        "debug=smoke",
        "logger=none",
        "print_table=false",
    ]
    results = run_pipeline(overrides, tmp_path / "run")
    down = results["downstream"]
    assert list(down) == ["classification", "segmentation", "depth"]
    assert down["classification"]["dev_rows"] == 2 and down["segmentation"]["dev_rows"] == 2
    for r in down.values():
        assert 0.0 <= r["metrics"][r["primary"]] <= 1.0 and all(
            math.isfinite(v) for v in r["metrics"].values()
        )
    primary = [r["metrics"][r["primary"]] for r in down.values()]
    assert results["summary"]["worst"] == pytest.approx(min(primary))
    assert results["summary"]["average"] == pytest.approx(sum(primary) / 3)
    assert results["image_folder_cls"]["val_images"] == 2 and results["image_folder_cls"]["classes"] == 2
    assert results["nyuv2"] == {"train_images": 3, "test_images": 2}
    assert results["protocol"]["protocol"] == "finetune"
    assert Path(results["figure3"]["png"]).exists() and (tmp_path / "run" / "seg_pred.npy").exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["downstream"].keys() == down.keys()
    # a suite's error names its key under downstream.suites.<name>, before any pre-training
    missing = [o for o in overrides if not o.startswith("downstream.suites.nyuv2.root")]
    with pytest.raises(ConfigError, match=r"downstream\.suites\.nyuv2\.root is not set"):
        run_pipeline(missing, tmp_path / "run2")
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        run_pipeline([*overrides, f"downstream.suites.nyuv2.root={tmp_path / 'nowhere'}"], tmp_path / "run3")


def test_combined_suite_validates_every_suite_naming_its_keys(tmp_path):
    """CombinedSuite.validate() runs each suite's start-up check; a failure names the suite's key."""
    from finetune.combined import CombinedSuite

    root = write_class_folder(tmp_path / "img")
    CombinedSuite(suites={"a": suite(root)}).validate()  # readable folders: nothing raised
    (root / "train" / "blue" / "n0.png").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="n0.png is not a readable image"):
        CombinedSuite(suites={"a": suite(root)}).validate()

    class Failing(ImageFolderClsSuite):
        def validate(self):
            raise ConfigError("downstream.root points to a broken folder.")

    broken = Failing.__new__(Failing)
    broken.__dict__.update(suite(root).__dict__)
    with pytest.raises(ConfigError, match=r"downstream\.suites\.b\.root points"):
        CombinedSuite(suites={"b": broken}).validate()
