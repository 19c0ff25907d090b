"""Adaptation protocols (finetune/protocol.py) and what they write to results.json, end to end."""

import json
import logging
import statistics

import pytest
import torch
from helpers import run_pipeline

from finetune.protocol import adapt, clip_sizes, nested_subset, parse_seeds, parse_train_samples
from runner.results import summarise
from utils.errors import ConfigError


def test_train_samples_and_seeds_parse_or_name_the_key():
    assert parse_train_samples(None) == ([None], False)
    assert parse_train_samples(64) == ([64], False)
    assert parse_train_samples([128, 32, 32]) == ([32, 128], True)
    for bad in ([0, 4], ["a"], []):
        with pytest.raises(ConfigError, match=r"^downstream\.train_samples"):
            parse_train_samples(bad)
    assert parse_seeds([3, 1]) == [3, 1] and parse_seeds(2) == [2]
    for bad in ([], [1, 1]):
        with pytest.raises(ConfigError, match=r"^downstream\.finetune_seeds"):
            parse_seeds(bad)


def test_subsets_are_nested_fixed_by_the_data_seed_and_bounded():
    small, large = nested_subset(100, 10, seed=0), nested_subset(100, 40, seed=0)
    assert large[:10] == small and len(set(large)) == 40
    assert nested_subset(100, 10, seed=0) == small  # the same for every balancer and fine-tuning seed
    assert nested_subset(100, 10, seed=1) != small  # another data seed, another subset
    assert small != list(range(10))  # a permutation, not the file's first rows
    assert nested_subset(5, None, seed=0) == list(range(5))
    with pytest.raises(ConfigError, match=r"N=8.*only 5"):
        nested_subset(5, 8, seed=0)


def test_an_n_beyond_the_training_examples_is_cut_to_them_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="finetune.protocol"):
        assert clip_sizes([8, 64, 256], 32, "training images") == [8, 32]
    assert "N=64, 256, but the task has only 32 training images: using N=32" in caplog.text
    caplog.clear()
    assert clip_sizes([8, 32], 32) == [8, 32] and clip_sizes([None], 32) == [None]
    assert clip_sizes([8, 4096], None) == [8, 4096]  # size unknown until read: nested_subset stops on N=4096
    assert not caplog.text


def test_adapt_runs_every_n_and_seed_and_reports_means_per_seed_and_curve():
    calls = []

    def fit_and_score(n, seed):
        calls.append((n, seed))
        return {"acc": (n or 100) / 100 + seed / 10, "f1": 1.0, "dev_rows": 7}

    out = adapt(fit_and_score, [16, 64], [0, 2], "acc", curve=True)
    assert calls == [(16, 0), (16, 2), (64, 0), (64, 2)]
    assert out["per_seed"] == pytest.approx([0.64, 0.84])
    assert out["metrics"] == pytest.approx({"acc": 0.74, "f1": 1.0})  # mean at the largest N
    assert out["curve"] == pytest.approx({"16": 0.26, "64": 0.74})
    assert out["curve_per_seed"]["16"] == pytest.approx([0.16, 0.36])
    assert out["dev_rows"] == 7 and out["train_samples"] == 64
    assert "curve" not in adapt(fit_and_score, [None], [0], "acc", curve=False)


