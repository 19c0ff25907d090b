"""PoS-BERT model and pre-training module: gathered MLM head, per-group losses, tasks, export."""

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import smoke_values

from data.pos_bert import PosBertDataModule
from data.pos_grammar import ALL_GROUPS, GROUPS
from models.bert import PosBert
from pretrain.balancers import Minimax, NoBalancing
from pretrain.pos_bert import SCHEDULE, PosBertPretraining, grouped_mlm_losses
from utils.errors import ConfigError

ONE_STEP_WARMUP = functools.partial(SCHEDULE, warmup_steps=1)  # the full learning rate from the first step

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def _batch(seed=0, bsz=4, length=12, vocab=300):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (bsz, length), generator=g)
    masked = torch.tensor([1, 3, 5, length + 2, length + 7, 2 * length + 4, 3 * length + 1, 3 * length + 11])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "masked_positions": masked,
        "mlm_labels": torch.randint(5, vocab, (len(masked),), generator=g),
        "mlm_task": torch.tensor([0, 1, 1, 4, 8, 9, 1, 0]),
        "nsp_labels": torch.tensor([0, 1, 1, 0]),
    }


def test_gathered_mlm_equals_full_logits_at_masked_positions():
    torch.manual_seed(0)
    model = PosBert(**TINY).eval()
    b = _batch()
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["masked_positions"])
    full = model.mlm_logits(out["sequence"]).reshape(-1, TINY["vocab_size"])  # logits at every position
    assert out["mlm_logits"].shape == (8, TINY["vocab_size"])
    torch.testing.assert_close(out["mlm_logits"], full[b["masked_positions"]])
    ce_full = F.cross_entropy(full[b["masked_positions"]], b["mlm_labels"], reduction="sum")
    sums, counts = grouped_mlm_losses(out["mlm_logits"], b["mlm_labels"], b["mlm_task"])
    torch.testing.assert_close(sums.sum(), ce_full)
    assert out["nsp_logits"].shape == (4, 2)
    # the decoder is tied to the word embeddings
    assert model.bert.embeddings.word_embeddings.weight.data_ptr() in {
        p.data_ptr() for p in model.parameters()
    }
    assert (
        sum(p.numel() for p in model.parameters())
        < sum(p.numel() for p in model.bert.parameters()) + 32 * 32 + 300 + 200
    )


def test_group_sums_and_counts_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 2, 1])
    task = torch.tensor([1, 1, 4, 9])
    sums, counts = grouped_mlm_losses(logits, labels, task)

    def ce(row, y):
        return -torch.log_softmax(logits[row], 0)[y]

    assert counts.tolist() == [0, 2, 0, 0, 1, 0, 0, 0, 0, 1]
    torch.testing.assert_close(sums[1], ce(0, 0) + ce(1, 2))
    torch.testing.assert_close(sums[4], ce(2, 2))
    torch.testing.assert_close(sums[9], torch.log(torch.tensor(3.0)))
    assert sums[0] == 0 and sums[8] == 0


@pytest.mark.parametrize(
    "include_other,nsp,tasks,extra",
    [
        (False, "add", list(GROUPS), ["other", "nsp"]),
        (True, "task", list(GROUPS) + ["other", "nsp"], []),
        (False, "off", list(GROUPS), ["other"]),
    ],
)
def test_task_configuration(include_other, nsp, tasks, extra):
    m = PosBertPretraining(
        PosBert(**TINY), functools.partial(NoBalancing), include_other=include_other, nsp=nsp
    )
    assert m.task_names == tasks and m.aggregator.extra_tasks == extra
    assert m.aggregator.balancer.num_tasks == len(tasks)
    with pytest.raises(ConfigError, match="module.nsp"):
        PosBertPretraining(PosBert(**TINY), NoBalancing, nsp="maybe")


