"""The sweep report's paired statistics, noise floor, random-init gap and N-curves, on synthetic results.json."""

import csv
import json
import math

import pytest
from scipy import stats

from runner.report import write_summary
from runner.tables import build_table, collect, curve_frame


def _run(sweep, name, balancer, seed, worst, average, higher=True, overrides=(), **summary):
    d = sweep / name
    d.mkdir(parents=True)
    res = {
        "experiment": "mm_mae",
        "balancer": balancer,
        "seed": seed,
        "stage": "all",
        "overrides": [f"balancer={balancer}", f"seed={seed}", *overrides],
        "downstream": {"t": {"metrics": {"m": worst}, "primary": "m", "higher_is_better": higher}},
        "summary": {"worst": worst, "average": average, "higher_is_better": higher, **summary},
    }
    (d / "results.json").write_text(json.dumps(res))
    return d


def _csv(sweep):
    return {r["balancer"]: r for r in csv.DictReader((sweep / "summary.csv").read_text().splitlines())}


def _t(diffs):
    """What the report must write: mean and the 95% Student-t interval of the paired differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    half = stats.t.ppf(0.975, n - 1) * stats.tstd(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def _cells(md, label):
    """The cells of ``label``'s line in the "Paired differences" table of summary.md."""
    line = next(x for x in md.split("## Paired differences")[1].splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_paired_difference_vs_none_pairs_by_seed_with_a_t_interval(tmp_path):
    none_w, none_a = [0.5, 0.6, 0.7], [0.8, 0.8, 0.9]
    mmx_w, mmx_a = [0.6, 0.72, 0.79], [0.85, 0.75, 0.93]  # worst: all better; average: straddles 0
    for s in range(3):  # none's directories in reverse seed order: pairing by position would be wrong
        _run(tmp_path, f"a{2 - s}", "none", s, none_w[s], none_a[s])
        _run(tmp_path, f"b{s}", "minimax", s, mmx_w[s], mmx_a[s])
    _run(tmp_path, "b3", "minimax", 3, 0.1, 0.1)  # a seed `none` lacks: not paired
    write_summary(tmp_path, figures=False)
    row = _csv(tmp_path)["minimax"]
    assert row["pairs"] == "3"
    for m, a, b in (("worst", mmx_w, none_w), ("average", mmx_a, none_a)):
        mean, low, high = _t([x - y for x, y in zip(a, b)])
        assert float(row[f"{m}_diff"]) == pytest.approx(mean)
        assert float(row[f"{m}_ci_low"]) == pytest.approx(low)
        assert float(row[f"{m}_ci_high"]) == pytest.approx(high)
    assert float(row["worst_ci_low"]) > 0 and float(row["average_ci_low"]) < 0 < float(row["average_ci_high"])
    assert _csv(tmp_path)["none"]["worst_diff"] == "" and _csv(tmp_path)["none"]["pairs"] == ""
    p_worst = stats.ttest_rel(mmx_w, none_w).pvalue
    p_average = stats.ttest_rel(mmx_a, none_a).pvalue
    assert float(row["worst_p"]) == pytest.approx(p_worst) and float(row["average_p"]) == pytest.approx(
        p_average
    )
    # a family of two (none has no difference): Holm doubles the smaller p, the larger keeps its own
    assert float(row["worst_p_holm"]) == pytest.approx(2 * p_worst) and 2 * p_worst < 0.05
    assert float(row["average_p_holm"]) == pytest.approx(max(2 * p_worst, p_average))
    md = (tmp_path / "summary.md").read_text()
    assert "paired by pre-training seed; [raw 95% Student-t interval over the paired differences]" in md
    assert "2 intervals in this family; * = Holm-adjusted p < 0.05 within its family; positive = better" in md
    worst_cell, average_cell = _cells(md, "minimax")[2:4]
    mean, low, high = _t([x - y for x, y in zip(mmx_w, none_w)])
    assert worst_cell == f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]*"
    assert average_cell.startswith("+0.01 [") and not average_cell.endswith("*")
    assert "worst_gap_random_init" in row and row["worst_gap_random_init"] == ""  # no control in this sweep
    assert "vanilla_worst_diff" not in row and "vs vanilla" not in md