def test_summary_of_means_per_seed_and_curve():
    down = {
        "a": {"metrics": {"m": 0.5}, "primary": "m", "higher_is_better": True, "per_seed": [0.4, 0.6],
              "curve": {"8": 0.2, "32": 0.5}},
        "b": {"metrics": {"m": 0.7}, "primary": "m", "higher_is_better": True, "per_seed": [0.9, 0.5],
              "curve": {"8": 0.3, "32": 0.7}},
    }  # fmt: skip
    s = summarise(down)
    assert s["worst"] == 0.5 and s["worst_task"] == "a" and s["average"] == pytest.approx(0.6)
    # per fine-tuning seed: seed 0 -> (0.4, 0.9), seed 1 -> (0.6, 0.5)
    assert s["per_seed"]["worst"] == [0.4, 0.5]
    assert s["per_seed"]["average"] == pytest.approx([0.65, 0.55])
    assert s["curve"]["8"] == pytest.approx({"worst": 0.2, "average": 0.25})


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
@pytest.mark.parametrize("protocol", ["finetune", "linear_probe"])
def test_smoke_run_writes_per_seed_and_curve_for_every_task(tmp_path, experiment, protocol):
    results = run_pipeline(
        [
            f"experiment={experiment}",
            "debug=smoke",
            "logger=none",
            "balancer=minimax",
            f"downstream.protocol={protocol}",
            "downstream.finetune_seeds=[0,1]",
            "downstream.train_samples=[16,32]",
            "threads=1",
        ],
        tmp_path,
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["protocol"] == {"protocol": protocol, "train_samples": [16, 32], "finetune_seeds": [0, 1]}
    for task, r in results["downstream"].items():
        assert len(r["per_seed"]) == 2, task
        assert set(r["curve"]) == {"16", "32"} and all(len(v) == 2 for v in r["curve_per_seed"].values())
        assert r["metrics"][r["primary"]] == pytest.approx(statistics.fmean(r["per_seed"]))
        assert r["curve"]["32"] == pytest.approx(r["metrics"][r["primary"]])
        assert r["dev_rows"] > 0
    assert len(results["summary"]["per_seed"]["worst"]) == 2 and set(results["summary"]["curve"]) == {
        "16",
        "32",
    }


def _probe_run(tmp_path, seeds):
    """Forward passes through the (copied) encoder during a linear-probe run of two tasks."""
    from test_vision_finetune import make_trainer, tiny_backbone

    from finetune.vision import VisionSuite

    backbone = tiny_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    calls = []
    backbone.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))  # copies keep it
    suite = VisionSuite(
        tasks={"classification": {"epochs": 2}, "segmentation": {"epochs": 1}, "depth": {"enabled": False}},
        protocol="linear_probe",
        finetune_seeds=seeds,
        train_size=24,
        dev_size=8,
        batch_size=8,
        num_workers=0,
        figure_images=0,
    )
    results = suite.run(backbone, make_trainer, tmp_path / str(len(seeds)))
    unchanged = all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    return sum(calls), results, unchanged


@pytest.mark.slow
def test_linear_probe_runs_the_frozen_encoder_once_whatever_the_seeds(tmp_path):
    """Features are computed once for every task: more fine-tuning seeds and a second task add no encoder
    pass (24 training + 8 dev images, once), and the pre-trained weights are untouched."""
    images_one, one, unchanged = _probe_run(tmp_path, [0])
    images_three, three, _ = _probe_run(tmp_path, [0, 1, 2])
    assert images_one == images_three == 24 + 8 and unchanged
    assert len(three["classification"]["per_seed"]) == 3 and three["segmentation"]["dev_rows"] == 8
    assert len(set(three["classification"]["per_seed"] + three["segmentation"]["per_seed"])) > 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, overrides",
    [("pos_bert", ["stage=finetune", "pretrained_ckpt=random"]), ("mm_mae", ["balancer=random_init"])],
)
def test_random_init_control_adapts_a_fresh_model_without_pre_training(tmp_path, experiment, overrides):
    common = [f"experiment={experiment}", "debug=smoke", "logger=none", "threads=1"]
    results = run_pipeline([*common, "downstream.finetune_seeds=[0,1]", *overrides], tmp_path / "control")
    assert results["balancer"] == "random_init" and results["stage"] == "finetune"
    assert not (tmp_path / "control" / "checkpoints").exists() and "cost" not in results
    assert all(len(r["per_seed"]) == 2 for r in results["downstream"].values())
    # the fresh model is drawn from `seed`: another seed adapts another model
    other = run_pipeline([*common, "seed=1", "downstream.finetune_seeds=[0,1]", *overrides], tmp_path / "s1")
    assert other["downstream"] != results["downstream"]


def test_random_init_with_pre_training_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrained_ckpt=random .* needs stage=finetune"):
        run_pipeline(
            ["experiment=convex", "debug=smoke", "logger=none", "balancer=random_init", "stage=all"], tmp_path
        )


def test_every_dev_row_of_a_real_format_glue_file_is_scored(tmp_path):
    """A GLUE dev file of 1,400 rows (more than the pre-training's limit_val_batches x batch) is scored whole."""
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    words = ["good", "bad", "fine", "dull", "bright", "slow"]

    def rows(n):
        return "".join(f"the film is {words[i % 6]} and {words[(i * 7) % 6]} .\t{i % 2}\n" for i in range(n))

    (folder / "train.tsv").write_text("sentence\tlabel\n" + rows(64))
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + rows(1400))
    results = run_pipeline(
        [
            "experiment=pos_bert",
            "debug=smoke",  # pre-training validates on limit_val_batches=2
            "logger=none",
            "threads=1",
            "downstream=glue",
            "downstream.source=local",
            f"downstream.data_dir={tmp_path / 'glue'}",
            "downstream.tasks=[SST-2]",
            "downstream.train_size=null",  # every row, as without debug=smoke
            "downstream.dev_size=null",
            "downstream.batch_size=32",
            "downstream.max_steps=2",
            "downstream.protocol=finetune",
            "downstream.finetune_seeds=[0]",
        ],
        tmp_path / "run",
    )
    assert results["downstream"]["SST-2"]["dev_rows"] == 1400
