"""The sweep report's multiplicity control (Holm over each family of intervals), its edge cases (NaN seeds, one
seed, differences without spread), pairing by seed label, the exact Student-t interval, and the multi-task
conventions Delta_m % and mean rank, on synthetic results.json against values computed here independently."""

import json
import math
import statistics

import pytest
from scipy import stats
from test_report import _cells, _csv, _run

from runner.report import write_summary
from runner.statistics import t_test


def _holm(ps):
    """Holm's step-down adjusted p-values, written out: the i-th smallest times (m - i), kept monotone."""
    order = sorted(range(len(ps)), key=ps.__getitem__)
    out, running = [0.0] * len(ps), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(ps) - i) * ps[k]))
        out[k] = running
    return out


def test_a_star_needs_the_holm_adjusted_p_of_its_family_below_005(tmp_path):
    """Three rows vs none: six paired tests in one family. "strong" stays significant after Holm; "weak" has a
    raw interval excluding 0 (raw p about 0.02) that the correction over six tests does not keep."""
    none = [0.50, 0.60, 0.70]
    rows = {
        "strong": ([0.80, 0.905, 1.0], [0.52, 0.6, 0.69]),  # worst differences +0.3, +0.305, +0.3
        "weak": ([0.60, 0.68, 0.82], [0.5, 0.62, 0.69]),  # worst +0.1, +0.08, +0.12
        "null": ([0.45, 0.68, 0.69], [0.52, 0.58, 0.7]),
    }
    for s in range(3):
        _run(tmp_path, f"n{s}", "none", s, none[s], none[s])
        for b, (w, a) in rows.items():
            _run(tmp_path, f"{b}{s}", b, s, w[s], a[s])
    write_summary(tmp_path, figures=False)
    csv_rows = _csv(tmp_path)
    tests = [(b, m) for b in rows for m in ("worst", "average")]
    raw = [stats.ttest_rel(rows[b][("worst", "average").index(m)], none).pvalue for b, m in tests]
    for (b, m), p, adjusted in zip(tests, raw, _holm(raw)):
        assert float(csv_rows[b][f"{m}_p"]) == pytest.approx(p)
        assert float(csv_rows[b][f"{m}_p_holm"]) == pytest.approx(adjusted)
    weak_p = float(csv_rows["weak"]["worst_p"])
    assert float(csv_rows["weak"]["worst_ci_low"]) > 0 and weak_p < 0.05  # raw: excludes 0
    assert float(csv_rows["weak"]["worst_p_holm"]) > 0.05  # but not after the correction
    md = (tmp_path / "summary.md").read_text()
    assert _cells(md, "strong")[2].endswith("]*")
    assert _cells(md, "weak")[2].startswith("+0.1 [+0.") and not _cells(md, "weak")[2].endswith("*")
    assert "6 intervals in this family; * = Holm-adjusted p < 0.05 within its family" in md


def test_families_are_corrected_separately(tmp_path):
    """The comparisons against vanilla form their own family: adding them changes no adjusted p against none."""
    values = {"none": [0.5, 0.6, 0.7], "vanilla": [0.45, 0.62, 0.6], "minimax": [0.7, 0.75, 0.95]}
    for b, ws in values.items():
        for s, w in enumerate(ws):
            _run(tmp_path, f"{b}{s}", b, s, w, w + 0.1 * (s == 1))
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    vs_none = [("vanilla", "worst"), ("vanilla", "average"), ("minimax", "worst"), ("minimax", "average")]
    raw = [float(rows[b][f"{m}_p"]) for b, m in vs_none]
    assert [float(rows[b][f"{m}_p_holm"]) for b, m in vs_none] == pytest.approx(_holm(raw))
    vs_vanilla = [("none", "worst"), ("none", "average"), ("minimax", "worst"), ("minimax", "average")]
    raw = [float(rows[b][f"vanilla_{m}_p"]) for b, m in vs_vanilla]
    assert [float(rows[b][f"vanilla_{m}_p_holm"]) for b, m in vs_vanilla] == pytest.approx(_holm(raw))
    md = (tmp_path / "summary.md").read_text()
    assert md.count("4 intervals in this family") == 2  # under each of the two tables


