"""The GPU fast path, checked on the CPU: bf16 mixed precision for both experiments and every kind of balancer,
``model.compile=true``, and a fused optimizer where the parameters are on a GPU."""

import copy
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from data.pos_masking import PosMaskingCollator
from data.pos_tagging import IGNORE
from models.bert import PosBert
from models.compile import compiled
from models.multimae import MultiMAE
from pretrain import mm_mae, pos_bert
from pretrain.balancers import GradNorm
from pretrain.mm_mae import MMMAEPretraining
from pretrain.pos_bert import PosBertPretraining

CONF = Path(__file__).resolve().parents[1] / "conf"
BERT = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
MAE = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2,
           num_visible=12)  # fmt: skip


def balancer(name: str):
    """The ``num_tasks -> Balancer`` factory of ``conf/balancer/<name>.yaml``, as run.py builds it."""
    return instantiate(OmegaConf.load(CONF / "balancer" / f"{name}.yaml"))


def pos_batches(n: int = 3, bsz: int = 4, length: int = 24, vocab: int = 200) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    coll = PosMaskingCollator(pad_id=0, mask_id=4, vocab_size=vocab)
    batches = []
    for _ in range(n):
        examples = []
        for i in range(bsz):
            ids = [2, *torch.randint(5, vocab, (length - 2,), generator=g).tolist(), 3]
            pos = [IGNORE, *torch.randint(0, 10, (length - 2,), generator=g).tolist(), IGNORE]
            examples.append(
                {"input_ids": ids, "token_type_ids": [0] * length, "pos": pos, "nsp_label": i % 2}
            )
        batches.append(coll(examples))
    return batches


