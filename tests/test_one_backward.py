"""Per-task feature gradients from one backward (``FeatureRows``, ``FeatureCopies``) equal the per-task backward.

For each experiment the same step runs twice from the same state: once as training runs it (PoS-BERT: the
masked and [CLS] rows, one backward to them; MM-MAE: each decoder reads its own copy of the encoder output),
once through the reference path, where the module hands the balancer the plain feature tensor and the
balancer takes every task's gradient by a batched backward (one per task). The per-task feature gradients the
balancer sees, the weights, the returned loss and every parameter's gradient after the backward must agree.
"""

import copy
import functools

import pytest
import torch
from torch import nn

from data.pos_grammar import ALL_GROUPS
from models.bert import PosBert
from models.multimae import MultiMAE
from pretrain.aggregation import LossAggregation
from pretrain.balancers import DBMTL, ExcessMTL, GradientAggregator, GradNorm, NoBalancing, Uncertainty
from pretrain.feature_gradients import FeatureCopies
from pretrain.mm_mae import MMMAEPretraining
from pretrain.pos_bert import PosBertPretraining

BALANCERS = {
    "upgrad": functools.partial(GradientAggregator, method="upgrad", mode="features"),
    "mgda": functools.partial(GradientAggregator, method="mgda", mode="features"),
    "gradnorm": functools.partial(GradNorm, mode="features"),
    "dbmtl": functools.partial(DBMTL, mode="features"),
    "excessmtl": functools.partial(ExcessMTL, mode="features", robust_step_size=1.0),
}


