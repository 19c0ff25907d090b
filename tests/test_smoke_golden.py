"""Behaviour stays put under refactoring: the smoke run of each experiment (``python run.py experiment=<name>
debug=smoke logger=none``, and MM-MAE with GradNorm on the shared features) gives the results stored in
``tests/golden/<name>.json``.

What is compared is everything in results.json but the wall-clock measurements (``cost``'s timings) and the
absolute paths of written files (compared by file name): every upstream loss, weight, downstream metric and
summary, to a relative tolerance of 1e-6. A change that is meant to change the numbers regenerates the files
and says so in its commit message::

    TRP_UPDATE_GOLDEN=1 pytest tests/test_smoke_golden.py
"""

import json
import math
import os
from pathlib import Path

import pytest
from helpers import run_pipeline

GOLDEN = Path(__file__).parent / "golden"
#: Keys of results.json["cost"] that are measured on the wall clock (the rest, steps and FLOPs, are exact).
TIMED = {"median_step_ms", "pretrain_seconds", "timed_steps", "steps_per_s", "samples_per_s", "tokens_per_s",
         "images_per_s", "tflops_per_s"}  # fmt: skip


def comparable(value, key: str = ""):
    """``results.json`` without wall-clock timings, with each written file's path cut to its name."""
    if isinstance(value, dict):
        return {k: comparable(v, k) for k, v in value.items() if not (key == "cost" and k in TIMED)}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def differences(got, want, where: str = "results") -> list[str]:
    """Every place where ``got`` differs from ``want`` (floats to rel 1e-6, abs 1e-9), as 'key: got != want'."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want.keys() - got.keys()]
        out += [f"{where}.{k}: not in the golden file" for k in got.keys() - want.keys()]
        for k in want.keys() & got.keys():
            out += differences(got[k], want[k], f"{where}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)):
        same = (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
        return [] if same else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("convex", ["experiment=convex"]),
        ("pos_bert", ["experiment=pos_bert"]),
        ("mm_mae", ["experiment=mm_mae"]),
        # the feature-gradient path of the aggregation callback (GradNorm on the shared representation)
        ("mm_mae_gradnorm", ["experiment=mm_mae", "balancer=gradnorm", "balancer.mode=features"]),
    ],
)
def test_smoke_results_match_the_golden_file(tmp_path, name, overrides):
    res = run_pipeline([*overrides, "debug=smoke", "logger=none", "threads=1"], tmp_path)
    got = comparable(json.loads((tmp_path / "results.json").read_text()))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("TRP_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    assert res is not None
    diff = differences(got, want)
    assert not diff, f"{len(diff)} values differ from {path.name}:\n" + "\n".join(sorted(diff)[:30])


def test_the_comparison_sees_a_changed_metric_and_ignores_timings():
    want = {"cost": {"steps": 4, "median_step_ms": 3.0}, "downstream": {"a": {"metrics": {"acc": 0.5}}}}
    got = {"cost": {"steps": 4, "median_step_ms": 9.0}, "downstream": {"a": {"metrics": {"acc": 0.5 + 1e-4}}}}
    assert differences(comparable(got), comparable(want)) == [
        "results.downstream.a.metrics.acc: 0.5001 != 0.5"
    ]
    got["downstream"]["a"]["metrics"]["acc"] = 0.5 * (1 + 1e-8)
    assert differences(comparable(got), comparable(want)) == []
    assert comparable({"png": "/tmp/run/figure3_minimax.png"}) == {"png": "figure3_minimax.png"}