def test_pairs_by_seed_label_when_the_rows_have_different_seeds(tmp_path):
    """Seeds {0, 1, 2} against {1, 2, 3}: only seeds 1 and 2 pair; pairing by position would give 3 pairs."""
    none = {1: 0.40, 2: 0.55, 3: 0.90}
    mmx = {0: 0.10, 1: 0.50, 2: 0.70}
    for s, w in none.items():
        _run(tmp_path, f"n{s}", "none", s, w, 0.5)
    for s, w in mmx.items():
        _run(tmp_path, f"m{s}", "minimax", s, w, 0.5)
    write_summary(tmp_path, figures=False)
    row = _csv(tmp_path)["minimax"]
    d = [mmx[1] - none[1], mmx[2] - none[2]]  # +0.10, +0.15
    mean = (d[0] + d[1]) / 2
    half = stats.t.ppf(0.975, 1) * statistics.stdev(d) / math.sqrt(2)
    assert row["pairs"] == "2"
    assert float(row["worst_diff"]) == pytest.approx(mean, rel=1e-9)
    assert float(row["worst_ci_low"]) == pytest.approx(mean - half, rel=1e-9)
    assert float(row["worst_ci_high"]) == pytest.approx(mean + half, rel=1e-9)


def test_the_interval_is_students_t_with_the_sample_std_at_three_pairs():
    """n = 3: the t quantile with 2 degrees of freedom (4.30) and the n-1 std; the population std (ddof=0) or
    the normal quantile (1.96) would each give a visibly narrower interval."""
    import pandas as pd

    d = [0.1, 0.4, 0.25]
    mean, low, high, p = t_test(pd.Series(d))
    sd1, sd0 = statistics.stdev(d), statistics.pstdev(d)
    exact = stats.t.ppf(0.975, 2) * sd1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.25, 0.25 - exact, 0.25 + exact), rel=1e-12)
    assert p == pytest.approx(2 * stats.t.sf(0.25 / (sd1 / math.sqrt(3)), 2), rel=1e-12)
    for wrong in (stats.t.ppf(0.975, 2) * sd0 / math.sqrt(3), stats.norm.ppf(0.975) * sd1 / math.sqrt(3)):
        assert high - mean != pytest.approx(wrong, rel=0.05)


def test_a_nan_seed_is_not_counted_as_a_pair_nor_in_the_mean(tmp_path):
    """A run whose worst case is NaN (diverged) drops out of its seed's pair: 2 pairs shown, 2 used."""
    none_w, mmx_w = [0.5, 0.6, 0.7], [0.6, 0.75, math.nan]
    for s in range(3):
        _run(tmp_path, f"n{s}", "none", s, none_w[s], 0.5)
        _run(tmp_path, f"m{s}", "minimax", s, mmx_w[s], 0.6 + 0.01 * s)
    write_summary(tmp_path, figures=False)
    row = _csv(tmp_path)["minimax"]
    assert row["pairs"] == "2"
    assert float(row["worst_diff"]) == pytest.approx(0.125)
    assert float(row["average_diff"]) == pytest.approx(0.105)  # the seed is left out of every measure
    assert float(row["worst_mean"]) == pytest.approx(0.675)  # mean over the finite values
    assert _cells((tmp_path / "summary.md").read_text(), "minimax")[1] == "2"


def test_a_one_seed_row_has_no_std(tmp_path):
    for s in range(2):
        _run(tmp_path, f"n{s}", "none", s, 0.5 + 0.1 * s, 0.5)
    _run(tmp_path, "m0", "minimax", 0, 0.7, 0.6)
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    assert rows["minimax"]["worst_std"] == "" and float(rows["none"]["worst_std"]) == pytest.approx(
        0.1 / 2**0.5
    )
    md = (tmp_path / "summary.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| minimax | 1 |"))
    assert "0.7 +- n/a" in line and "+- 0 " not in line


