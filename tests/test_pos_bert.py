"""PoS-BERT model and pre-training module: gathered MLM head, per-group losses, tasks, export."""

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from data.pos_bert import PosBertDataModule
from data.pos_grammar import ALL_GROUPS, GROUPS
from models.bert import PosBert
from pretrain.balancers import Minimax, NoBalancing
from pretrain.pos_bert import PosBertPretraining, grouped_mlm_losses
from utils.errors import ConfigError

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


def _trainer(tmp_path, steps=3):
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip


def test_trains_with_minimax_and_exports(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    dm = PosBertDataModule(cache_dir=str(tmp_path / "cache"), smoke=True, max_length=32, vocab_size=512)
    model = PosBert(**{**TINY, "vocab_size": 512})
    m = PosBertPretraining(model, functools.partial(Minimax, alpha=1.0), warmup_steps=1)
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(m, datamodule=dm)
    trainer.validate(m, datamodule=dm, verbose=False)
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.query.weight)
    assert len(m.aggregator.history) == 3
    assert set(m.aggregator.history[-1]["weight"]) == set(GROUPS)
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
    dm = PosBertDataModule(cache_dir=str(tmp_path), smoke=True, max_length=128)
    m = PosBertPretraining(PosBert(**TINY), NoBalancing)
    with pytest.raises(
        ConfigError, match=r"^data.max_length=128 is longer than .*model.max_position_embeddings=64"
    ):
        _trainer(tmp_path).fit(m, datamodule=dm)


def test_vocab_too_small_names_the_key(tmp_path):
    dm = PosBertDataModule(cache_dir=str(tmp_path), smoke=True, max_length=32, vocab_size=512)
    m = PosBertPretraining(PosBert(**{**TINY, "vocab_size": 50}), NoBalancing)
    with pytest.raises(ConfigError, match=r"^model.vocab_size=50 is smaller"):
        _trainer(tmp_path).fit(m, datamodule=dm)
