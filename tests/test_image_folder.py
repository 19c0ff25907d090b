"""The ImageNet-style image folder with pseudo-labels for MM-MAE pre-training (data/image_folder.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, smoke_values
from PIL import Image

from data.image_folder import ImageFolderDataModule
from data.scenes import RGB_MEAN, RGB_STD
from utils.errors import ConfigError, DataError

NUM_CLASSES = 6


def write_folder(root: Path, labels: Path, layout: dict[str, int], size=(40, 30), split_level=True) -> None:
    """``layout``: class -> images; each image's left half is class 1 (red, near), right half class 4 (blue, far),
    so an aligned crop keeps red <-> class 1 <-> small depth."""
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2, 0] = 250
    rgb[:, w // 2 :, 2] = 250
    semseg = np.full((h, w), 4, np.uint8)
    semseg[:, : w // 2] = 1
    depth = np.full((h, w), 60000, np.uint16)
    depth[:, : w // 2] = 10000
    for split in ("train", "val") if split_level else ("",):
        for cls, n in layout.items():
            for i in range(n if split != "val" else 1):
                rel = Path(split) / cls / f"img{i}.JPEG"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(root / rel, quality=95)
                for kind, arr in (("depth", depth), ("semseg", semseg)):
                    out = labels / kind / rel.with_suffix(".png")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(out)
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "pseudo_labels.json").write_text(json.dumps({"num_classes": NUM_CLASSES, "depth_scale": None}))


def datamodule(root: Path, labels: Path, **kw) -> ImageFolderDataModule:
    opts = dict(image_size=16, num_classes=NUM_CLASSES, batch_size=4, num_workers=0, depth_standardize=False)
    return ImageFolderDataModule(str(root), str(labels), **{**opts, **kw})


def test_batches_have_the_scenes_format_with_aligned_crops(tmp_path):
    write_folder(tmp_path / "img", tmp_path / "lab", {"cat": 3, "dog": 3})
    dm = datamodule(tmp_path / "img", tmp_path / "lab", crop_scale=(0.3, 1.0))
    assert dm.classes == ["cat", "dog"] and len(dm.train_set) == 6 and len(dm.val_set) == 2
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["rgb"].shape == (4, 3, 16, 16) and batch["rgb"].dtype == torch.float32
    assert batch["depth"].shape == (4, 1, 16, 16) and batch["depth"].dtype == torch.float32
    assert batch["semseg"].shape == (4, 16, 16) and batch["semseg"].dtype == torch.int64
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert set(batch["semseg"].unique().tolist()) <= {1, 4}  # nearest: no blended class ids
    red = batch["rgb"][:, 0] * RGB_STD + RGB_MEAN > 0.5
    near = batch["depth"][:, 0] < 0.5  # 10000 / 65535 vs 60000 / 65535
    is_one = batch["semseg"] == 1
    # the same crop and flip for every modality: away from the boundary they agree pixel by pixel
    assert (red == is_one).float().mean() > 0.9 and (near == is_one).float().mean() > 0.9
    val = next(iter(dm.val_dataloader()))
    assert sorted(val["label"].tolist()) == [0, 1]


def test_training_loader_resumes_mid_epoch_with_the_next_images(tmp_path):
    """The loader's state (in every checkpoint) holds the epoch and position: a new loader given it yields the
    images the interrupted one would have yielded next; another epoch draws another order."""
    write_folder(tmp_path / "img", tmp_path / "lab", {f"c{k}": 2 for k in range(6)})
    dm = datamodule(tmp_path / "img", tmp_path / "lab", batch_size=2, seed=3)
    straight = dm.train_dataloader()
    it = iter(straight)
    first = [next(it)["label"].tolist() for _ in range(2)]
    state = straight.state_dict()
    rest = [b["label"].tolist() for b in it]
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert [b["label"].tolist() for b in resumed] == rest and len(first + rest) == 6
    sampler = dm.train_dataloader().sampler
    epoch0 = sampler._order()
    sampler.set_epoch(1)
    assert sorted(epoch0) == sorted(sampler._order()) == list(range(12)) and epoch0 != sampler._order()


def test_flat_folder_holds_out_val_fraction_and_standardises_depth(tmp_path):
    write_folder(tmp_path / "img", tmp_path / "lab", {"a": 5, "b": 5}, split_level=False)
    dm = datamodule(
        tmp_path / "img", tmp_path / "lab", val_fraction=0.2, depth_standardize=True, depth_mean=4.0
    )
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    item = dm.val_set[0]
    assert abs(item["depth"].mean().item() - 4.0) < 1.0  # standardised then mapped to the model's scale
    smoke = datamodule(tmp_path / "img", tmp_path / "lab", **smoke_values("data", "imagenet_folder"))
    assert smoke.batch_size == 8 and smoke.samples_per_epoch <= 16


def test_user_errors_are_one_sentence_naming_the_path_or_key(tmp_path):
    root, labels = tmp_path / "img", tmp_path / "lab"
    with pytest.raises(DataError, match=str(root)):
        datamodule(root, labels)
    (root / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        datamodule(root, labels)
    write_folder(root, labels, {"cat": 2})
    (labels / "semseg" / "train" / "cat" / "img1.png").unlink()
    with pytest.raises(DataError, match="stage=pseudo_label") as err:
        datamodule(root, labels)
    assert "img1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.modalities names 'normals'"):
        datamodule(root, labels, modalities=["rgb", "normals"])
    assert len(datamodule(root, labels, num_classes=3, modalities=["rgb"]).train_set) == 2  # no labels needed
    with pytest.raises(ConfigError, match="data.num_classes=3"):
        datamodule(root, labels, num_classes=3)
    with pytest.raises(ConfigError, match="data.root"):
        ImageFolderDataModule(None, str(labels))


def test_a_class_id_beyond_num_classes_names_the_file(tmp_path):
    root, labels = tmp_path / "img", tmp_path / "lab"
    write_folder(root, labels, {"cat": 1})
    bad = labels / "semseg" / "train" / "cat" / "img0.png"
    Image.fromarray(np.full((30, 40), 9, np.uint8)).save(bad)
    (labels / "pseudo_labels.json").unlink()  # without metadata the check happens when the file is read
    dm = datamodule(root, labels)
    with pytest.raises(DataError, match=f"{bad} holds class id 9 >= data.num_classes={NUM_CLASSES}"):
        dm.train_set[0]


def test_plugs_into_experiment_mm_mae(tmp_path):
    cfg = compose_config(
        ["experiment=mm_mae", "data=imagenet_folder", "data.root=/r", "data.labels_root=/l"], tmp_path
    )
    assert cfg.data.num_classes == 150 and cfg.model.num_classes == 150
    assert cfg.model.image_size == cfg.data.image_size == 224 and cfg.data.depth_mean == cfg.model.depth_mean