def test_loss_is_weighted_groups_plus_extras_and_absent_group_is_skipped():
    torch.manual_seed(0)
    m = PosBertPretraining(PosBert(**TINY), functools.partial(NoBalancing), nsp="add")
    b = _batch()
    losses, _ = m._forward_losses(b)
    loss = m.training_step(b, 0)
    means = {g: float(losses[g][0]) / int(losses[g][1]) for g in ALL_GROUPS if int(losses[g][1]) > 0}
    present = [g for g in GROUPS if g in means]  # verb, noun, adverb, interjection
    assert present == ["verb", "noun", "adverb", "interjection"]
    # none: w_t = 1/9 for every group, an absent group adds nothing; other and NSP are added with weight 1
    expected = sum(means[g] for g in present) / 9 + means["other"] + float(losses["nsp"][0]) / 4
    assert abs(float(loss) - expected) < 1e-4
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_nsp_weight_scales_the_nsp_term_only():
    """module.nsp_weight=w adds w x NSP loss (nsp=add): the scalar grows by (w - 1) x NSP, and NSP is logged unscaled."""
    b = _batch()
    totals = {}
    for w in (1.0, 3.0):
        torch.manual_seed(0)
        m = PosBertPretraining(PosBert(**TINY), functools.partial(NoBalancing), nsp="add", nsp_weight=w)
        losses, _ = m._forward_losses(b)
        totals[w] = float(m.training_step(b, 0))
        nsp = float(losses["nsp"][0]) / int(losses["nsp"][1])
        assert m.aggregator.recent[-1]["loss"]["nsp"] == pytest.approx(nsp)
    assert totals[3.0] - totals[1.0] == pytest.approx(2 * nsp, rel=1e-4)
    for bad, nsp_mode in ((2.0, "task"), (0.0, "add")):
        with pytest.raises(ConfigError, match="module.nsp_weight"):
            PosBertPretraining(PosBert(**TINY), NoBalancing, nsp=nsp_mode, nsp_weight=bad)


def _trainer(tmp_path, steps=3):
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip


def test_trains_with_minimax_and_exports(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "cache"),
        **smoke_values("data", "pos_corpus", tokenizer={"vocab_size": 512}),
        max_length=32,
    )
    model = PosBert(**{**TINY, "vocab_size": 512})
    m = PosBertPretraining(model, functools.partial(Minimax, alpha=1.0), scheduler=ONE_STEP_WARMUP)
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(m, datamodule=dm)
    trainer.validate(m, datamodule=dm, verbose=False)
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.query.weight)
    assert len(m.aggregator.recent) == 3
    assert set(m.aggregator.recent[-1]["weight"]) == set(GROUPS)
    logged = trainer.callback_metrics
    assert "val/loss/noun" in logged and "val/loss/nsp" in logged and "val/loss_worst" in logged
    m.export_pretrained(tmp_path / "export")
    loaded = AutoModel.from_pretrained(tmp_path / "export").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "export")
    enc = tok(["the dog ran ."], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        ours = model.bert(**enc).last_hidden_state
        theirs = loaded(**enc).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_sequence_longer_than_positions_names_the_key(tmp_path):
    dm = PosBertDataModule(cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), max_length=128)
    m = PosBertPretraining(PosBert(**TINY), NoBalancing)
    with pytest.raises(
        ConfigError, match=r"^data.max_length=128 is longer than .*model.max_position_embeddings=64"
    ):
        _trainer(tmp_path).fit(m, datamodule=dm)


def test_vocab_too_small_names_the_key(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path),
        **smoke_values("data", "pos_corpus", tokenizer={"vocab_size": 512}),
        max_length=32,
    )
    m = PosBertPretraining(PosBert(**{**TINY, "vocab_size": 50}), NoBalancing)
    with pytest.raises(ConfigError, match=r"^model.vocab_size=50 is smaller"):
        _trainer(tmp_path).fit(m, datamodule=dm)


def test_vocabulary_is_sized_to_the_tokenizer(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "cache"),
        **smoke_values("data", "pos_corpus", tokenizer={"vocab_size": 4096}),
        max_length=32,
    )
    model = PosBert(**{**TINY, "vocab_size": None})
    m = PosBertPretraining(model, NoBalancing, scheduler=ONE_STEP_WARMUP)
    _trainer(tmp_path, steps=1).fit(m, datamodule=dm)
    n = len(dm.tokenizer)
    assert n < 4096  # the smoke corpus has fewer pieces than asked for
    assert model.vocab_size == n and model.mlm_bias.numel() == n
    assert model.mlm_logits(torch.zeros(1, TINY["hidden_size"])).shape == (1, n)


def test_unigram_reference_by_hand():
    from data.pos_tagging import IGNORE, unigram_reference

    # two chunks of flat (ids, groups), counted together
    log_p, ref = unigram_reference([([5, 6, 5, 2], [0, 1, 0, IGNORE]), ([7, 5], [1, 0])], vocab_size=8)
    # maskable tokens: 5 x3, 6 x1, 7 x1 (the IGNORE'd 2 does not count); add-one over 8 pieces: / (5 + 8)
    expected = torch.log(torch.tensor([1, 1, 1, 1, 1, 4, 2, 2]) / 13.0)
    torch.testing.assert_close(log_p, expected)
    assert ref["verb"] == pytest.approx(-float(expected[5]))  # group 0: three 5s
    assert ref["noun"] == pytest.approx(-float(expected[6] + expected[7]) / 2)
    assert ref["nsp"] == pytest.approx(0.6931, abs=1e-4)
    assert "adjective" not in ref  # no token of that group


