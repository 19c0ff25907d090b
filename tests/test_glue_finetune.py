"""The generated GLUE-shaped suite, the fine-tuning module, and the whole PoS-BERT run end to end."""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import smoke_values

from data.glue_like import TASKS, generate_task
from data.pos_grammar import LEXICON
from finetune.glue import GlueFinetune, GlueLikeSuite
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(TASKS))
def test_tasks_are_deterministic_and_balanced(name):
    a = generate_task(name, 300, 50, seed=0)
    b = generate_task(name, 300, 50, seed=0)
    assert [e.a for e in a.train] == [e.a for e in b.train] and [e.label for e in a.dev] == [
        e.label for e in b.dev
    ]
    assert {e.a for e in a.train}.isdisjoint({e.a for e in a.dev}) or name == "sst2"
    assert (a.train[0].b is None) != TASKS[name].pair
    labels = [e.label for e in a.train]
    if TASKS[name].regression:
        assert min(labels) == 0.0 and max(labels) == 5.0 and statistics.pstdev(labels) > 1.0
    else:
        assert 0.35 < statistics.fmean(labels) < 0.75


def test_labels_hinge_on_the_stated_pos_groups():
    neg = {"not", "never"}
    pos_adj = set(LEXICON["ADJ_POS"][1])
    for e in generate_task("sst2", 300, 0, seed=1).train:
        words = e.a.rstrip(".").replace(",", "").lower().split()
        positive = words[-1] in pos_adj
        negated = bool(neg & set(words))
        assert e.label == int(positive != negated), e.a  # adjective polarity flipped by a negation adverb
    for e in generate_task("rte", 300, 0, seed=1).train:
        if ", or " in e.a:
            assert e.label == 0  # 'or' entails neither clause
        elif e.label == 0:
            assert e.b.rstrip(".").lower() not in e.a.lower()  # and/but: only a changed noun breaks it
    for e in generate_task("stsb", 200, 0, seed=1).train:
        if e.a == e.b:
            assert e.label == 5.0


def test_finetune_metrics_by_hand():
    from transformers import BertConfig, BertModel

    enc = BertModel(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    m = GlueFinetune(enc, TASKS["mrpc"])
    # predictions [1,1,0,0] against labels [1,0,0,1]: acc 0.5, precision 0.5, recall 0.5, F1 0.5
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 1])
    for metric in m.metrics.values():
        metric.update(logits.argmax(-1), labels)
    assert {k: round(float(v.compute()), 4) for k, v in m.metrics.items()} == {"f1": 0.5, "accuracy": 0.5}
    reg = GlueFinetune(enc, TASKS["stsb"])
    out = reg(
        torch.ones(3, 4, dtype=torch.long),
        torch.ones(3, 4, dtype=torch.long),
        torch.zeros(3, 4, dtype=torch.long),
    )
    assert out.shape == (3,)


def test_unknown_task_names_the_key():
    with pytest.raises(ConfigError, match="^downstream.tasks"):
        GlueLikeSuite(tasks=["cola", "qqp"])


def _run(tmp_path, *overrides):
    env = {
        **os.environ,
        "TRP_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }
    # one torch thread: on a CPU shared with other jobs, oversubscribed threads make a smoke run 5-10x slower
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        sys.executable,
        "run.py",
        "experiment=pos_bert",
        "debug=smoke",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    return subprocess.run(
        cmd + list(overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_end_to_end_smoke(tmp_path):
    proc = _run(tmp_path, "balancer=minimax", "data.masking.stratify=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["experiment"] == "pos_bert" and results["balancer"] == "minimax"
    assert set(results["downstream"]) == set(TASKS)
    assert results["downstream"]["cola"]["primary"] == "matthews"
    assert set(results["downstream"]["mrpc"]["metrics"]) == {"f1", "accuracy"}
    assert results["summary"]["worst"] <= results["summary"]["average"]
    assert {"noun", "interjection", "other", "nsp"} <= set(results["upstream"])
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tmp_path / "run" / "pretrained")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "pretrained")
    assert model.config.hidden_size == 128 and len(tok) == model.config.vocab_size  # sized to the tokenizer
    ev = results["upstream_eval"]  # the final weights on the held-back pairs
    assert 0.0 <= ev["nsp_accuracy"] <= 1.0 and ev["step"] == 4
    assert {"noun", "determiner"} <= set(ev["groups"])
    for row in ev["groups"].values():
        assert row["context_gain"] == pytest.approx(row["reference"] - row["loss"])
    weights = results["weights"]
    assert set(weights["final"]) == set(results["upstream"]) - {"other", "nsp"}
    assert sum(weights["final"].values()) == pytest.approx(1.0)
    assert 0.0 < weights["mean_entropy"] <= weights["max_entropy"] == pytest.approx(math.log(9))


@pytest.mark.slow
def test_bad_tokenizer_path_ends_in_one_sentence(tmp_path):
    proc = _run(tmp_path, f"data.tokenizer.name={tmp_path / 'nowhere'}")
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "data.tokenizer.name=" in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_real_glue_source_loads_through_data_glue(shared_data):
    suite = GlueLikeSuite(
        tasks=["rte", "mrpc"],
        source="local",
        data_dir=str(shared_data / "glue"),
        **smoke_values("downstream", "glue_like"),
    )
    rte = suite.load("rte")
    assert rte.spec.name == "RTE" and rte.spec.pair and len(rte.train) == 48 and len(rte.dev) == 32
    with pytest.raises(ConfigError, match="^downstream.data_dir"):
        GlueLikeSuite(tasks=["rte"], source="local")
    with pytest.raises(ConfigError, match="^downstream.source"):
        GlueLikeSuite(source="web")
