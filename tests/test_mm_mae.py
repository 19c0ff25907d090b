"""MM-MAE pre-training module (pretrain/mm_mae.py) and the end-to-end run of `experiment=mm_mae`."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import run_cli
from oracles import gradnorm_first_logit_grad

from models.multimae import MultiMAE
from pretrain.balancers import DBMTL, ExcessMTL, GradientAggregator, GradNorm, NoBalancing
from pretrain.mm_mae import ENCODER_FILE, ENCODER_META, MMMAEPretraining
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2)


def make_module(balancer=NoBalancing, **model_kwargs) -> MMMAEPretraining:
    torch.manual_seed(0)
    model = MultiMAE(**{**SMALL, "num_visible": 12, **model_kwargs})
    return MMMAEPretraining(model=model, balancer=partial(balancer), aggregation={})


def make_batch(batch: int = 4) -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "rgb": torch.randn(batch, 3, 32, 32, generator=g),
        "depth": torch.rand(batch, 1, 32, 32, generator=g) * 8 + 0.5,
        "semseg": torch.randint(0, 10, (batch, 32, 32), generator=g),
        "label": torch.zeros(batch, dtype=torch.long),
    }


def test_training_step_balances_the_three_modality_losses_of_one_pass():
    module = make_module()
    assert module.aggregator.task_names == ["rgb", "depth", "semseg"]
    batch = make_batch()
    calls = []
    module.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(5)
    loss = module.training_step(batch, 0)
    assert len(calls) == 1  # one encoder pass for all three tasks
    torch.manual_seed(5)
    inputs = {k: batch[k] for k in ("rgb", "depth", "semseg")}
    out = module.model(inputs)
    per_task = [s / c for s, c in module.model.losses(out, inputs).values()]
    torch.testing.assert_close(loss, sum(per_task) / 3)  # `none`: the mean of the per-element means
    loss.backward()
    assert module.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "balancer",
    [
        partial(GradNorm, mode="shared_params"),
        partial(GradNorm, mode="features"),
        partial(GradientAggregator, method="upgrad", mode="features"),
        partial(GradientAggregator, method="mgda", mode="features"),
    ],
    ids=["gradnorm-shared_params", "gradnorm-features", "upgrad", "mgda"],
)
def test_gradient_balancers_get_shared_params_and_features(balancer):
    """The gradient-based balancers use the per-task gradients of this step: GradNorm's update of its logits
    is the one its equation gives for the task-gradient norms on the shared parameters or the features
    (computed here by hand); an aggregator's weighting sees the Gramian of the per-task gradients w.r.t. the features."""
    module = make_module(balancer=balancer)
    b = module.aggregator.balancer
    seen = []
    if isinstance(b, GradientAggregator):
        b.weighting.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    torch.manual_seed(3)
    loss = module.training_step(make_batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    weights = torch.tensor(list(module.aggregator.recent[-1]["weight"].values()))
    assert torch.isclose(weights.sum(), torch.tensor(1.0)) and (weights > 0).all()

    torch.manual_seed(3)  # the same step again, by hand: the same token split, the same losses
    inputs = module._inputs(make_batch())
    out = module.model(inputs)
    losses = [s / c for s, c in module.model.losses(out, inputs).values()]
    if isinstance(b, GradNorm):
        params = [p for p in module.model.shared_params() if p.requires_grad]
        params = params if b.mode == "shared_params" else [out.features]
        norms = []
        for task_loss in losses:
            grads = torch.autograd.grad(task_loss, params, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
        n = torch.stack(norms)
        # first step: r_t = 1, target = mean_t G_t; d/dp_t sum_s |G_s - target| with G_s = softmax(p)_s n_s
        expected = torch.tensor(gradnorm_first_logit_grad(n.tolist()), dtype=torch.float64)
        torch.testing.assert_close(b.logits.grad.double(), expected, rtol=1e-3, atol=1e-7)
        assert b.logits.grad[n.argmax()] > 0 > b.logits.grad[n.argmin()]  # toward equal weighted norms
    else:
        J = torch.stack(
            [torch.autograd.grad(v, out.features, retain_graph=True)[0].flatten() for v in losses]
        )
        gramian = (J @ J.T).double()
        (used,) = seen
        torch.testing.assert_close(used.double(), gramian, rtol=1e-3, atol=1e-10)
        ref = type(b.weighting)()(gramian).float()
        torch.testing.assert_close(weights, ref / ref.sum(), rtol=1e-3, atol=1e-6)
        if b.method == "mgda":  # min-norm: the task with the smallest gradient weighs most
            assert weights.argmax() == gramian.diagonal().argmin() and weights.max() > 0.5


@pytest.mark.parametrize(
    "balancer",
    [partial(ExcessMTL, mode="shared_params"), partial(DBMTL, beta=0.9, mode="features")],
    ids=["excessmtl", "dbmtl"],
)
def test_excess_risk_and_dual_balancing_see_this_steps_task_gradients(balancer):
    """ExcessMTL's first excess-risk estimates are sum_i g_i^2 / sqrt(g_i^2 + 1e-7) of each task's gradient on
    the shared parameters; DB-MTL's first average is (1 - beta) times each task's gradient of log L_t w.r.t.
    the encoder features, summed over the batch and tokens, and its weights are proportional to
    max_s norm(ghat_s) / norm(ghat_t) / L_t. Both computed here by hand from the same step."""
    module = make_module(balancer=balancer)
    b = module.aggregator.balancer
    torch.manual_seed(3)
    loss = module.training_step(make_batch(), 0)
    assert torch.isfinite(loss)
    weights = torch.tensor(list(module.aggregator.recent[-1]["weight"].values()))

    torch.manual_seed(3)  # the same step again, by hand
    inputs = module._inputs(make_batch())
    out = module.model(inputs)
    losses = [s / c for s, c in module.model.losses(out, inputs).values()]
    if isinstance(b, ExcessMTL):
        params = [p for p in module.model.shared_params() if p.requires_grad]
        excess = []
        for task_loss in losses:
            grads = torch.autograd.grad(task_loss, params, retain_graph=True, allow_unused=True)
            g = torch.cat([x.flatten() for x in grads if x is not None]).double()
            excess.append((g**2 / torch.sqrt(g**2 + 1e-7)).sum())
        torch.testing.assert_close(b.initial_excess.double(), torch.stack(excess), rtol=1e-3, atol=1e-9)
        torch.testing.assert_close(weights, torch.full((3,), 1 / 3))  # the first ratios are all 1
    else:
        rows = []
        for task_loss in losses:
            (g,) = torch.autograd.grad(task_loss, out.features, retain_graph=True)
            rows.append(g.reshape(-1, g.shape[-1]).sum(0).double() / float(task_loss))
        ghat = 0.1 * torch.stack(rows)
        torch.testing.assert_close(b.grad_ema.double(), ghat, rtol=1e-3, atol=1e-9)
        norms = ghat.norm(dim=1)
        w = norms.max() / norms / torch.tensor([float(v) for v in losses], dtype=torch.float64)
        torch.testing.assert_close(weights.double(), w / w.sum(), rtol=1e-3, atol=1e-7)


def test_optimizer_groups_cover_the_model_and_the_balancer():
    module = make_module(balancer=GradNorm)
    optimizer = module.configure_optimizers()["optimizer"]
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in module.model.parameters()} <= in_groups
    assert id(module.aggregator.balancer.logits) in in_groups
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(module.model.global_token) in no_decay and id(module.model.norm.weight) in no_decay
    assert id(module.model.blocks[0].attn.qkv.weight) not in no_decay


def test_a_modality_the_data_does_not_provide_names_the_key():
    module = make_module()
    batch = make_batch()
    del batch["semseg"]
    with pytest.raises(
        ConfigError, match=r"model\.modalities names 'semseg', which the data does not provide"
    ):
        module.training_step(batch, 0)


def test_export_pretrained_loads_into_timm(tmp_path):
    module = make_module()
    module.export_pretrained(tmp_path)
    meta = json.loads((tmp_path / ENCODER_META).read_text())
    vit = timm.create_model(meta["timm_name"], pretrained=False, **meta["timm_kwargs"])
    result = vit.load_state_dict(torch.load(tmp_path / ENCODER_FILE), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    rgb = make_batch()["rgb"]
    vit.eval()
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(rgb), module.model.forward_features(rgb))
    assert sorted(meta["keys"]) == sorted(vit.state_dict())


@pytest.mark.slow
def test_end_to_end_smoke_run_writes_results_figure_and_encoder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["experiment=mm_mae", "debug=smoke", "logger=csv", "balancer=dwa", f"hydra.run.dir={run_dir}"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["experiment"] == "mm_mae" and results["balancer"] == "dwa"
    assert set(results["upstream"]) == {"rgb", "depth", "semseg"}
    down = results["downstream"]
    assert {k: v["primary"] for k, v in down.items()} == {
        "classification": "top1",
        "segmentation": "miou",
        "depth": "delta_1",
    }
    assert 0 <= down["segmentation"]["metrics"]["miou"] <= 1
    assert set(down["depth"]["metrics"]) == {"delta_1", "abs_rel", "rmse"}
    assert results["summary"]["worst_task"] in down
    assert (run_dir / "figure3_dwa.png").stat().st_size > 1000
    pred = np.load(run_dir / "seg_pred.npy")
    assert pred.shape == (4, 64, 64) and pred.max() < 10
    assert Path(results["pretrained_encoder"]["path"]).is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.patch_size=7"], "model.image_size=64 is not divisible by model.patch_size=7."),
        (
            ["data.modalities=[rgb,depth]", "model.modalities=[rgb,depth,semseg]"],
            "model.modalities names 'semseg'",
        ),
        (["model.num_classes=6"], "model.num_classes=6"),
    ],
)
def test_bad_input_ends_in_one_sentence_and_no_results(tmp_path, overrides, message):
    from hydra import compose, initialize_config_dir

    from runner.pipeline import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=mm_mae",
                "debug=smoke",
                "logger=none",
                f"paths.output_dir={tmp_path}",
                *overrides,
            ],
        )
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "results.json").exists()