def test_fewer_than_two_pairs_gives_a_difference_without_interval(tmp_path):
    _run(tmp_path, "a", "none", 0, 0.5, 0.5)
    _run(tmp_path, "b", "minimax", 0, 0.75, 0.5)
    write_summary(tmp_path, figures=False)
    row = _csv(tmp_path)["minimax"]
    assert row["pairs"] == "1" and float(row["worst_diff"]) == pytest.approx(0.25)
    assert row["worst_ci_low"] == row["worst_ci_high"] == ""
    assert _cells((tmp_path / "summary.md").read_text(), "minimax")[2] == "+0.25"


def test_vanilla_row_adds_prefixed_columns_and_a_section(tmp_path):
    values = {"none": [0.5, 0.6], "vanilla": [0.4, 0.45], "minimax": [0.7, 0.9]}
    for b, ws in values.items():
        for s, w in enumerate(ws):
            _run(tmp_path, f"{b}{s}", b, s, w, w / 2)
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    mean, low, high = _t([0.7 - 0.4, 0.9 - 0.45])
    assert float(rows["minimax"]["vanilla_worst_diff"]) == pytest.approx(mean)
    assert float(rows["minimax"]["vanilla_worst_ci_low"]) == pytest.approx(low)
    assert float(rows["minimax"]["vanilla_average_ci_high"]) == pytest.approx(high / 2)
    assert float(rows["none"]["vanilla_worst_diff"]) == pytest.approx(0.125)  # none is compared too
    assert rows["vanilla"]["vanilla_worst_diff"] == ""
    assert float(rows["minimax"]["worst_diff"]) == pytest.approx(0.25)  # vs none unchanged
    md = (tmp_path / "summary.md").read_text()
    assert "## Paired differences vs vanilla" in md
    assert next(x for x in md.split("vs vanilla")[-1].splitlines() if x.startswith("| minimax |")).startswith(
        f"| minimax | 2 | {mean:+.3g} ["
    )


def test_gap_to_random_init_pairs_by_seed_and_falls_back_to_means(tmp_path):
    control = ["stage=finetune", "pretrained_ckpt=random"]
    ri_w = [0.2, 0.3, 0.25]
    for s in range(3):
        _run(tmp_path / "a", f"n{s}", "none", s, 0.5 + 0.1 * s, 0.6)
        _run(tmp_path / "a", f"m{s}", "minimax", s, [0.6, 0.65, 0.8][s], 0.7)
        _run(tmp_path / "a", f"r{s}", "random_init", s, ri_w[s], 0.3, overrides=control)
    table = build_table(collect(tmp_path / "a"))
    assert list(table["rows"]) == [
        "none",
        "minimax",
        "random_init",
    ]  # stage/pretrained_ckpt do not split rows
    write_summary(tmp_path / "a", figures=False)
    rows = _csv(tmp_path / "a")
    mean, low, high = _t([w - r for w, r in zip([0.6, 0.65, 0.8], ri_w)])
    assert rows["minimax"]["random_init_pairs"] == "3"
    assert float(rows["minimax"]["worst_gap_random_init"]) == pytest.approx(mean)
    assert float(rows["minimax"]["worst_gap_random_init_ci_low"]) == pytest.approx(low)
    assert float(rows["minimax"]["worst_gap_random_init_ci_high"]) == pytest.approx(high)
    assert float(rows["none"]["average_gap_random_init"]) == pytest.approx(0.3)
    assert rows["random_init"]["worst_gap_random_init"] == ""
    mean, _, _ = _t([r - (0.5 + 0.1 * s) for s, r in enumerate(ri_w)])
    assert float(rows["random_init"]["worst_diff"]) == pytest.approx(mean)  # the control vs none as well
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "worst gap to random_init" in md and "(unpaired)" not in md

    for s in range(2):  # a control run with other seeds than the pre-training runs
        _run(tmp_path / "b", f"n{s}", "none", s, 0.5, 0.6 + 0.2 * s)
        _run(tmp_path / "b", f"r{s}", "random_init", 10 + s, 0.1 * s, 0.3, overrides=control)
    write_summary(tmp_path / "b", figures=False)
    row = _csv(tmp_path / "b")["none"]
    assert row["random_init_pairs"] == "0" and row["worst_gap_random_init_ci_low"] == ""
    assert float(row["worst_gap_random_init"]) == pytest.approx(0.5 - 0.05)
    assert float(row["average_gap_random_init"]) == pytest.approx(0.7 - 0.3)
    md = (tmp_path / "b" / "summary.md").read_text()
    assert _cells(md, "none")[5] == "+0.45 (unpaired)" and "difference of means" in md