def test_a_censored_metric_with_the_same_difference_in_every_seed_gets_no_star(tmp_path):
    """The sample complexity is censored at the grid's end: none never reaches eps (96 every seed), minimax at
    the smallest N (8): -88 in every pair, no spread, so no p-value, no star, and a note instead."""
    for b, comp in (("none", 96.0), ("minimax", 8.0)):
        for s in range(3):
            d = _run(tmp_path, f"{b}{s}", b, s, 1.0 + s, 1.0, higher=False)
            res = json.loads((d / "results.json").read_text())
            res["summary"]["by_metric"] = {"sample_complexity": {"worst": comp, "average": comp}}
            res["report_metrics"] = ["sample_complexity"]
            (d / "results.json").write_text(json.dumps(res))
    write_summary(tmp_path, figures=False)
    row = _csv(tmp_path)["minimax"]
    assert float(row["sample_complexity_worst_diff"]) == pytest.approx(-88.0)
    assert row["sample_complexity_worst_p"] == row["sample_complexity_worst_p_holm"] == ""
    assert row["metric_pairs"] == "3"
    md = (tmp_path / "summary.md").read_text()
    section = md.split("## Paired differences per metric")[1]
    assert "| minimax | 3 | -88 (constant) |" in section and "[-88, -88]" not in md
    assert (
        "0 intervals in this family" in section
        and "(constant) = the same difference in every pair" in section
    )


def _task_run(sweep, name, balancer, seed, acc, err):
    """A run with two downstream tasks: accuracy (higher is better) and an error (lower is better)."""
    d = _run(sweep, name, balancer, seed, min(acc, 1 - err), (acc + 1 - err) / 2)
    res = json.loads((d / "results.json").read_text())
    res["downstream"] = {
        "cls": {"metrics": {"acc": acc}, "primary": "acc", "higher_is_better": True},
        "reg": {"metrics": {"err": err}, "primary": "err", "higher_is_better": False},
    }
    (d / "results.json").write_text(json.dumps(res))


def test_delta_m_and_mean_rank_follow_each_tasks_direction(tmp_path):
    """Means over two seeds: none (acc 0.5, err 2.0), minimax (0.6, 1.5), vanilla (0.55, 2.5), gradnorm (0.6,
    2.0). Delta_m % vs none: minimax (100 * 0.1 / 0.5 + 100 * 0.5 / 2.0) / 2 = 22.5; vanilla (10 - 25) / 2 = -7.5;
    gradnorm (20 + 0) / 2 = 10. Ranks on acc: minimax and gradnorm tie at 1.5, vanilla 3, none 4; on err
    (lower is better): minimax 1, none and gradnorm tie at 2.5, vanilla 4."""
    means = {"none": (0.5, 2.0), "minimax": (0.6, 1.5), "vanilla": (0.55, 2.5), "gradnorm": (0.6, 2.0)}
    for b, (acc, err) in means.items():
        for s, shift in enumerate((-0.01, 0.01)):
            _task_run(tmp_path, f"{b}{s}", b, s, acc + shift, err - shift)
    write_summary(tmp_path, figures=False)
    rows = _csv(tmp_path)
    expected = {"none": ("", 3.25), "minimax": (22.5, 1.25), "vanilla": (-7.5, 3.5), "gradnorm": (10.0, 2.0)}
    for b, (delta, rank) in expected.items():
        if delta == "":  # none is the reference itself
            assert rows[b]["delta_m_pct"] == ""
        else:
            assert float(rows[b]["delta_m_pct"]) == pytest.approx(delta)
        assert float(rows[b]["mean_rank"]) == pytest.approx(rank)
    md = (tmp_path / "summary.md").read_text()
    assert "| balancer | seeds | cls | reg | average | worst | Delta_m % vs none | mean rank |" in md
    line = next(x for x in md.splitlines() if x.startswith("| minimax | 2 |"))
    assert line.endswith("| +22.50 | 1.25 |")
