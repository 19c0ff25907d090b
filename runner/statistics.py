"""The statistics of the sweep report: the paired Student-t test of a row against a reference (mean difference,
95% interval, two-sided p-value), Holm's correction over a family of such tests, and the multi-task field's
conventions beside worst and average (LibMTL's Delta_m % and the mean rank over tasks)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: the level of every interval (1 - ALPHA) and of the Holm-adjusted p-values that earn a star
ALPHA = 0.05


def t_test(d: pd.Series) -> tuple[float, float, float, float]:
    """Mean of the paired differences ``d`` (NaN dropped), its 95% Student-t interval and the two-sided p-value
    of the paired t-test against 0: NaN bounds and p with fewer than 2 differences. Differences without spread
    (every pair the same, up to rounding) have no t statistic: their interval is the mean itself and their p NaN."""
    from scipy import stats

    d = d.dropna().astype(float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    if float(d.std(ddof=1)) <= 1e-12 * max(1.0, float(d.abs().max())):
        return mean, mean, mean, math.nan
    res = stats.ttest_1samp(d.to_numpy(), 0.0)
    ci = res.confidence_interval(1 - ALPHA)
    return mean, float(ci.low), float(ci.high), float(res.pvalue)


def t_interval(d: pd.Series) -> tuple[float, float, float]:
    """Mean of the differences ``d`` and its 95% Student-t interval (NaN bounds with fewer than 2)."""
    return t_test(d)[:3]


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of the family ``pvalues`` (statsmodels' ``multipletests``); NaN entries (no
    test) stay NaN and do not count in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, math.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]
    return out


def delta_m(row: dict[str, float], ref: dict[str, float], higher: dict[str, bool]) -> float:
    """LibMTL's ``count_improvement``: the mean over the tasks both rows have of the signed relative change
    ``100 * s_k * (row_k - ref_k) / ref_k``, ``s_k = +1`` where higher is better, else -1 (positive = better).
    NaN without a shared task or where a reference value is 0 (no relative change)."""
    tasks = [t for t in row if t in ref and math.isfinite(row[t]) and math.isfinite(ref[t])]
    if not tasks or any(ref[t] == 0 for t in tasks):
        return math.nan
    sign = {t: 1.0 if higher.get(t, True) else -1.0 for t in tasks}
    return 100.0 * sum(sign[t] * (row[t] - ref[t]) / ref[t] for t in tasks) / len(tasks)


def mean_ranks(values: dict[str, dict[str, float]], higher: dict[str, bool]) -> dict[str, float]:
    """Per row of ``values`` ({row: {task: score}}): its rank among the rows on each task (1 = best, ties share
    the mean of their ranks), averaged over the tasks the row has."""
    import pandas as pd

    frame = pd.DataFrame.from_dict(values, orient="index", dtype=float)
    ranks = pd.DataFrame(
        {t: frame[t].rank(ascending=not higher.get(t, True), method="average") for t in frame.columns},
        index=frame.index,
    )
    return ranks.mean(axis=1).to_dict()


_NAN4 = (math.nan, math.nan, math.nan, math.nan)


def paired(df: pd.DataFrame, row: str, ref: str, measures, unpaired_fallback: bool = False) -> dict:
    """``row - ref`` of each measure (a column of ``df``, one line per run with its ``row`` and ``seed``), paired
    by seed label over the seeds both rows have (runs of one seed averaged) where every measure is finite:
    {pairs, <measure>: (mean, low, high, p)}. With no shared seed and ``unpaired_fallback``, the difference of
    the two rows' means (pairs 0, no interval, no p-value)."""
    a, b = (df[df["row"] == x].groupby("seed")[list(measures)].mean() for x in (row, ref))
    shared = a.index.intersection(b.index)
    if not len(shared) and unpaired_fallback:
        return {"pairs": 0, **{m: (a[m].mean() - b[m].mean(), *_NAN4[1:]) for m in measures}}
    d = (a.loc[shared] - b.loc[shared]).dropna()  # aligned on the seed index, never by position
    return {"pairs": len(d), **{m: t_test(d[m]) for m in measures}}


def put_tests(rec: dict, res: dict, columns: dict[str, tuple[str, str]]) -> None:
    """Write the test ``res[m]`` of :func:`paired` of every measure into ``rec`` as ``mean_col,
    <stem>_ci_low, <stem>_ci_high, <stem>_p`` (``columns``: measure -> (mean_col, stem)); NaN without it."""
    for m, (mean_col, stem) in columns.items():
        rec[mean_col], rec[f"{stem}_ci_low"], rec[f"{stem}_ci_high"], rec[f"{stem}_p"] = res.get(m, _NAN4)