def test_a_control_without_the_pretraining_overrides_is_compared_with_every_group(tmp_path):
    # the control run does not pre-train, so it lacks the trainer.max_steps override that splits the rows
    control = ["stage=finetune", "pretrained_ckpt=random"]
    for s in range(2):
        for n in (3, 5):
            _run(
                tmp_path,
                f"n{n}_{s}",
                "none",
                s,
                0.5 + 0.1 * s + n / 100,
                0.6,
                overrides=[f"trainer.max_steps={n}"],
            )
        _run(tmp_path, f"r{s}", "random_init", s, 0.2, 0.3, overrides=control)
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    assert set(rows) == {
        "none (trainer.max_steps=3)",
        "none (trainer.max_steps=5)",
        "random_init (trainer.max_steps=-)",
    }
    for n in (3, 5):
        row = rows[f"none (trainer.max_steps={n})"]
        assert (
            float(row["worst_gap_random_init"]) == pytest.approx(0.35 + n / 100)
            and row["random_init_pairs"] == "2"
        )
    assert (
        rows["random_init (trainer.max_steps=-)"]["worst_diff"] == ""
    )  # two `none` rows: no single reference


def test_noise_floor_is_the_mean_over_runs_of_the_finetune_seed_std(tmp_path):
    per = [[0.5, 0.7, 0.6], [0.4, 0.4, 0.7]]
    for s, p in enumerate(per):
        d = _run(tmp_path, f"m{s}", "minimax", s, 0.5, 0.6, per_seed={"worst": p, "average": [0.6, 0.6, 0.6]})
        res = json.loads((d / "results.json").read_text())
        res["downstream"]["t"]["per_seed"] = p[::-1]
        (d / "results.json").write_text(json.dumps(res))
        _run(tmp_path, f"n{s}", "none", s, 0.5, 0.6, per_seed={"worst": [0.5], "average": [0.6]})
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    expected = (stats.tstd(per[0]) + stats.tstd(per[1])) / 2
    assert float(rows["minimax"]["worst_ft_std"]) == pytest.approx(expected)
    assert float(rows["minimax"]["t_ft_std"]) == pytest.approx(expected)
    assert float(rows["minimax"]["average_ft_std"]) == pytest.approx(0.0)
    assert rows["none"]["worst_ft_std"] == "" and rows["none"]["average_ft_std"] == ""  # one fine-tuning seed
    assert _cells((tmp_path / "summary.md").read_text(), "minimax")[4] == f"{expected:.2g} / 0"


def test_rows_split_by_another_key_pair_within_their_group(tmp_path):
    # none is much worse at 5 steps: a comparison across groups would give another difference
    for n, base in ((3, 0.5), (5, 0.1)):
        for s in range(2):
            over = [f"trainer.max_steps={n}"]
            _run(tmp_path, f"n{n}_{s}", "none", s, base + 0.01 * s, base, overrides=over)
            _run(tmp_path, f"m{n}_{s}", "minimax", s, base + 0.2 + 0.03 * s, base, overrides=over)
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    for n in (3, 5):
        row = rows[f"minimax (trainer.max_steps={n})"]
        mean, low, _ = _t([0.2, 0.22])
        assert float(row["worst_diff"]) == pytest.approx(mean) and float(
            row["worst_ci_low"]
        ) == pytest.approx(low)
        assert row["pairs"] == "2"


