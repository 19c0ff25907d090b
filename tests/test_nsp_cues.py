"""runner.nsp_cues: NSP accuracy by kind of validation pair (true; random with or without A's topic and tense)."""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli, run_pipeline, smoke_values
from omegaconf import OmegaConf

from data.pos_bert import PosBertDataModule
from data.pos_grammar import document_labels, generate_corpus
from data.pos_options import MOVED
from runner.nsp_cues import KINDS, nsp_by_kind, pair_kinds


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path_factory.mktemp("cache")), max_length=64,
        **smoke_values("data", "pos_corpus", corpus={"n_docs": 400, "present_prob": 0.5},
                       tokenizer={"vocab_size": 1024}, nsp={"val_fraction": 0.25}),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_document_labels_are_the_generated_documents_topics_and_tenses():
    kw = dict(n_docs=60, seed=3, topic_bias=0.9, present_prob=0.5)
    labels = document_labels(**kw)
    corpus = generate_corpus(**kw)
    assert [t for t, _ in labels] == [t for t, _ in corpus]
    for (_, tense), (_, sentences) in zip(labels, corpus):
        words = {w.lower() for s in sentences for w in s.words}
        if tense == "past":  # a past-tense document never uses a present copula
            assert not words & {"is", "are"}
    assert 15 < sum(t == "present" for _, t in labels) < 45


def test_pair_kinds_follow_the_documents(datamodule):
    kinds = pair_kinds(datamodule)
    labels = datamodule.val_set.label
    assert len(kinds) == len(labels) > 100
    assert all(
        (k == 0) == (y == 0) for k, y in zip(kinds, labels)
    )  # true pairs are exactly the same-document ones
    random = [k for k in kinds if k > 0]
    same_topic = sum(k in (1, 2) for k in random) / len(random)
    same_tense = sum(k in (1, 3) for k in random) / len(random)
    assert 0.02 < same_topic < 0.25  # 10 topics
    assert 0.3 < same_tense < 0.7  # present with probability 0.5


class _AlwaysNext(torch.nn.Module):
    def forward(self, input_ids, *args):
        return {"nsp_logits": torch.tensor([[1.0, 0.0]]).expand(input_ids.shape[0], 2)}


def test_nsp_by_kind_scores_each_pair_against_its_own_label(datamodule):
    """A model that always says 'B follows A' is right on every true pair and wrong on every random one: the
    kinds line up with the batches' labels."""
    table = nsp_by_kind(datamodule, _AlwaysNext())
    assert table[KINDS[0]][1] == 1.0
    assert all(acc == 0.0 for kind, (_, acc) in table.items() if kind != KINDS[0])
    assert sum(n for n, _ in table.values()) == len(datamodule.val_set)


@pytest.mark.slow
def test_nsp_cues_stage_on_a_smoke_run(tmp_path, capsys):
    from utils.errors import DataError

    run_dir = tmp_path / "run"
    proc = run_cli(["debug=smoke", "logger=none", "stage=pretrain", f"hydra.run.dir={run_dir}",
                    f"paths.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_pipeline(["stage=nsp_cues", f"nsp_cues.runs=[{run_dir}]"], tmp_path / "cues") is None
    out = capsys.readouterr().out
    assert f"## {run_dir}" in out and "| true (same document) |" in out and "overall" in out
    # a run directory written before the data options were grouped (flat data.n_docs, ...) reads the same
    config = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    flat = {k: v for k, v in cfg.data.items() if k not in ("corpus", "tokenizer", "nsp", "masking", "loader")}
    cfg.data = {**flat, **{old: OmegaConf.select(cfg.data, new) for old, new in MOVED.items()}}
    OmegaConf.save(cfg, config)
    assert run_pipeline(["stage=nsp_cues", f"nsp_cues.runs=[{run_dir}]"], tmp_path / "cues2") is None
    assert capsys.readouterr().out == out
    with pytest.raises(DataError, match="no .hydra/config.yaml"):
        run_pipeline(["stage=nsp_cues", f"nsp_cues.runs={tmp_path}"], tmp_path / "cues")