def mae_batches(n: int = 3, bsz: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(2)
    return [
        {
            "rgb": torch.randn(bsz, 3, 32, 32, generator=g),
            "depth": torch.rand(bsz, 1, 32, 32, generator=g) * 8 + 0.5,
            "semseg": torch.randint(0, 10, (bsz, 32, 32), generator=g),
            "label": torch.zeros(bsz, dtype=torch.long),
        }
        for _ in range(n)
    ]


def make(experiment: str, factory, **model_kwargs):
    torch.manual_seed(0)
    if experiment == "pos_bert":
        one_step = functools.partial(pos_bert.SCHEDULE, warmup_steps=1)
        module = PosBertPretraining(PosBert(**{**BERT, **model_kwargs}), factory, scheduler=one_step)
        return module, pos_batches()
    one_step = functools.partial(mm_mae.SCHEDULE, warmup_steps=1)
    module = MMMAEPretraining(MultiMAE(**{**MAE, **model_kwargs}), factory, scheduler=one_step)
    return module, mae_batches()


def fit(module, batches, steps: int, precision: str = "32-true") -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("experiment", ["pos_bert", pytest.param("mm_mae", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "name",
    [
        "minimax",
        "gradnorm",
        *(pytest.param(n, marks=pytest.mark.slow) for n in ("none", "uncertainty", "upgrad")),
    ],
)
def test_bf16_mixed_pretraining_steps_are_finite_with_fp32_weights_that_sum_to_one(experiment, name):
    module, batches = make(experiment, balancer(name))
    seen = {"linear": set(), "losses": [], "weights": []}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen["linear"].add(out.dtype))
        for m in module.model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    agg = module.aggregator

    def record(_b, args, out):
        seen["losses"].append(args[0].detach().clone())
        seen["weights"].append(out.weights.clone())

    hooks.append(agg.balancer.register_forward_hook(record))
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    fit(module, batches, steps=2, precision="bf16-mixed")
    for h in hooks:
        h.remove()

    assert torch.bfloat16 in seen["linear"]  # autocast was on: the layers computed in bf16
    assert len(seen["weights"]) == 2
    for step, (losses, weights) in enumerate(zip(seen["losses"], seen["weights"])):
        assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
        assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
        if name != "uncertainty" or step == 0:  # Uncertainty's exp(-s_t)/T sum to 1 only at initialisation
            assert abs(float(weights.sum()) - 1.0) < 1e-5
    for h in agg.recent:
        assert all(v is None or torch.isfinite(torch.tensor(v)) for v in h["loss"].values())
    params = dict(module.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())  # mixed precision keeps fp32 master weights
    assert any(not torch.equal(before[k], p) for k, p in params.items())


@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
def test_the_optimizer_is_fused_where_the_parameters_are_on_a_gpu_only(experiment, monkeypatch):
    module, _ = make(experiment, GradNorm)
    asked = []

    def adamw(
        params, fused=None, **kwargs
    ):  # records the request; builds it unfused (this machine has no CUDA)
        asked.append(fused)
        return torch.optim.AdamW(params, **kwargs)

    module.make_optimizer = functools.partial(adamw, lr=1e-3)
    cpu = module.configure_optimizers()["optimizer"]
    monkeypatch.setattr(
        module, "_device", torch.device("cuda", 0)
    )  # what Lightning sets after moving it to a GPU
    module.configure_optimizers()
    assert asked == [None, True]  # torch's default on the CPU, the fused kernel on a GPU
    assert len(cpu.param_groups) == 3  # decay, no decay, GradNorm's logits
    module.make_optimizer = functools.partial(adamw, lr=1e-3, foreach=False)  # the config's own choice stays
    module.configure_optimizers()
    module.make_optimizer = functools.partial(
        torch.optim.RAdam, lr=1e-3
    )  # no fused kernel: not asked for one
    assert type(module.configure_optimizers()["optimizer"]) is torch.optim.RAdam
    assert asked == [None, True, None]


@functools.cache
def inductor_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here (no C++ compiler, ...), or None."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) + 1)
        fn(torch.ones(3))
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return f"torch.compile (inductor) does not work on this machine: {type(exc).__name__}: {exc}"[:300]
    return None


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
def test_compiled_encoder_trains_like_the_eager_one_with_a_gradient_balancer(experiment):
    """model.compile=true: the same losses and weights as eager (GradNorm back-propagates through the compiled
    encoder twice per step), the same state_dict keys, and deepcopies (the downstream suites') run eagerly."""
    if reason := inductor_unavailable():
        pytest.skip(reason)
    eager, batches = make(experiment, GradNorm)
    fast, _ = make(experiment, GradNorm, compile=True)
    encoder = fast.model.bert if experiment == "pos_bert" else fast.model.blocks
    assert fast.model.compiled and compiled(encoder) and not eager.model.compiled
    assert list(fast.state_dict()) == list(eager.state_dict())
    torch.manual_seed(1)
    fit(eager, batches, steps=2)
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(1)
    fit(fast, batches, steps=2)
    assert counters["stats"]["unique_graphs"] >= 1  # the encoder did run through torch.compile
    for a, b in zip(eager.aggregator.recent, fast.aggregator.recent):
        for task, loss in a["loss"].items():
            assert loss is None or abs(loss - b["loss"][task]) < 1e-3 * max(1.0, abs(loss))
        for task, w in a["weight"].items():
            assert abs(w - b["weight"][task]) < 1e-4
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(v, fast.model.state_dict()[k], atol=1e-4, rtol=1e-3)
    assert not compiled(copy.deepcopy(encoder))


@pytest.mark.parametrize(
    "experiment, family, encoder", [("pos_bert", "bert", "bert"), ("mm_mae", "mmmae", "blocks")]
)
def test_model_compile_compiles_the_encoder_in_place_and_is_off_by_default(
    tmp_path, monkeypatch, experiment, family, encoder
):
    """model.compile, as a run composes and builds the model: false in every size of the family (each inherits
    it), and then torch.compile is never called; model.compile=true compiles the encoder, and only it, in
    place, with AOTAutograd's donated buffers switched off (torch.compile recorded here, not run)."""
    import torch._functorch.config as functorch_config
    from helpers import compose_config

    calls = []

    def record(fn, *args, **kwargs):
        calls.append(fn.__self__)  # nn.Module.compile hands over its bound _call_impl
        return fn

    monkeypatch.setattr(torch, "compile", record)
    sizes = sorted(p.stem for p in (CONF / "model").glob(f"{family}_*.yaml"))
    assert len(sizes) >= 3
    for size in sizes:
        assert (
            compose_config([f"experiment={experiment}", f"model={size}"], tmp_path).model.compile is False
        ), size
    overrides = [f"experiment={experiment}", "debug=smoke"]
    with functorch_config.patch(donated_buffer=True):  # restored after: compile_in_place sets it process-wide
        eager = instantiate(compose_config(overrides, tmp_path).model)
        assert calls == [] and not eager.compiled and not compiled(getattr(eager, encoder))
        assert functorch_config.donated_buffer
        fast = instantiate(compose_config([*overrides, "model.compile=true"], tmp_path).model)
        assert calls == [getattr(fast, encoder)] and fast.compiled and compiled(getattr(fast, encoder))
        assert not functorch_config.donated_buffer
    assert list(fast.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