def test_lower_is_better_convex_sweep_gets_the_columns_and_curves_from_by_metric(tmp_path):
    def by_metric(scale):
        return {f"excess_risk@N={n}": {"worst": scale / n, "average": scale / (2 * n)} for n in (8, 64)}

    for s in range(3):
        _run(tmp_path, f"n{s}", "none", s, 1.0 + s, 0.5 + s, higher=False, by_metric=by_metric(8.0 + s))
        _run(tmp_path, f"m{s}", "minimax", s, 0.5 + s, 0.5 + s, higher=False, by_metric=by_metric(4.0))
    for d in tmp_path.iterdir():  # the convex metric names
        res = json.loads((d / "results.json").read_text())
        res["downstream"] = {"v": {"metrics": {"excess_risk": 1.0}, "primary": "excess_risk"}}
        (d / "results.json").write_text(json.dumps(res))
    write_summary(tmp_path)
    row = _csv(tmp_path)["minimax"]
    assert float(row["worst_diff"]) == pytest.approx(-0.5) and float(row["average_diff"]) == pytest.approx(
        0.0
    )
    # three equal differences: no spread, so the raw interval is the point and the p-value is undefined
    assert (
        row["worst_ci_low"] == row["worst_ci_high"] == "-0.5" and row["worst_p"] == row["worst_p_holm"] == ""
    )
    md = (tmp_path / "summary.md").read_text()
    assert "negative = better" in md and "positive = better" not in md
    assert _cells(md, "minimax")[2] == "-0.5 (constant)"  # no zero-width interval, no star
    assert "(constant) = the same difference in every pair: no spread, so no p-value and no star." in md
    assert (tmp_path / "curves.png").stat().st_size > 0 and "![curves](curves.png)" in md
    curves = curve_frame(collect(tmp_path)).set_index(["row", "measure", "N"])
    none8 = curves.loc[("none", "worst", 8)]
    mean, low, _ = _t([(8.0 + s) / 8 for s in range(3)])
    assert none8["mean"] == pytest.approx(mean) and none8["half"] == pytest.approx(mean - low)
    assert curves.loc[("minimax", "average", 64), "mean"] == pytest.approx(4.0 / 128)