def _spy(balancer) -> list:
    """Record the ``feature_grads`` (or, on the reference path, the per-task backward's) each call sees."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("feature_grads"))

    balancer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _nudge(balancer) -> None:
    """Non-uniform GradNorm logits, so the weights applied at the first step are not all equal."""
    if isinstance(balancer, GradNorm):
        with torch.no_grad():
            balancer.logits.copy_(torch.linspace(-0.5, 0.5, balancer.num_tasks))


def _grads(module, balancer) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    out.update(
        {f"balancer.{n}": p.grad.clone() for n, p in balancer.named_parameters() if p.grad is not None}
    )
    return out


def _assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------- PoS-BERT
POS_TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def _pos_batch(bsz=4, length=12, vocab=300):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (bsz, length), generator=g)
    masked = torch.tensor(
        [1, 3, 5, 9, length + 2, length + 7, 2 * length + 4, 2 * length + 5, 3 * length + 1]
    )
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "masked_positions": masked,
        "mlm_labels": torch.randint(5, vocab, (len(masked),), generator=g),
        "mlm_task": torch.tensor([0, 1, 1, 4, 8, 9, 2, 0, 3]),  # 5, 6, 7 absent; 9 = other (added, weight 1)
        "nsp_labels": torch.tensor([0, 1, 1, 0]),
    }


@pytest.mark.parametrize("name", list(BALANCERS))
def test_pos_bert_rows_give_the_per_task_backward_gradients(name):
    torch.manual_seed(0)
    module = PosBertPretraining(PosBert(**POS_TINY), BALANCERS[name], nsp="task")
    module.train()
    _nudge(module.aggregator.balancer)
    reference = copy.deepcopy(module)
    batch = _pos_batch()
    seen = _spy(module.aggregator.balancer)
    loss = module.training_step(batch, 0)
    loss.backward()

    # the reference: the plain hidden states (B, L, H); the balancer's batched backward, one row per task
    losses, out = reference._forward_losses(batch)
    shared = list(reference.model.last_shared_layer().parameters())
    ref_loss = reference.aggregator(reference, losses, shared_params=shared, features=out["sequence"])
    seq = out["sequence"]
    wants = [
        torch.autograd.grad(s / c, seq, retain_graph=True)[0] if int(c) else None
        for s, c in (losses[t] for t in module.task_names)
    ]
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss)
    assert module.aggregator.recent[-1]["weight"] == pytest.approx(reference.aggregator.recent[-1]["weight"])
    _assert_same_grads(
        _grads(module, module.aggregator.balancer), _grads(reference, reference.aggregator.balancer)
    )

    # the feature gradients of one backward, scattered back to (B*L, H), are each task's own gradient
    (rows,) = seen
    assert rows.shape[0] == len(module.task_names) == 10  # 9 POS groups + NSP
    length = seq.shape[1]
    index = torch.cat([batch["masked_positions"], torch.arange(seq.shape[0]) * length])
    assert sum(w is None for w in wants) == 3  # groups 5, 6, 7 are absent
    for t, want in enumerate(wants):
        if want is None:
            assert rows[t].abs().sum() == 0
            continue
        got = torch.zeros(seq.numel() // seq.shape[-1], seq.shape[-1]).index_add(0, index, rows[t])
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-8)
    if name in ("upgrad", "mgda", "gradnorm"):  # the weights applied are not the uniform ones
        weights = list(module.aggregator.recent[-1]["weight"].values())
        assert max(weights) - min(weights) > 1e-3


def test_pos_bert_rows_name_their_tasks():
    module = PosBertPretraining(PosBert(**POS_TINY), NoBalancing, include_other=False, nsp="add")
    batch = _pos_batch()
    tasks = module._row_tasks(batch).tolist()
    groups = [ALL_GROUPS[i] for i in batch["mlm_task"].tolist()]
    assert tasks[: len(groups)] == [module.task_names.index(g) if g != "other" else -1 for g in groups]
    assert tasks[len(groups) :] == [-1] * 4  # NSP added with weight 1: no balanced task reads [CLS]


# ----------------------------------------------------------------------------------------------- MM-MAE
MM_SMALL = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2,
                num_visible=12)  # fmt: skip


def _mm_batch(batch=4):
    g = torch.Generator().manual_seed(2)
    return {
        "rgb": torch.randn(batch, 3, 32, 32, generator=g),
        "depth": torch.rand(batch, 1, 32, 32, generator=g) * 8 + 0.5,
        "semseg": torch.randint(0, 10, (batch, 32, 32), generator=g),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BALANCERS))
def test_mm_mae_copies_give_the_per_task_backward_gradients(name):
    torch.manual_seed(0)
    module = MMMAEPretraining(MultiMAE(**MM_SMALL), BALANCERS[name], {})
    module.train()
    _nudge(module.aggregator.balancer)
    reference = copy.deepcopy(module)
    batch = _mm_batch()
    seen = _spy(module.aggregator.balancer)
    torch.manual_seed(5)
    loss = module.training_step(batch, 0)
    assert seen[0] is not None  # the copies path ran
    loss.backward()

    torch.manual_seed(5)  # the same masks; every decoder reads the encoder output itself
    output = reference.model(batch)
    assert output.task_features is None
    losses = reference.model.losses(output, batch)
    shared = reference.model.shared_params()
    ref_loss = reference.aggregator(reference, losses, shared_params=shared, features=output.features)
    wants = [torch.autograd.grad(s / c, output.features, retain_graph=True)[0] for s, c in losses.values()]
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss)
    assert module.aggregator.recent[-1]["weight"] == pytest.approx(reference.aggregator.recent[-1]["weight"])
    got = _grads(module, module.aggregator.balancer)
    _assert_same_grads(got, _grads(reference, reference.aggregator.balancer))
    assert (
        got["model.blocks.0.attn.qkv.weight"].abs().sum() > 0
        and got["model.decoders.rgb.head.weight"].abs().sum() > 0
    )

    (feature_grads,) = seen
    for t, want in enumerate(wants):
        torch.testing.assert_close(feature_grads[t], want, rtol=1e-5, atol=1e-8)
    if name in ("mgda", "gradnorm"):  # (UPGrad: these gradients do not conflict, so its weights are uniform)
        weights = list(module.aggregator.recent[-1]["weight"].values())
        assert max(weights) - min(weights) > 1e-3


def test_mm_mae_reads_copies_only_for_feature_gradients():
    module = MMMAEPretraining(MultiMAE(**MM_SMALL), NoBalancing, {})
    assert not module.aggregator.needs_feature_gradients
    assert MMMAEPretraining(MultiMAE(**MM_SMALL), GradNorm, {}).aggregator.needs_feature_gradients
    out = module.model(_mm_batch(), detach_features=True)
    assert set(out.task_features) == {"rgb", "depth", "semseg"}
    assert all(c.is_leaf and c.requires_grad for c in out.task_features.values())
    assert out.preds["rgb"].grad_fn is not None


# ----------------------------------------------------------------------------------------------- any graph
class SharedHeads(nn.Module):
    """Tasks a and b read copy a; c reads copies a and c; one head matrix is shared by a and b."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.ab = nn.Linear(4, 2)
        self.c = nn.Linear(4, 1)

    def forward(self, x, copies: bool):
        h = torch.tanh(self.trunk(x))
        ha, hc = (h.detach().requires_grad_(), h.detach().requires_grad_()) if copies else (h, h)
        ab = self.ab(ha)
        losses = {"a": (ab[:, 0].pow(2).sum(), x.shape[0]), "b": ((ab[:, 1] - 1).pow(2).sum(), x.shape[0])}
        losses["c"] = ((self.c(hc) * ha.sum(1, keepdim=True)).pow(2).sum(), x.shape[0])
        return h, {"a": ha, "c": hc}, losses


@pytest.mark.parametrize("balancer", [Uncertainty, functools.partial(GradientAggregator, method="upgrad")])
def test_copies_are_exact_when_heads_share_parameters_and_read_several_copies(balancer):
    """Every parameter gets the gradient of the balancer's scalar (for Uncertainty: of exp(-s) L + s, whose
    task multipliers are not its reported weights), whichever copies and parameters each loss reaches."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for copies in (True, False):
        torch.manual_seed(0)
        net = SharedHeads()
        agg = LossAggregation(balancer(num_tasks=2), ["a", "c"], extra_tasks=["b"])
        if isinstance(agg.balancer, Uncertainty):
            with torch.no_grad():
                agg.balancer.log_var.copy_(torch.tensor([0.3, -0.4]))
        h, read, losses = net(x, copies)
        features = FeatureCopies(h, read, params=list(net.parameters())) if copies else h
        loss = agg(None, losses, features=features)
        loss.backward()
        results.append((loss.detach(), _grads(net, agg.balancer), agg.recent[-1]["weight"]))
    (loss, grads, weights), (ref_loss, ref_grads, ref_weights) = results
    torch.testing.assert_close(loss, ref_loss)
    assert weights == pytest.approx(ref_weights)
    _assert_same_grads(grads, ref_grads)
