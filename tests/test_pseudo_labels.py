"""Pseudo-labelling an image folder with transformers models (data/pseudo_labels.py), on tiny random models."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_pipeline
from PIL import Image

from data.pseudo_labels import PseudoLabeler, encode_depth
from utils.errors import ConfigError, DataError

NUM_SEG_CLASSES = 5
#: (class folder, (width, height), file name): different sizes and formats, with a split level
IMAGES = [
    ("train/cat", (40, 30), "a.JPEG"),
    ("train/cat", (33, 50), "b.png"),
    ("train/dog", (64, 48), "c.jpg"),
    ("val/dog", (36, 36), "d.JPEG"),
]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """A DPT depth estimator and a SegFormer segmenter, randomly initialised and tiny, saved locally."""
    from transformers import (
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessor,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    depth = DPTForDepthEstimation(
        DPTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=32,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[8, 8, 16, 16],
            fusion_hidden_size=16,
        )
    )
    seg = SegformerForSemanticSegmentation(
        SegformerConfig(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=16,
            num_labels=NUM_SEG_CLASSES,
        )
    )
    depth.save_pretrained(out / "depth")
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out / "depth")
    seg.save_pretrained(out / "seg")
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out / "seg")
    return out / "depth", out / "seg"


def make_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, (w, h), name in IMAGES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / folder / name)


def labeler(root: Path, out: Path, models: tuple[Path, Path], **kw) -> PseudoLabeler:
    return PseudoLabeler(
        str(root),
        str(out),
        depth_model=str(models[0]),
        segmentation_model=str(models[1]),
        batch_size=3,
        segmentation_short_side=64,
        local_files_only=True,
        progress=False,
        **kw,
    )


def test_labels_are_aligned_16_bit_depth_and_class_ids_and_a_rerun_skips_them(tmp_path, tiny_models):
    root, out = tmp_path / "images", tmp_path / "labels"
    make_images(root)
    pl = labeler(root, out, tiny_models)
    assert pl.run() == len(IMAGES)
    for folder, (w, h), name in IMAGES:
        stem = Path(folder) / Path(name).with_suffix(".png")
        depth = np.asarray(Image.open(out / "depth" / stem))
        semseg = np.asarray(Image.open(out / "semseg" / stem))
        assert depth.shape == (h, w) and depth.dtype == np.uint16
        assert semseg.shape == (h, w) and semseg.dtype == np.uint8
        assert depth.max() == 65535  # depth_scale null: each map divided by its own maximum
        assert semseg.max() < NUM_SEG_CLASSES
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no temporary file left
    meta = json.loads((out / "pseudo_labels.json").read_text())
    assert meta["num_classes"] == NUM_SEG_CLASSES and meta["depth_scale"] is None

    # a second run labels nothing and touches no file
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = labeler(root, out, tiny_models)
    assert again.run() == 0 and again.images_labelled == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes

    # an interrupted run (one label missing) resumes with exactly that image
    (out / "semseg" / "train" / "dog" / "c.png").unlink()
    assert labeler(root, out, tiny_models).run() == 1
    assert (out / "semseg" / "train" / "dog" / "c.png").is_file()


def test_other_models_cannot_mix_into_an_existing_label_folder(tmp_path, tiny_models):
    root, out = tmp_path / "images", tmp_path / "labels"
    make_images(root)
    out.mkdir()
    meta = {
        "depth_model": str(tiny_models[0]),
        "segmentation_model": str(tiny_models[1]),
        "depth_scale": None,
    }
    (out / "pseudo_labels.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="depth_scale"):
        labeler(root, out, tiny_models, depth_scale=1000.0).run()
    with pytest.raises(ConfigError, match="outside"):
        labeler(root, root / "labels", tiny_models)


def test_a_mask2former_segmenter_labels_through_the_universal_segmentation_class(tmp_path, tiny_models):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        num_queries=4,
        encoder_layers=1,
        decoder_layers=2,
        dim_feedforward=32,
        encoder_feedforward_dim=32,
        num_attention_heads=2,
        num_labels=7,
        use_pretrained_backbone=False,
    )
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(tmp_path / "m2f")
    Mask2FormerImageProcessor().save_pretrained(tmp_path / "m2f")
    root = tmp_path / "images"
    make_images(root)
    (root / "val").rename(tmp_path / "val")  # three images suffice
    out = tmp_path / "labels"
    assert labeler(root, out, (tiny_models[0], tmp_path / "m2f")).run() == 3
    for folder, (w, h), name in IMAGES[:3]:
        semseg = np.asarray(Image.open(out / "semseg" / folder / Path(name).with_suffix(".png")))
        assert semseg.shape == (h, w) and semseg.max() < 7
    assert json.loads((out / "pseudo_labels.json").read_text())["num_classes"] == 7


def test_fixed_depth_scale_encoding():
    depth = np.array([[0.0, 1.5], [-1.0, 100.0]])
    np.testing.assert_array_equal(encode_depth(depth, 1000.0), [[0, 1500], [0, 65535]])
    np.testing.assert_array_equal(encode_depth(depth, None), [[0, 983], [0, 65535]])


def test_missing_or_empty_image_root_fails_with_one_sentence_naming_it(tmp_path, tiny_models):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")) as err:
        labeler(tmp_path / "nowhere", tmp_path / "out", tiny_models).run()
    assert "\n" not in str(err.value)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        labeler(tmp_path / "empty", tmp_path / "out", tiny_models).run()


def test_a_model_that_cannot_be_loaded_fails_with_one_sentence_naming_it(tmp_path, tiny_models):
    make_images(tmp_path / "images")
    pl = labeler(tmp_path / "images", tmp_path / "out", (tmp_path / "no-model", tiny_models[1]))
    with pytest.raises(DataError, match="pseudo_label.depth_model=.*no-model") as err:
        pl.run()
    assert "\n" not in str(err.value)


def test_stage_pseudo_label_runs_from_the_config_group(tmp_path, tiny_models):
    root, out = tmp_path / "images", tmp_path / "labels"
    make_images(root)
    result = run_pipeline(
        [
            "stage=pseudo_label",
            "pseudo_label=dpt_mask2former",
            f"pseudo_label.image_root={root}",
            f"pseudo_label.out_root={out}",
            f"pseudo_label.depth_model={tiny_models[0]}",
            f"pseudo_label.segmentation_model={tiny_models[1]}",
            "pseudo_label.local_files_only=true",
            "pseudo_label.segmentation_short_side=64",
            "pseudo_label.progress=false",
        ],
        tmp_path / "run",
    )
    assert result is None
    assert len(list((out / "depth").rglob("*.png"))) == len(IMAGES)
    assert len(list((out / "semseg").rglob("*.png"))) == len(IMAGES)


def test_a_full_disk_while_labelling_fails_with_one_sentence_and_the_next_run_completes(
    tmp_path, tiny_models, monkeypatch
):
    import errno
    import subprocess
    import sys
    import time

    import utils.atomic as atomic

    root, out = tmp_path / "images", tmp_path / "labels"
    make_images(root)
    real_save, calls = Image.Image.save, []

    def full_on_second_label(self, fp, format=None, **kw):
        calls.append(Path(fp))
        if len(calls) == 2:  # the first label is written, the second fills the disk half-way
            Path(fp).write_bytes(b"\x89PNG\r\n half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, format, **kw)

    monkeypatch.setattr(Image.Image, "save", full_on_second_label)
    with pytest.raises(DataError) as err:
        labeler(root, out, tiny_models).run()
    monkeypatch.undo()
    msg = str(err.value)
    (written,) = [p for p in out.rglob("*.png")]
    failed = out / "semseg" / written.relative_to(out / "depth")
    assert msg == (
        f"the disk is full (No space left on device) while writing the pseudo-label {failed}: "
        "free some space or write the labels to another disk with pseudo_label.out_root=<folder>."
    )
    assert not failed.exists() and not [p for p in out.rglob("*") if ".tmp" in p.name]

    # a run killed while writing leaves a temporary label; the next run removes it (not a live process's)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = out / "depth" / "train" / "dog" / f".c.png.tmp-{atomic._host()}-{proc.pid}-{time.time_ns()}"
    live = out / "depth" / "train" / "dog" / f".x.png.tmp-{atomic._host()}-{os.getpid()}-{time.time_ns()}"
    for temp in (dead, live):
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(b"\x89PNG half")
    assert labeler(root, out, tiny_models).run() == len(IMAGES)  # the image with one label is redone too
    assert not dead.exists() and live.exists()
    for folder, (w, h), name in IMAGES:
        for kind in ("depth", "semseg"):
            assert np.asarray(Image.open(out / kind / folder / Path(name).with_suffix(".png"))).shape == (
                h,
                w,
            )