def test_curves_png_from_summary_curve_with_a_band_over_seeds(tmp_path):
    for s in range(2):
        curve = {"32": {"worst": 0.3 + 0.1 * s, "average": 0.5}, "128": {"worst": 0.6, "average": 0.7}}
        _run(tmp_path, f"m{s}", "minimax", s, 0.6, 0.7, curve=curve)
    _run(tmp_path, "n0", "none", 0, 0.5, 0.6, curve={"32": {"worst": 0.2, "average": 0.4}})
    write_summary(tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "![curves](curves.png)" in (tmp_path / "summary.md").read_text()
    curves = curve_frame(collect(tmp_path)).set_index(["row", "measure", "N"])
    mean, low, _ = _t([0.3, 0.4])
    assert curves.loc[("minimax", "worst", 32), "mean"] == pytest.approx(mean)
    assert curves.loc[("minimax", "worst", 32), "half"] == pytest.approx(mean - low)
    assert curves.loc[("minimax", "worst", 128), "half"] == pytest.approx(0.0)
    assert math.isnan(curves.loc[("none", "worst", 32), "half"])  # one seed: no band


def test_no_curves_png_without_curves(tmp_path):
    _run(tmp_path, "n0", "none", 0, 0.5, 0.6)
    write_summary(tmp_path)
    assert not (tmp_path / "curves.png").exists()
    assert "curves.png" not in (tmp_path / "summary.md").read_text()


def test_upstream_columns_average_the_runs_upstream_eval_and_weight_entropy(tmp_path):
    nsp, gain, ent = (
        {"none": [0.8, 0.9], "minimax": [0.7, 0.75]},
        {"none": [0.6, 1.0], "minimax": [0.2, 0.4]},
        1.5,
    )
    for b in ("none", "minimax"):
        for s in range(2):
            d = _run(tmp_path, f"{b}{s}", b, s, 0.5, 0.6)
            res = json.loads((d / "results.json").read_text())
            res["upstream_eval"] = {"nsp_accuracy": nsp[b][s], "min_context_gain": gain[b][s]}
            res["weights"] = {"mean_entropy": ent + s}
            (d / "results.json").write_text(json.dumps(res))
    _run(tmp_path, "ctl", "random_init", 0, 0.4, 0.5)  # no pre-training: no upstream columns
    md = write_summary(tmp_path, figures=False).read_text()
    rows = _csv(tmp_path)
    assert float(rows["none"]["nsp_accuracy_mean"]) == pytest.approx(0.85)
    assert float(rows["minimax"]["min_context_gain_mean"]) == pytest.approx(0.3)
    assert float(rows["minimax"]["min_context_gain_std"]) == pytest.approx(stats.tstd([0.2, 0.4]))
    assert float(rows["none"]["weight_entropy_mean"]) == pytest.approx(2.0)
    assert rows["random_init"]["nsp_accuracy_mean"] == ""
    line = next(x for x in md.splitlines() if x.startswith("| minimax | 0.725"))
    assert "0.300" in line and "2.000" in line


def test_report_metrics_get_the_worst_case_table_paired_intervals_csv_columns_and_theory_png(tmp_path):
    """The convex runs list ``report_metrics``: their worst cases get a mean +- std table, the same paired
    t-intervals against none (summary.md and summary.csv) and theory.png."""
    metrics = ["initial_risk", "sample_complexity", "excess_risk@N=8"]
    init = {"none": [10.0, 12.0, 11.0], "minimax": [8.0, 9.5, 9.0]}
    comp = {"none": [32.0, 32.0, 128.0], "minimax": [8.0, 32.0, 32.0]}
    for b in ("none", "minimax"):
        for s in range(3):
            d = _run(tmp_path, f"{b}{s}", b, s, init[b][s] / 2, 1.0, higher=False)
            res = json.loads((d / "results.json").read_text())
            res["summary"]["by_metric"] = {
                "initial_risk": {"worst": init[b][s], "average": 1.0},
                "sample_complexity": {"worst": comp[b][s], "average": 1.0},
                "excess_risk@N=8": {"worst": init[b][s] / 2, "average": 1.0},
                "not_reported": {"worst": 99.0, "average": 99.0},
            }
            res["report_metrics"] = metrics
            res["downstream_settings"] = {"eps": 0.5, "delta": 0.1, "draws": 20, "sample_sizes": [8, 32, 128]}
            (d / "results.json").write_text(json.dumps(res))
    write_summary(tmp_path)
    row = _csv(tmp_path)["minimax"]
    for m in metrics:
        values = init if m != "sample_complexity" else comp
        scale = 0.5 if m == "excess_risk@N=8" else 1.0
        mean, low, high = _t([scale * (a - b) for a, b in zip(values["minimax"], values["none"])])
        assert float(row[f"{m}_worst_diff"]) == pytest.approx(mean)
        assert float(row[f"{m}_worst_ci_low"]) == pytest.approx(low)
        assert float(row[f"{m}_worst_ci_high"]) == pytest.approx(high)
        assert float(row[f"{m}_worst_mean"]) == pytest.approx(scale * sum(values["minimax"]) / 3)
    assert "not_reported_worst_diff" not in row
    md = (tmp_path / "summary.md").read_text()
    assert "## Worst case per metric" in md and "N_lambda(theta_0, eps=0.5, delta=0.1)" in md
    line = next(
        x for x in md.split("## Paired differences per metric")[1].splitlines() if x.startswith("| minimax")
    )
    cells = [c.strip() for c in line.strip("|").split("|")]
    mean, low, high = _t([a - b for a, b in zip(init["minimax"], init["none"])])
    assert cells[2] == f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]*"
    assert not cells[3].endswith("*")  # the sample complexity's interval contains 0
    assert (tmp_path / "theory.png").stat().st_size > 0 and "![theory](theory.png)" in md


def test_no_per_metric_section_or_theory_png_without_report_metrics(tmp_path):
    for s in range(2):
        _run(tmp_path, f"n{s}", "none", s, 0.5, 0.6)
        _run(tmp_path, f"m{s}", "minimax", s, 0.6, 0.6)
    write_summary(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "per metric" not in md and not (tmp_path / "theory.png").exists()


def _metrics_csv(run_dir, text):
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "csv" / "metrics.csv").write_text(text)


