"""MM-MAE's context-free reference (pretrain/mm_mae.py): each modality's loss of the best prediction that sees no
context, the default reference of `balancer=minimax_ref` and `upstream_eval`'s context gain."""

import numpy as np
import pytest
import torch
from helpers import run_pipeline, smoke_values

from data.scenes import SceneDataset, ScenesDataModule
from models.multimae import MultiMAE
from pretrain.mm_mae import context_free_predictor, context_free_reference

SMALL = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2)
TASKS = ("rgb", "depth", "semseg")


def scenes(n: int, image_size: int = 32, **options) -> dict[str, torch.Tensor]:
    data = SceneDataset(n, "train", seed=3, image_size=image_size, **options)
    items = [data[i] for i in range(n)]
    return {m: torch.stack([x[m] for x in items]) for m in TASKS}


def numpy_reference(inputs: dict[str, torch.Tensor], patch: int = 8, depth_mean=4.0, depth_std=2.0) -> dict:
    """The context-free loss from its definition: per position over the scenes, the mean squared deviation of
    the per-patch normalised RGB from its mean, the mean absolute deviation of standardised depth from its
    median, the entropy of the class frequencies."""
    rgb = inputs["rgb"].double().numpy()
    s, c, h, w = rgb.shape
    patches = rgb.reshape(s, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(s, h // patch, w // patch, -1)
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, ddof=1, keepdims=True)
    normed = (patches - mean) / np.sqrt(var + 1e-6)
    depth = (inputs["depth"].double().numpy() - depth_mean) / depth_std
    semseg = inputs["semseg"].numpy()
    freq = np.stack([(semseg == k).mean(0) for k in range(10)])
    logs = np.log(np.where(freq > 0, freq, 1.0))
    return {
        "rgb": float(normed.var(0).mean()),
        "depth": float(np.abs(depth - np.median(depth, axis=0)).mean()),
        "semseg": float(-(freq * logs).sum(0).mean()),
    }


def test_reference_is_the_context_free_loss_by_definition():
    inputs = scenes(6)  # an even count: numpy's median averages the two middle values, torch takes the lower
    model = MultiMAE(**SMALL)
    got = context_free_reference(model, inputs, chunk=4)  # two chunks, the second one short
    want = numpy_reference(inputs)
    for t in TASKS:
        assert got[t] == pytest.approx(want[t], rel=1e-5, abs=1e-5), t
    assert 0.3 < got["rgb"] < 1 and got["depth"] > 0.1 and got["semseg"] > 0.1


def test_a_model_predicting_the_context_free_predictor_scores_the_reference_through_its_own_loss():
    inputs = scenes(5)
    model = MultiMAE(**SMALL)
    predictor = context_free_predictor(
        model, {m: x if m == "semseg" else x.double() for m, x in inputs.items()}
    )
    for t, decoder in model.decoders.items():  # each decoder outputs its task's context-free predictor
        decoder.forward = lambda encoded, *args, p=predictor[t]: p.float().expand(encoded.shape[0], -1, -1)
    hidden = torch.zeros(5, 3, model.num_patches, dtype=torch.bool)  # every patch masked, the loss sees all
    losses = model.losses(model(inputs, visible=hidden), inputs)
    reference = context_free_reference(model, inputs)
    for t in TASKS:
        total, count = losses[t]
        assert float(total) / float(count) == pytest.approx(reference[t], rel=1e-5), t
    # any other constant prediction does worse: the reference is the best loss without context
    for t, decoder in model.decoders.items():
        decoder.forward = lambda encoded, *args, p=predictor[t]: (p.float() + 0.05).expand(
            encoded.shape[0], -1, -1
        )
    worse = model.losses(model(inputs, visible=hidden), inputs)
    for t in ("rgb", "depth"):
        assert float(worse[t][0]) / float(worse[t][1]) > reference[t] + 1e-4, t


def test_depth_relief_raises_only_the_depth_reference():
    model = MultiMAE(**SMALL)
    flat = context_free_reference(model, scenes(16))
    relief = context_free_reference(model, scenes(16, depth_relief=0.5))
    assert relief["depth"] > flat["depth"] + 0.2  # measured 64 px, 256 scenes: 0.43 -> 1.22
    assert relief["rgb"] == pytest.approx(flat["rgb"]) and relief["semseg"] == pytest.approx(flat["semseg"])


@pytest.mark.slow
def test_minimax_ref_on_mm_mae_uses_the_reference_unless_balancer_reference_is_set(tmp_path):
    common = ["experiment=mm_mae", "debug=smoke", "logger=none", "stage=pretrain", "seed=0"]
    runs = {
        name: run_pipeline([*common, *extra], tmp_path / name)
        for name, extra in {
            "minimax": ["balancer=minimax"],
            "minimax_ref": ["balancer=minimax_ref"],
            "zero_ref": ["balancer=minimax_ref", "balancer.reference=[0,0,0]"],
        }.items()
    }
    dm = ScenesDataModule(**smoke_values("data", "scenes", seed=0))
    items = [dm.train_set[i] for i in range(len(dm.train_set))]  # 16 smoke scenes < module.reference_scenes
    model = MultiMAE()
    want = context_free_reference(model, {m: torch.stack([x[m] for x in items]) for m in TASKS})
    ev = runs["minimax_ref"]["upstream_eval"]
    for t in TASKS:
        assert ev["tasks"][t]["reference"] == pytest.approx(want[t], rel=1e-9)
        assert ev["tasks"][t]["context_gain"] == pytest.approx(want[t] - ev["tasks"][t]["loss"])
    assert ev["min_context_gain"] == min(row["context_gain"] for row in ev["tasks"].values())
    final = {name: r["weights"]["final"] for name, r in runs.items()}
    # the excess loss moves the weights; a zero reference is plain minimax again, step for step
    assert max(abs(final["minimax_ref"][t] - final["minimax"][t]) for t in TASKS) > 1e-3
    for t in TASKS:
        assert final["zero_ref"][t] == pytest.approx(final["minimax"][t], rel=1e-6)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_reference_scenes_must_be_a_count(bad):
    from functools import partial

    from pretrain.balancers import Minimax
    from pretrain.mm_mae import MMMAEPretraining
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"module.reference_scenes=.* must be an integer >= 0"):
        MMMAEPretraining(MultiMAE(**SMALL), partial(Minimax), reference_scenes=bad)
