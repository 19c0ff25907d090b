"""`python run.py` as a user runs it: the smoke run, a sweep with its summary, and bad input."""

import csv
import json

import pytest
from helpers import compose_config, run_cli
from oracles import assert_uniform_then_moving, dwa_weights, dwa_window_means, minimax_weights

from utils.errors import ConfigError


@pytest.mark.slow
def test_smoke_run_writes_results_json_and_logs(tmp_path):
    proc = run_cli(["experiment=convex", "debug=smoke", "logger=csv", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["experiment"] == "convex" and res["balancer"] == "minimax" and res["seed"] == 0
    assert set(res["upstream"]) == {"task0", "task1", "task2", "task3"}
    task = res["downstream"]["vertex0"]
    assert task["primary"] == "excess_risk" and task["higher_is_better"] is False
    s = res["summary"]
    primaries = [d["metrics"]["excess_risk"] for d in res["downstream"].values()]
    assert s["worst"] == pytest.approx(max(primaries)) and s["average"] == pytest.approx(
        sum(primaries) / len(primaries)
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"train/loss/task0", "train/weight/task3", "train/loss_worst", "train/weight_entropy"} <= logged
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "pretrain_history.csv").exists()  # the per-step history is metrics.csv's


@pytest.mark.slow
def test_multirun_writes_summary_table(tmp_path):
    proc = run_cli(
        [
            "-m",
            "experiment=convex",
            "debug=smoke",
            "logger=csv",  # the weight and loss figures read each run's csv/metrics.csv
            "balancer=none,minimax",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(tmp_path.rglob("results.json"))) == 4
    md = (tmp_path / "summary.md").read_text()
    main_table, cost_table = md.split("Cost of a pre-training step")
    main_table, upstream_table = main_table.split("Upstream (mean")
    assert "| minimax |" in upstream_table  # the weights' entropy per balancer
    assert "| none |" in cost_table and "| 1.00 |" in cost_table
    rows = {
        line.split("|")[1].strip(): line
        for line in main_table.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {"balancer", "minimax", "none"}
    assert "| 2 |" in rows["minimax"] and "| 2 |" in rows["none"]  # seeds per balancer
    assert "mean +- std" in md or "+-" in rows["none"]
    for fig in ("weights.png", "upstream_losses.png", "downstream.png"):
        assert (tmp_path / fig).stat().st_size > 5000 and f"]({fig})" in md
    table = list(csv.DictReader((tmp_path / "summary.csv").read_text().splitlines()))
    assert {r["balancer"] for r in table} == {"none", "minimax"}
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    worst_none = [r["summary"]["worst"] for r in runs if r["balancer"] == "none"]
    assert float(next(r for r in table if r["balancer"] == "none")["worst_mean"]) == pytest.approx(
        sum(worst_none) / 2, rel=1e-6
    )
    for seed in (0, 1):  # the two balancers trained different parameters from the same start
        by = {r["balancer"]: r for r in runs if r["seed"] == seed}
        assert by["minimax"]["pretrained"]["upstream_risks"] != pytest.approx(
            by["none"]["pretrained"]["upstream_risks"], rel=1e-3
        )
        # minimax lowers the worst upstream risk, `none` the average one
        assert (
            by["minimax"]["pretrained"]["worst_upstream_risk"]
            < by["none"]["pretrained"]["worst_upstream_risk"]
        )
    # the paired comparison against none, by seed, with its 95% interval (the six CI columns)
    worst = {(r["balancer"], r["seed"]): r["summary"]["worst"] for r in runs}
    diffs = [worst["minimax", s] - worst["none", s] for s in (0, 1)]
    mmx = next(r for r in table if r["balancer"] == "minimax")
    assert float(mmx["worst_diff"]) == pytest.approx(sum(diffs) / 2, rel=1e-6)
    for measure in ("worst", "average"):
        low, mid, high = (float(mmx[f"{measure}_{k}"]) for k in ("ci_low", "diff", "ci_high"))
        assert low < mid < high
    assert "## Paired differences" in md and (tmp_path / "curves.png").stat().st_size > 5000


def _loader_in_a_loky_job() -> list | str:
    import multiprocessing

    from torch.utils.data import DataLoader

    from runner.training import restore_worker_start_method

    multiprocessing.set_start_method("loky", force=True)  # what a job of hydra/launcher=joblib starts with
    restore_worker_start_method()
    try:
        return [b.tolist() for b in DataLoader(list(range(4)), batch_size=2, num_workers=1)]
    except Exception as exc:  # noqa: BLE001 - the failure is the value compared
        return repr(exc)


def test_dataloader_workers_start_inside_a_joblib_sweep_job():
    """`hydra/launcher=joblib` with data.num_workers > 0 (the MM-MAE default) used to fail at the first batch."""
    from joblib import Parallel, delayed

    # without restore_worker_start_method this returns "AttributeError(\"'Process' object has no attribute 'env'\")"
    (batches,) = Parallel(n_jobs=1, backend="loky")(delayed(_loader_in_a_loky_job)() for _ in range(1))
    assert batches == [[0, 1], [2, 3]]


def test_an_unknown_stage_names_every_stage(tmp_path):
    from helpers import run_pipeline

    with pytest.raises(ConfigError) as err:
        run_pipeline(["experiment=convex", "stage=evaluate"], tmp_path)
    assert str(err.value) == (
        "stage must be one of all, pretrain, finetune, pseudo_label, dashboard, report, nsp_cues, plan; "
        "got stage=evaluate."
    )


@pytest.mark.parametrize("sweep_dir", [None, "no_such_folder"])
def test_report_stage_without_a_sweep_folder_names_the_key(tmp_path, sweep_dir):
    from helpers import run_pipeline

    with pytest.raises(
        ConfigError, match=r"stage=report needs report\.sweep_dir=.*, got (None|.*no_such_folder)\.$"
    ):
        run_pipeline(
            ["stage=report", f"report.sweep_dir={tmp_path / sweep_dir if sweep_dir else 'null'}"], tmp_path
        )


@pytest.mark.slow
def test_report_stage_rebuilds_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (b, seed, worst) in enumerate([("none", 0, 1.0), ("none", 1, 3.0), ("minimax", 0, 0.5)]):
        d = sweep / str(i)
        d.mkdir(parents=True)
        res = {
            "experiment": "x",
            "balancer": b,
            "seed": seed,
            "downstream": {"t": {"metrics": {"m": worst}, "primary": "m", "higher_is_better": False}},
            "summary": {"worst": worst, "average": worst, "higher_is_better": False},
        }
        (d / "results.json").write_text(json.dumps(res))
    (sweep / "3").mkdir()  # an interrupted run: no results.json
    # the README's command
    proc = run_cli(["stage=report", f"report.sweep_dir={sweep}", f"hydra.run.dir={tmp_path / 'out'}"])
    assert proc.returncode == 0, proc.stderr
    md = (sweep / "summary.md").read_text()
    assert md in proc.stdout  # the table is printed too
    assert "| none | 2 | 2 +- 1.4" in md
    assert "**0.5 +- n/a** (-1.5)" in md  # best (lowest) marked, difference against none; one seed: no std


@pytest.mark.slow
def test_negative_alpha_fails_with_one_sentence_and_no_results(tmp_path):
    proc = run_cli(
        ["experiment=convex", "debug=smoke", "logger=none", "balancer.alpha=-1", f"hydra.run.dir={tmp_path}"]
    )
    assert proc.returncode == 1
    assert "error: balancer.alpha must be >= 0 (or inf), got -1.0." in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_unknown_balancer_lists_the_valid_choices(tmp_path):
    proc = run_cli(["experiment=convex", "balancer=adamw", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0
    assert "Could not find 'balancer/adamw'" in proc.stderr
    for choice in ("minimax", "none", "gradnorm", "uncertainty", "dwa", "upgrad"):
        assert choice in proc.stderr


def test_loss_normalisation_keys_reach_the_balancer(tmp_path):
    """balancer.reference / reference_from (a run dir's results.json, matched by task name) from the command
    line; a wrong length or a missing file names its key."""
    import json

    from runner.factories import build_pretraining

    base = ["experiment=convex", "balancer=groupdro", "balancer.normalize=reference"]
    _, module = build_pretraining(compose_config([*base, "balancer.reference=[1,2,3,4]"], tmp_path))
    assert module.aggregator.balancer.reference.tolist() == [1.0, 2.0, 3.0, 4.0]
    (tmp_path / "ref").mkdir()
    upstream = {f"task{t}": 0.5 * t for t in reversed(range(4))}
    (tmp_path / "ref" / "results.json").write_text(json.dumps({"upstream": upstream}))
    _, module = build_pretraining(
        compose_config([*base, f"balancer.reference_from={tmp_path / 'ref'}"], tmp_path)
    )
    assert module.aggregator.balancer.reference.tolist() == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(ConfigError, match=r"balancer\.reference must give 4 finite losses"):
        build_pretraining(compose_config([*base, "balancer.reference=[1,2]"], tmp_path))
    with pytest.raises(
        ConfigError, match=r"balancer\.reference_from: .*nowhere.*results\.json does not exist"
    ):
        build_pretraining(
            compose_config([*base, f"balancer.reference_from={tmp_path / 'nowhere'}"], tmp_path)
        )


def test_zero_tasks_and_bad_temperature_name_their_keys(tmp_path):
    from runner.factories import build_pretraining

    with pytest.raises(ConfigError, match="data.num_tasks"):
        build_pretraining(compose_config(["experiment=convex", "data.num_tasks=0"], tmp_path))
    with pytest.raises(ConfigError, match="balancer.temperature"):
        build_pretraining(
            compose_config(["experiment=convex", "balancer=dwa", "balancer.temperature=0"], tmp_path)
        )


@pytest.mark.slow
def test_tensorboard_logger_writes_event_files(tmp_path):
    from helpers import run_pipeline

    from runner.figures import read_history

    run_pipeline(["experiment=convex", "debug=smoke", "logger=tensorboard"], tmp_path)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert read_history(tmp_path)["step"] == [0, 1, 2, 3]  # with csv/metrics.csv: the sweep's curves


@pytest.mark.slow
def test_checkpoint_that_is_not_one_or_does_not_fit_fails_with_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    proc = run_cli(
        ["experiment=convex", "logger=none", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'a'}"]
    )
    assert (
        proc.returncode == 1
        and f"error: checkpoint {bad} is not a PyTorch/Lightning checkpoint" in proc.stderr
    )
    assert not (tmp_path / "a" / "results.json").exists()
    from helpers import run_pipeline

    from utils.errors import DataError

    run_pipeline(["experiment=convex", "debug=smoke", "logger=none"], tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    with pytest.raises(DataError, match="does not fit experiment 'convex'.*'model.theta'"):
        run_pipeline(
            ["experiment=convex", "debug=smoke", "logger=none", "data.dim=3", f"ckpt_path={last}"],
            tmp_path / "c",
        )
    assert not (tmp_path / "c" / "results.json").exists()


@pytest.mark.slow
def test_finetune_stage_restarts_from_a_pretraining_checkpoint(tmp_path):
    from helpers import run_pipeline

    full = run_pipeline(["experiment=convex", "debug=smoke", "logger=none"], tmp_path / "full")
    ckpt = tmp_path / "full" / "checkpoints" / "last.ckpt"
    again = run_pipeline(
        ["experiment=convex", "debug=smoke", "logger=none", "stage=finetune", f"pretrained_ckpt={ckpt}"],
        tmp_path / "ft",
    )
    assert again["downstream"] == full["downstream"]
    assert again["upstream"] == full["upstream"]  # balancer history restored from the checkpoint


@pytest.mark.slow
def test_same_seed_gives_the_same_results_twice(tmp_path):
    from helpers import run_pipeline

    a = run_pipeline(["experiment=convex", "debug=smoke", "logger=none", "seed=3"], tmp_path / "a")
    b = run_pipeline(["experiment=convex", "debug=smoke", "logger=none", "seed=3"], tmp_path / "b")
    c = run_pipeline(["experiment=convex", "debug=smoke", "logger=none", "seed=4"], tmp_path / "c")
    for r in (a, b, c):
        r.pop("cost")
    assert a == b
    assert a["downstream"] != c["downstream"]


@pytest.mark.slow
def test_pos_bert_with_fresh_caches_gives_the_same_results_twice(tmp_path):
    """A user with an empty cache gets the numbers of another user's: the trained tokenizer, the tagged corpus,
    the pairs and the masks are functions of the seed (tokenizers' trainer alone is not, see train_wordpiece)."""
    from helpers import run_pipeline

    runs = [
        run_pipeline(
            ["debug=smoke", "logger=none", "balancer=none", f"paths.cache_dir={tmp_path / k}"], tmp_path / k
        )
        for k in ("a", "b")
    ]
    for r in runs:
        r.pop("cost"), r.pop("overrides")
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_nan_loss_stops_naming_task_and_step_without_results(tmp_path):
    proc = run_cli(
        ["experiment=convex", "debug=smoke", "logger=none", "data.sigma=nan", f"hydra.run.dir={tmp_path}"]
    )
    assert proc.returncode == 1
    assert "error: task 'task0' loss is nan" in proc.stderr and "at step 0" in proc.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_ddp_on_cpu_two_processes_single_results(tmp_path):
    proc = run_cli(
        ["experiment=convex", "debug=smoke", "logger=csv", "trainer=ddp_cpu", f"hydra.run.dir={tmp_path}"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["downstream"]) == 8 and res["cost"]["steps"] == 4
    assert (tmp_path / "train_ddp_process_1.log").exists()  # rank 1 ran in the same run directory
    assert list(tmp_path.rglob("results.json*")) == [tmp_path / "results.json"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
def test_ddp_two_cpu_processes_apply_the_same_weights_from_global_mean_losses(tmp_path, experiment):
    """Both experiments under trainer=ddp_cpu (2 gloo processes, 3 steps): at every step both ranks used the
    same per-task losses, equal to the global mean (sum of both ranks' sums / sum of their counts), and
    applied the same task weights (to float32 rounding); one results.json. (That this equals one process on the same global batch
    is tested at the callback level, test_aggregation.py.)"""
    run_dir = tmp_path / "run"
    proc = run_cli(
        [f"experiment={experiment}", "debug=smoke", "logger=none", "stage=pretrain", "trainer=ddp_cpu",
         "trainer.max_steps=3", f"aggregation.trace_dir={tmp_path / 'trace'}", f"hydra.run.dir={run_dir}"],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [[json.loads(line) for line in (tmp_path / "trace" / f"rank{r}.jsonl").open()] for r in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [0, 1, 2]
    saw_different_data = False
    for r0, r1 in zip(*ranks):
        assert r0["loss"] == r1["loss"]  # the global mean losses: bit-identical on both ranks
        # the weights computed from them agree to float32 rounding: torch's CPU softmax/exp kernels have given
        # results a few ulps apart on the two processes (pronoun 0.11250933 vs 0.11250927), while local losses
        # instead of the global mean would move them by ~1e-2
        assert r0["weight"] == {t: pytest.approx(w, rel=1e-6, abs=1e-9) for t, w in r1["weight"].items()}
        for task, mean in r0["loss"].items():
            total = r0["local_count"][task] + r1["local_count"][task]
            if total:
                assert mean == pytest.approx(
                    (r0["local_sum"][task] + r1["local_sum"][task]) / total, rel=1e-5
                )
        saw_different_data |= r0["local_sum"] != r1["local_sum"]
    assert saw_different_data  # the ranks trained on different shards of the batch
    assert list(run_dir.rglob("results.json*")) == [run_dir / "results.json"]


@pytest.mark.slow
def test_sweep_over_a_second_key_splits_rows_and_pretrain_stage_reports_cost(tmp_path):
    from runner.tables import build_table, collect

    proc = run_cli(
        ["-m", "experiment=convex", "debug=smoke", "logger=none", "balancer=none,minimax", "trainer.max_steps=3,5",
         f"hydra.sweep.dir={tmp_path / 'a'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = build_table(collect(tmp_path / "a"))["rows"]
    # grouped by length, `none` first in each group: the layout of Table 2
    assert list(rows) == [f"{b} (trainer.max_steps={n})" for n in (3, 5) for b in ("none", "minimax")]
    md = (tmp_path / "a" / "summary.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| minimax (trainer.max_steps=5)"))
    none5 = rows["none (trainer.max_steps=5)"]["worst"][0]
    mmx5 = rows["minimax (trainer.max_steps=5)"]["worst"][0]
    assert f"({mmx5 - none5:+.3g})" in line  # compared with `none` of the same length
    assert mmx5 != pytest.approx(none5, rel=1e-4)  # the two balancers' runs differ
    proc = run_cli(
        ["-m", "experiment=convex", "debug=smoke", "logger=none", "stage=pretrain", "balancer=none,minimax",
         f"hydra.sweep.dir={tmp_path / 'b'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(next((tmp_path / "b").rglob("results.json")).read_text())
    assert res["stage"] == "pretrain" and res["downstream"] == {} and res["cost"]["steps"] == 4
    assert "| minimax |" in (tmp_path / "b" / "summary.md").read_text().split("Cost of")[1]


def _history_losses(history) -> tuple[list[str], list[list[float | None]]]:
    """The balanced tasks (those with a weight) and, per step, their losses (None: absent)."""
    names = list(history[0]["weight"])
    return names, [[h["loss"].get(n) for n in names] for h in history]


def _check_minimax_history(history):
    """alpha = 1 (constant, no EMA): w = softmax(L) over the tasks seen so far, an absent task's last loss
    standing in for its current one (never-seen tasks weigh 0)."""
    names, steps = _history_losses(history)
    for h, want in zip(history, minimax_weights(steps, alpha=1.0)):
        weights = list(h["weight"].values())
        assert weights == pytest.approx(want, rel=1e-4, abs=1e-7)
        known = [w for w, e in zip(weights, want) if e > 0]
        assert max(known) - min(known) > 0.01  # unequal losses, unequal weights: not `none`


def _check_dwa_history(history, window=2, temperature=2.0):
    """w = softmax(r / temperature), r_t = Lbar_t(e-1) / Lbar_t(e-2) over windows of `window` steps; uniform
    for the first two windows (a task absent a whole window keeps its previous mean; in the first window
    it gets the mean of the others' means)."""
    _, steps = _history_losses(history)
    means = dwa_window_means(steps, window)
    for k, (h, want) in enumerate(zip(history, dwa_weights(steps, window, temperature))):
        weights = list(h["weight"].values())
        assert weights == pytest.approx(want, rel=1e-4)
        if k >= 2 * window:  # the task whose loss fell least weighs most
            r = [a / b for a, b in zip(means[k // window - 1], means[k // window - 2])]
            assert weights[r.index(max(r))] == max(weights)


def _check_gradnorm_history(history):
    """softmax(p) with p = 0 at the first step, then moved by GradNorm's update: not `none`."""
    assert_uniform_then_moving([list(h["weight"].values()) for h in history], tol=1e-5)


HISTORY_CHECKS = {
    "minimax": _check_minimax_history,
    "dwa": _check_dwa_history,
    "gradnorm": _check_gradnorm_history,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, balancer, extra",
    [
        ("mm_mae", "minimax", []),
        ("mm_mae", "gradnorm", []),
        ("pos_bert", "minimax", ["data.loader.batch_size=8", "data.loader.num_workers=2"]),
        ("pos_bert", "dwa", ["data.loader.batch_size=8", "balancer.window=2"]),
    ],
)
def test_pretraining_resumed_mid_epoch_ends_like_the_run_left_alone(tmp_path, experiment, balancer, extra):
    """Smoke pre-training, 6 steps: the run's step-3 checkpoint (mid-epoch; what a run killed there leaves)
    resumed to step 6 ends with the parameters, balancer state and logged history of the run left alone.
    MM-MAE's token split and dropout draw from the restored RNG; PoS-BERT's masks are a function of the seed
    and the batch's examples; both loaders resume at their batch."""
    import torch
    from helpers import run_pipeline

    common = [f"experiment={experiment}", "debug=smoke", "logger=none", "stage=pretrain", f"balancer={balancer}",
              "trainer.deterministic=true", "checkpoint.every_n_train_steps=3", "trainer.max_steps=6", *extra]  # fmt: skip
    run_pipeline(common, tmp_path / "straight")
    ckpt = next((tmp_path / "straight" / "checkpoints").glob("step3.ckpt"))
    loader = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    main = (
        loader["_snapshot"]["_main_snapshot"] if "_snapshot" in loader else loader
    )  # with / without workers
    assert (
        main["_sampler_iter_yielded"] > 0 and not loader["_iterator_finished"]
    )  # mid-epoch, not at a boundary
    run_pipeline([*common, f"ckpt_path={ckpt}"], tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    torch.testing.assert_close(a["state_dict"], b["state_dict"])
    agg_a, agg_b = a["callbacks"]["LossAggregation"], b["callbacks"]["LossAggregation"]
    torch.testing.assert_close(agg_a["balancer"], agg_b["balancer"])
    assert agg_a["recent"] == agg_b["recent"] and len(agg_a["recent"]) == 6
    HISTORY_CHECKS[balancer](agg_a["recent"])  # the weights applied are the method's, not `none`'s