def test_curves_are_read_from_the_runs_csv_log_merging_its_sparse_rows_by_step(tmp_path):
    """Lightning's metrics.csv: each log call its own row (other cells empty), downstream fits on their own step
    axis, steps 2-3 logged again after a resume, a line cut short by a kill: one value per step and column."""
    from runner.figures import read_history

    _metrics_csv(
        tmp_path,
        "epoch,step,train/loss/a,train/loss/b,train/weight/a,train/weight/b,lr-SGD,downstream/t/train_loss\n"
        "0,0,2.0,1.0,0.6,0.4,,\n"
        "0,0,,,,,0.1,\n"
        "0,1,1.5,,0.7,0.3,,\n"  # b absent from step 1's batch
        "0,2,9.0,9.0,0.5,0.5,,\n"
        "0,3,9.0,9.0,0.5,0.5,,\n"
        "0,2,1.2,0.8,0.55,0.45,,\n"  # resumed from step 2
        "0,3,1.1,0.7,0.5,0.5,,\n"
        ",0,,,,,,5.0\n"  # a downstream fit: step 0 of its own trainer
        "0,4,1.0,0.9,0.6\n"
        "0,5,1.e",  # killed mid-line
    )
    h = read_history(tmp_path)
    assert h["step"] == [0, 1, 2, 3, 4]
    assert h["loss/a"] == [2.0, 1.5, 1.2, 1.1, 1.0] and h["loss/b"][4] == 0.9
    assert h["loss/b"][:1] + h["loss/b"][2:4] == [1.0, 0.8, 0.7] and math.isnan(h["loss/b"][1])
    assert h["weight/a"][:4] == [0.6, 0.7, 0.55, 0.5] and math.isnan(h["weight/b"][4])
    assert set(h) == {"step", "loss/a", "loss/b", "weight/a", "weight/b"}
    assert read_history(tmp_path / "missing") is None


def test_weight_and_loss_figures_only_for_runs_with_a_csv_log(tmp_path, caplog):
    """Runs with csv/metrics.csv get weights.png and upstream_losses.png; a sweep whose runs have none
    (logger=none) gets neither, and one log line says why."""
    for s in range(2):
        _run(tmp_path / "none_logger", f"m{s}", "minimax", s, 0.5, 0.6)
    with caplog.at_level("WARNING", logger="runner.figures"):
        write_summary(tmp_path / "none_logger")
    assert not (tmp_path / "none_logger" / "weights.png").exists()
    assert not (tmp_path / "none_logger" / "upstream_losses.png").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "runner.figures"]
    assert "2 of 2 runs" in line and "csv/metrics.csv" in line and "logger=none" in line
    for s in range(2):
        d = _run(tmp_path / "csv_logger", f"m{s}", "minimax", s, 0.5, 0.6)
        _metrics_csv(
            d, "step,train/loss/a,train/weight/a\n" + "".join(f"{k},{1 / (k + 1)},1.0\n" for k in range(9))
        )
    write_summary(tmp_path / "csv_logger")
    for fig in ("weights.png", "upstream_losses.png"):
        assert (tmp_path / "csv_logger" / fig).stat().st_size > 5000


def test_write_figures_draws_each_figure_the_runs_have_data_for(tmp_path, caplog):
    """curves.png from the summary curves, weights.png and upstream_losses.png from the CSV logs (a run without
    one is named in a warning), downstream.png from the table; no theory.png or figure3.png without their data."""
    from runner.figures import write_figures

    for b in ("none", "minimax"):
        for s in range(2):
            curve = {"32": {"worst": 0.3 + 0.1 * s, "average": 0.5}, "128": {"worst": 0.6, "average": 0.7}}
            d = _run(tmp_path / "sweep", f"{b}{s}", b, s, 0.4, 0.5, curve=curve)
            (d / "csv").mkdir()
            rows = [f"{i},{1 / (i + 1)},{0.5 + 0.01 * i}" for i in range(60)]
            (d / "csv" / "metrics.csv").write_text(
                "\n".join(["step,train/loss/a,train/weight/a", *rows]) + "\n"
            )
    _run(tmp_path / "sweep", "bare", "none", 2, 0.4, 0.5)
    runs = collect(tmp_path / "sweep")
    with caplog.at_level("WARNING", logger="runner.figures"):
        written = write_figures(tmp_path, runs, build_table(runs))
    names = ["curves.png", "weights.png", "upstream_losses.png", "downstream.png"]
    assert written == [tmp_path / n for n in names] and all(p.stat().st_size > 10_000 for p in written)
    assert [r.getMessage().split(" (e.g.")[0] for r in caplog.records] == ["figures: 1 of 5 runs"]