def test_upstream_eval_is_reference_minus_loss_on_the_validation_pairs(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "cache"),
        **smoke_values("data", "pos_corpus", tokenizer={"vocab_size": 512}),
        max_length=32,
    )
    model = PosBert(**{**TINY, "vocab_size": None})
    m = PosBertPretraining(model, NoBalancing, scheduler=ONE_STEP_WARMUP)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(m, datamodule=dm)
    trainer.validate(m, datamodule=dm, verbose=False)
    ev = m.upstream_eval
    # recompute from the same (fixed-mask) validation batches
    model.eval()
    sums, counts, refs = (
        torch.zeros(len(ALL_GROUPS)),
        torch.zeros(len(ALL_GROUPS)),
        torch.zeros(len(ALL_GROUPS)),
    )
    correct = pairs = 0
    with torch.no_grad():
        for k, b in enumerate(dm.val_dataloader()):
            if k == 2:  # limit_val_batches
                break
            out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["masked_positions"])
            ce = F.cross_entropy(out["mlm_logits"], b["mlm_labels"], reduction="none")
            sums.index_add_(0, b["mlm_task"], ce)
            refs.index_add_(0, b["mlm_task"], -dm.unigram_log_probs[b["mlm_labels"]])
            counts += torch.bincount(b["mlm_task"], minlength=len(ALL_GROUPS))
            correct += int((out["nsp_logits"].argmax(-1) == b["nsp_labels"]).sum())
            pairs += len(b["nsp_labels"])
    assert ev["nsp_accuracy"] == pytest.approx(correct / pairs) and ev["nsp_pairs"] == pairs
    assert ev["step"] == 2
    for i, g in enumerate(ALL_GROUPS):
        if counts[i] == 0:
            assert g not in ev["groups"]
            continue
        row = ev["groups"][g]
        assert row["targets"] == int(counts[i])
        assert row["loss"] == pytest.approx(float(sums[i] / counts[i]), rel=1e-4)
        assert row["reference"] == pytest.approx(float(refs[i] / counts[i]), rel=1e-4)
        assert row["context_gain"] == pytest.approx(row["reference"] - row["loss"])
    gains = [ev["groups"][g]["context_gain"] for g in GROUPS if g in ev["groups"]]
    assert ev["min_context_gain"] == pytest.approx(min(gains))
    assert trainer.callback_metrics["val/context_gain/noun"] == pytest.approx(
        ev["groups"]["noun"]["context_gain"]
    )


def test_minimax_normalize_reference_defaults_to_the_context_free_reference(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "cache"),
        **smoke_values("data", "pos_corpus", tokenizer={"vocab_size": 512}),
        max_length=32,
    )
    balancer = functools.partial(Minimax, alpha=1.0, normalize="reference")
    m = PosBertPretraining(PosBert(**{**TINY, "vocab_size": None}), balancer, scheduler=ONE_STEP_WARMUP)
    _trainer(tmp_path, steps=2).fit(m, datamodule=dm)
    b = m.aggregator.balancer
    expected = [dm.context_free_reference[g] for g in GROUPS]
    torch.testing.assert_close(b.reference, torch.tensor(expected))
    # the first step's weights: the softmax of the excess losses over the groups present (0 for the others)
    h = m.aggregator.recent[0]
    present = [g for g in GROUPS if h["loss"].get(g) is not None]
    assert len(present) >= 5
    excess = torch.tensor([h["loss"][g] - dm.context_free_reference[g] for g in present])
    w = dict(zip(present, torch.softmax(excess, 0).tolist()))
    for g in GROUPS:
        assert h["weight"][g] == pytest.approx(w.get(g, 0.0), rel=1e-4, abs=1e-6)


def test_normalize_reference_without_a_default_names_the_keys():
    from pretrain.aggregation import LossAggregation

    agg = LossAggregation.build(functools.partial(Minimax, normalize="reference"), ["a", "b"])
    with pytest.raises(ConfigError, match="balancer.reference .* balancer.reference_from"):
        agg.balancer(torch.tensor([1.0, 2.0]))
