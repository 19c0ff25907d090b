"""Downstream heads, metrics and the suite of MM-MAE (finetune/vision.py)."""

import math
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from helpers import smoke_values

from finetune.figures import sweep_figure
from finetune.metrics import DepthMetrics
from finetune.vision import DenseHead, VisionFinetune, VisionSuite
from models.multimae import MultiMAE
from pretrain.balancers import Minimax
from pretrain.mm_mae import MMMAEPretraining
from utils.errors import ConfigError

SMALL = dict(image_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_dim=32, decoder_heads=2)


def tiny_backbone() -> MultiMAE:
    torch.manual_seed(0)
    return MultiMAE(**SMALL, num_visible=24)


def test_depth_metrics_by_hand():
    metric = DepthMetrics()
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 7.0])
    gt = torch.tensor([1.0, 1.0, 3.0, 5.0, 0.0])  # the last pixel has no depth: ignored
    metric.update(pred[:2], gt[:2])  # accumulates over batches
    metric.update(pred[2:], gt[2:])
    out = metric.compute()
    # ratios max(p/g, g/p): 1, 2, 1, 1.25 -> below 1.25: 2 of 4 (1.25 itself is not below)
    assert out["delta_1"].item() == pytest.approx(0.5)
    assert out["abs_rel"].item() == pytest.approx((0 + 1 + 0 + 0.2) / 4)
    assert out["rmse"].item() == pytest.approx(math.sqrt((0 + 1 + 0 + 1) / 4))


def test_miou_matches_a_hand_computation_in_one_process():
    assert not torch.distributed.is_initialized()
    module = VisionFinetune(tiny_backbone(), "segmentation", num_classes=4)
    miou = module.metrics["miou"]
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, size=(2, 8, 8))  # class 3 never occurs in the target...
    pred = np.where(rng.random((2, 8, 8)) < 0.7, target, rng.integers(0, 3, size=(2, 8, 8)))
    pred[0, 0, 0] = 3  # ...and once in the prediction: IoU 0 for class 3, which counts
    for i in range(2):
        miou.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    ious = []
    for c in range(4):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(inter / union)
    assert miou.compute().item() == pytest.approx(float(np.mean(ious)), abs=1e-6)
    assert len(ious) == 4


def test_dense_head_maps_tokens_to_pixels():
    head = DenseHead(dim=16, grid=(2, 3), patch_size=4, out_channels=5, hidden=8)
    out = head(torch.randn(2, 6, 16))
    assert out.shape == (2, 5, 8, 12)
    # a patch's pixels depend on its own token and its 3x3 neighbours only
    tokens = torch.randn(1, 6, 16)
    changed = tokens.clone()
    changed[0, 0] += 1.0
    diff = (head(changed) - head(tokens)).abs().sum(1)[0]
    assert diff[:4, :4].sum() > 0 and diff[:4, 8:].sum() == 0


def test_finetune_uses_rgb_only_with_every_patch_visible():
    module = VisionFinetune(tiny_backbone(), "depth")
    assert set(module.encoder.input_adapters) == {"rgb"} and len(module.encoder.decoders) == 0
    lengths = []
    module.encoder.blocks[0].register_forward_hook(lambda m, inp, out: lengths.append(inp[0].shape[1]))
    depth = module({"rgb": torch.randn(2, 3, 64, 64)})
    assert lengths == [1 + 64]
    assert depth.shape == (2, 64, 64) and (depth > 0).all()


def test_finetune_copies_the_pretrained_encoder():
    backbone = tiny_backbone()
    module = VisionFinetune(backbone, "classification")
    torch.testing.assert_close(module.encoder.blocks[0].mlp.fc1.weight, backbone.blocks[0].mlp.fc1.weight)
    with torch.no_grad():
        module.encoder.blocks[0].mlp.fc1.weight.add_(1.0)
    assert not torch.allclose(module.encoder.blocks[0].mlp.fc1.weight, backbone.blocks[0].mlp.fc1.weight)


def make_trainer(max_epochs=None, max_steps=None, name="task"):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs if max_epochs is not None else -1,
        max_steps=max_steps if max_steps is not None else -1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_suite_runs_every_task_and_saves_the_figure(tmp_path):
    pretrained = MMMAEPretraining(tiny_backbone(), partial(Minimax), {})
    suite = VisionSuite(**smoke_values("downstream", "scenes"))
    results = suite.run(pretrained, make_trainer, tmp_path)
    assert set(results) == {"classification", "segmentation", "depth"}
    for name, r in results.items():
        assert r["higher_is_better"] is True
        assert r["primary"] in r["metrics"] and math.isfinite(r["metrics"][r["primary"]])
        assert 0.0 <= r["metrics"][r["primary"]] <= 1.0, name
    assert (tmp_path / "figure3_minimax.png").exists()
    pred = np.load(tmp_path / "seg_pred.npy")
    data = np.load(tmp_path / "figure3_data.npz")
    assert pred.shape == data["gt"].shape == (4, 64, 64)
    assert data["rgb"].shape == (4, 64, 64, 3)
    assert suite.extra_results["figure3"]["png"].endswith("figure3_minimax.png")
    # the sweep-level figure puts runs side by side from these files
    (tmp_path / "results.json").write_text('{"balancer": "minimax"}')
    other = tmp_path / "other"
    other.mkdir()
    for name in ("figure3_data.npz", "results.json"):
        (other / name).write_bytes((tmp_path / name).read_bytes())
    np.save(other / "seg_pred.npy", np.zeros_like(pred))
    assert sweep_figure([tmp_path, other], tmp_path / "sweep.png").stat().st_size > 1000


def test_classification_learns_from_a_short_fine_tuning(tmp_path):
    """A few hundred scenes and a few epochs lift top-1 clearly above chance (1/8)."""
    torch.manual_seed(0)
    suite = VisionSuite(
        tasks={
            "classification": {"epochs": 6, "lr": 2e-3, "warmup_steps": 5},
            "segmentation": {"enabled": False},
            "depth": {"enabled": False},
        },
        train_size=256,
        dev_size=128,
        batch_size=32,
    )
    results = suite.run(tiny_backbone(), make_trainer, tmp_path)
    assert results["classification"]["metrics"]["top1"] > 0.3


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"tasks": {"detection": {}}}, "downstream.tasks.detection"),
        ({"tasks": {"depth": {"epochs": 0}}}, "downstream.tasks.depth.epochs"),
        ({"tasks": {"depth": {"learning_rate": 1}}}, "downstream.tasks.depth.learning_rate"),
        ({"input_modalities": ["normals"]}, "downstream.input_modalities"),
    ],
)
def test_bad_suite_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        VisionSuite(**kwargs)


def test_image_size_mismatch_names_both_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"downstream\.image_size=32 differs from model\.image_size=64"):
        VisionSuite(image_size=32, **smoke_values("downstream", "scenes")).run(
            tiny_backbone(), make_trainer, tmp_path
        )