def adjust_families(frame: pd.DataFrame, families: dict[str, list[str]]) -> pd.DataFrame:
    """``frame`` with ``<column>_holm`` beside every p-value column of ``families`` ({name: columns}): the
    p-values Holm-adjusted over all the family's rows and columns at once."""
    frame = frame.copy()
    for cols in families.values():
        adjusted = holm(frame[cols].to_numpy(dtype=float).ravel()).reshape(len(frame), len(cols))
        frame[[f"{c}_holm" for c in cols]] = adjusted
    order = [x for c in frame.columns if not c.endswith("_holm") for x in (c, f"{c}_holm") if x in frame]
    return frame[order]


def conventions(means: dict[str, dict[str, float]], refs: dict[str, str | None], higher: dict[str, bool]):
    """Per row of ``means`` ({row: {task: mean over seeds}}): ``delta_m_pct``, its :func:`delta_m` against the
    row ``refs[row]`` (NaN where None), and ``mean_rank`` among all the rows (:func:`mean_ranks`)."""
    import pandas as pd

    ranks = mean_ranks(means, higher)
    recs = {
        b: {
            "delta_m_pct": delta_m(means[b], means[refs[b]], higher) if refs.get(b) else math.nan,
            "mean_rank": ranks.get(b, math.nan),
        }
        for b in means
    }
    return pd.DataFrame.from_dict(recs, orient="index", columns=["delta_m_pct", "mean_rank"])


def families(columns, measures) -> dict[str, list[str]]:
    """The p-value columns of each family Holm's correction runs over, among ``columns``: every row's
    ``measures`` (worst, average) against ``none`` (``none``), against ``vanilla``, the gaps to
    ``random_init``, and every row's worst case of every report metric against ``none`` (``by_metric``)."""
    fams = {
        "none": [f"{m}_p" for m in measures],
        "vanilla": [f"vanilla_{m}_p" for m in measures],
        "random_init": [f"{m}_gap_random_init_p" for m in measures],
    }
    fams = {k: [c for c in v if c in columns] for k, v in fams.items()}
    taken = {c for v in fams.values() for c in v}
    return fams | {"by_metric": [c for c in columns if c.endswith("_worst_p") and c not in taken]}


def compare_rows(df: pd.DataFrame, labels: list[str], reference, measures, metric_cols: list[str]):
    """The paired tests of each row in ``labels`` (``df``: one line per run, its ``row``, ``seed``,
    ``measures``, ``metric_cols`` and ``*_ft_std``; ``reference(label, ref)``: the ``ref`` row to compare a row
    with, or None), a DataFrame indexed by row: ``pairs, worst_diff, worst_ci_low, worst_ci_high, worst_p,
    worst_p_holm, average_diff, ...`` against ``none`` (the raw 95% Student-t interval, the two-sided paired-t
    p-value and the p-value Holm-adjusted over its family, see :func:`families`), the same prefixed
    ``vanilla_`` when there is a ``vanilla`` row, the fine-tuning noise floor ``<worst|average|task>_ft_std``
    (mean over the row's runs), ``random_init_pairs, <worst|average>_gap_random_init[_ci_low|_ci_high|_p|
    _p_holm]`` against the random-init control (the difference of means when no seed is shared), and with
    ``metric_cols`` ``metric_pairs, <metric>_worst_diff, <metric>_worst_ci_low, ...`` against ``none``."""
    import pandas as pd

    vanilla = any(x.partition(" (")[0] == "vanilla" for x in labels)
    refs = {"none": ""} | ({"vanilla": "vanilla_"} if vanilla else {})
    out = {}
    for label in labels:
        rec: dict = {}
        for ref, p in refs.items():
            other = reference(label, ref)
            res = paired(df, label, other, measures) if other else {}
            rec[f"{p}pairs"] = res.get("pairs", math.nan)
            put_tests(rec, res, {m: (f"{p}{m}_diff", f"{p}{m}") for m in measures})
        if metric_cols:
            other = reference(label, "none")
            res = paired(df, label, other, metric_cols) if other else {}
            rec["metric_pairs"] = res.get("pairs", math.nan)
            put_tests(rec, res, {m: (f"{m}_diff", m) for m in metric_cols})
        rec.update(df[df["row"] == label].filter(like="_ft_std").mean())
        control = reference(label, "random_init")
        res = paired(df, label, control, measures, unpaired_fallback=True) if control else {}
        rec["random_init_pairs"] = res.get("pairs", math.nan)
        put_tests(rec, res, {m: (f"{m}_gap_random_init",) * 2 for m in measures})
        out[label] = rec
    frame = pd.DataFrame.from_dict(out, orient="index")
    return adjust_families(frame, families(frame.columns, measures))
