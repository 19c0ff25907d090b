"""The heterogeneity maps (``experiment=heterogeneity_*``, docs/heterogeneity.md): per dial value and balancer, the
paired worst-task difference to the experiment's baseline, its crossover, heterogeneity.csv and heterogeneity.png.

Each experiment's dial is one config key (:data:`DIALS`); a run's dial value is read from its overrides, so a
sweep over that key is a map. The baseline is the paper's: ``vanilla`` for PoS-BERT, ``none`` for the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data.pos_grammar import CONJUNCTION_SHARE


def _worst_upstream_risk(r: dict) -> float:
    return (r.get("pretrained") or {}).get("worst_upstream_risk", math.nan)


def _worst_initial_risk(r: dict) -> float:
    return ((r["summary"].get("by_metric") or {}).get("initial_risk") or {}).get("worst", math.nan)


def _worst_downstream(r: dict) -> float:
    return r["summary"]["worst"]


def _min_context_gain(r: dict) -> float:
    return (r.get("upstream_eval") or {}).get("min_context_gain", math.nan)


def _group_gain(group: str) -> Callable[[dict], float]:
    """Reads one upstream task's context gain on held-back data (PoS-BERT's POS groups, MM-MAE's modalities)."""

    def read(r: dict) -> float:
        u = r.get("upstream_eval") or {}
        return float(
            ((u.get("groups") or u.get("tasks") or {}).get(group) or {}).get("context_gain", math.nan)
        )

    return read


def _task_metric(task: str) -> Callable[[dict], float]:
    """Reads one downstream task's primary metric: the task the dial's minority feeds, which need not be the
    worst downstream task (NaN when the run has no such task)."""

    def read(r: dict) -> float:
        t = (r.get("downstream") or {}).get(task) or {}
        return float((t.get("metrics") or {}).get(t.get("primary"), math.nan))

    return read


@dataclass(frozen=True)
class Measure:
    """One worst-task measure of a map: how to read it from a run's results.json, its panel title (``{n}``: the
    primary downstream N) and whether higher is better."""

    read: Callable[[dict], float]
    title: str
    higher_is_better: bool = False


@dataclass(frozen=True)
class Dial:
    """An experiment's heterogeneity dial: its config ``key``, the ``baseline`` balancer, the map's measures,
    the value a ``null`` override stands for, whether heterogeneity ``rises`` with the value, and ``minority``:
    the minority task's own upstream measure, which must get worse under the baseline along the dial (the check
    that the dial acts upstream; None: the map's upstream measure is the minority's already)."""

    key: str
    baseline: str
    measures: dict[str, Measure] = field(default_factory=dict)
    null: float = math.nan
    rises: bool = True
    minority: Measure | None = None


#: the dial of each experiment, by config key (a run's dial is the first of these its overrides set)
DIALS = {
    "data.minority": Dial("data.minority", "none", {
        "upstream": Measure(_worst_upstream_risk, "upstream: worst task risk"),
        "initial": Measure(_worst_initial_risk, "downstream: worst initial risk"),
        "excess": Measure(_worst_downstream, "downstream: worst excess risk at N={n}"),
    }),
    "data.corpus.conjunction_share": Dial("data.corpus.conjunction_share", "vanilla", {
        "upstream": Measure(_min_context_gain, "upstream: smallest context gain over the POS groups", True),
        "downstream": Measure(_worst_downstream, "downstream: worst task's primary metric", True),
        "rte": Measure(_task_metric("rte"), "downstream: RTE-like accuracy (needs the conjunction)", True),
    }, null=CONJUNCTION_SHARE, rises=False,
        minority=Measure(_group_gain("conjunction"), "conjunctions' context gain", True)),
    "data.depth_relief": Dial("data.depth_relief", "none", {
        "upstream": Measure(_min_context_gain, "upstream: smallest context gain over the modalities", True),
        "downstream": Measure(_worst_downstream, "downstream: worst task's primary metric", True),
        "depth": Measure(_task_metric("depth"), "downstream: depth delta_1 (needs the geometry)", True),
    }, null=0.0, minority=Measure(_group_gain("depth"), "depth's context gain", True)),
}  # fmt: skip


def _dial_of(overrides: dict[str, str]) -> Dial | None:
    return next((DIALS[k] for k in DIALS if k in overrides), None)


def _dial_value(r: dict) -> tuple[Dial, float] | None:
    """The dial a run's overrides set (:data:`DIALS`, the first found) and its value (``null``: the dial's
    ``null``); None for a run that sets none."""
    over = dict(o.lstrip("+~").split("=", 1) for o in r.get("overrides", []) if "=" in o)
    dial = _dial_of(over)
    if dial is None:
        return None
    return dial, dial.null if over[dial.key] == "null" else float(over[dial.key])


def _exact(test: tuple) -> tuple:
    """A paired test ``(mean, low, high, p)`` whose differences are all the same non-zero value has no t
    statistic (p NaN); that is no chance result, so its p is 0."""
    mean, low, high, p = test
    return (mean, low, high, 0.0) if math.isnan(p) and low == high and mean != 0 else test


def heterogeneity_frame(runs: list[dict]):
    """The map of the runs' dial (:data:`DIALS`, the first found): per dial value and balancer other than the
    baseline, the paired difference (balancer - baseline, paired by seed, ``runner.statistics.paired``) of each of
    the dial's measures with its 95% interval. Columns ``dial_key, dial, row, pairs, <m>, <m>_low, <m>_high``,
    ``<m>_p`` (the paired t-test's two-sided p), ``<m>_holm`` (Holm-adjusted over the map's family: every row,
    dial value and measure), ``<m>_<baseline>`` (the baseline's mean, the scale of the difference) and
    ``<m>_crossover``: the least heterogeneous dial value of that row whose difference lies on the better side of
    0 and survives the correction (NaN: none). Empty without dialled runs."""
    import pandas as pd

    from runner.statistics import ALPHA, holm, paired

    recs, dial = [], None
    for r in runs:
        found = _dial_value(r)
        if (
            found is None
            or (dial is not None and found[0] is not dial)
            or "worst" not in (r.get("summary") or {})
        ):
            continue
        dial, value = found
        recs.append({"dial": value, "row": r.get("balancer"), "seed": r.get("seed")}
                    | {m: float(x.read(r)) for m, x in dial.measures.items()})  # fmt: skip
    df = pd.DataFrame(recs)
    if dial is None or dial.baseline not in set(df["row"]):
        return pd.DataFrame()
    base, measures = dial.baseline, list(dial.measures)
    out = []
    for (value, row), _ in df[df["row"] != base].groupby(["dial", "row"]):
        res = paired(df[df["dial"] == value], row, base, measures)
        out.append({"dial_key": dial.key, "dial": value, "row": row, "pairs": res["pairs"]}
                   | {k: v for m in measures
                      for k, v in zip((m, f"{m}_low", f"{m}_high", f"{m}_p"), _exact(res[m]))})  # fmt: skip
    frame = pd.DataFrame(out).sort_values(["row", "dial"], ignore_index=True)
    pcols = [f"{m}_p" for m in measures]  # one family: the whole map (rows x dial values x measures)
    adjusted = holm(frame[pcols].to_numpy(dtype=float).ravel()).reshape(len(frame), len(pcols))
    frame[[f"{m}_holm" for m in measures]] = adjusted
    means = df[df["row"] == base].groupby("dial")[measures].mean()  # the scale of each difference
    for m, x in dial.measures.items():
        frame[f"{m}_{base}"] = frame["dial"].map(means[m])
        side = frame[f"{m}_low"] > 0 if x.higher_is_better else frame[f"{m}_high"] < 0
        better = frame[side & (frame[f"{m}_holm"] < ALPHA)]
        cross = better.groupby("row")["dial"].agg("min" if dial.rises else "max")
        frame[f"{m}_crossover"] = frame["row"].map(cross)
    return frame


def dial_check_frame(runs: list[dict]):
    """Does the dial act upstream? Under the baseline, per dial value, the minority task's own measure
    (:attr:`Dial.minority`): mean over seeds with its 95% t-interval, and its paired-by-seed difference to the
    least heterogeneous value (seed s is the same seed of data and model at every value) with its interval and a
    Holm-adjusted p over the dial values. Empty without dialled runs or without a minority measure."""
    import pandas as pd

    from runner.statistics import holm, t_test

    recs, dial = [], None
    for r in runs:
        found = _dial_value(r)
        if found is None or found[0].minority is None or (dial is not None and found[0] is not dial):
            continue
        dial, value = found
        if r.get("balancer") == dial.baseline:
            recs.append({"dial": value, "seed": r.get("seed"), "measure": float(dial.minority.read(r))})
    if dial is None or not recs:
        return pd.DataFrame()
    df = pd.DataFrame(recs).groupby(["dial", "seed"])["measure"].mean().unstack("dial")
    values = sorted(df.columns, reverse=not dial.rises)  # least heterogeneous first
    out = []
    for v in values:
        mean, low, high, _ = t_test(df[v])
        diff = _exact(t_test(df[v] - df[values[0]])) if v != values[0] else (math.nan,) * 4
        out.append({"dial_key": dial.key, "dial": v, "seeds": int(df[v].notna().sum()), "mean": mean,
                    "low": low, "high": high, "diff": diff[0], "diff_low": diff[1], "diff_high": diff[2],
                    "diff_p": diff[3]})  # fmt: skip
    frame = pd.DataFrame(out)
    frame["diff_holm"] = holm(frame["diff_p"].to_numpy(dtype=float))
    return frame


def dial_check_markdown(frame) -> str:
    """summary.md's check that the dial acts upstream (:func:`dial_check_frame`); empty without one."""
    if frame.empty:
        return ""
    from runner.statistics import ALPHA

    dial = DIALS[frame["dial_key"].iloc[0]]
    family = int(frame["diff_p"].notna().sum())
    lines = ["", f"## Does `{dial.key}` act upstream?", "",
             f"Under `{dial.baseline}`, the minority task's {dial.minority.title} ("
             + ("higher" if dial.minority.higher_is_better else "lower") + " is better) per dial value: mean "
             "[95% t-interval over seeds], and its difference to the least heterogeneous value, paired by seed "
             f"[raw 95% interval]; {family} differences in this family, * = Holm-adjusted p < 0.05. The dial "
             "acts upstream where the minority gets worse with an interval that excludes 0.", "",
             "| dial | seeds | mean | difference to the least heterogeneous value |", "|---|---|---|---|"]  # fmt: skip
    for r in frame.itertuples(index=False):
        diff = (
            ""
            if not math.isfinite(r.diff)
            else (
                f"{r.diff:+.3g} [{r.diff_low:+.3g}, {r.diff_high:+.3g}]"
                + ("*" if r.diff_holm < ALPHA else "")
            )
        )
        lines.append(f"| {r.dial:g} | {r.seeds} | {r.mean:.3g} [{r.low:.3g}, {r.high:.3g}] | {diff} |")
    return "\n".join(lines) + "\n"


def heterogeneity_markdown(frame) -> str:
    """The map's numbers for summary.md: per row and dial value, each measure's paired difference to the
    baseline with its raw 95% interval (as the figure) and a star where it survives Holm's correction over the
    map's family, and each measure's crossover; empty without dialled runs."""
    if frame.empty:
        return ""
    from runner.statistics import ALPHA

    dial = DIALS[frame["dial_key"].iloc[0]]
    base, measures = dial.baseline, list(dial.measures)
    family = int(frame[[f"{m}_p" for m in measures]].notna().to_numpy().sum())
    lines = ["", f"## Heterogeneity map: `{dial.key}`", "",
             f"Row minus `{base}`, paired by pre-training seed, at each dial value: mean [raw 95% Student-t "
             "interval] of each worst-task measure (" + "; ".join(
                 f"{m}: {x.title.split(': ', 1)[-1].replace(' at N={n}', ' at the primary N')}, "
                 + ("higher" if x.higher_is_better else "lower") + " is better" for m, x in dial.measures.items())
             + f"); `{base}` mean beside it; {family} intervals in this family (every row, dial value and "
             "measure), * = Holm-adjusted p < 0.05 within it. Crossover: the least heterogeneous dial value whose "
             "difference lies on the better side of 0 and is starred (none: no such value).", "",
             "| row | dial | pairs | " + " | ".join(f"{m} | {m} ({base})" for m in measures) + " |",
             "|---|---|---|" + "---|---|" * len(measures)]  # fmt: skip
    for r in frame.itertuples(index=False):
        r = r._asdict()
        star = {m: "*" if r[m + "_holm"] < ALPHA else "" for m in measures}
        cells = [f"{r[m]:+.3g} [{r[m + '_low']:+.3g}, {r[m + '_high']:+.3g}]{star[m]} | {r[m + '_' + base]:.3g}"
                 for m in measures]  # fmt: skip
        lines.append(f"| {r['row']} | {r['dial']:g} | {r['pairs']} | " + " | ".join(cells) + " |")
    for row, group in frame.groupby("row"):
        cross = [f"{m} {group[m + '_crossover'].iloc[0]:g}" if group[m + "_crossover"].notna().any()
                 else f"{m} none" for m in measures]  # fmt: skip
        lines.append(f"\nCrossover of {row}: " + ", ".join(cross) + ".")
    return "\n".join(lines) + "\n"


def heterogeneity_figure(path: Path, frame, primary_n, save) -> Path:
    """heterogeneity.png: :func:`heterogeneity_frame`'s paired worst-task differences against the dial, one
    panel per measure, a line and 95% band per balancer, the crossover dash-dotted; heterogeneity rises to the
    right (``save``: the figures' saver)."""
    import matplotlib.pyplot as plt

    dial = DIALS[frame["dial_key"].iloc[0]]
    fig, axes = plt.subplots(1, len(dial.measures), figsize=(4.6 * len(dial.measures), 3.8), squeeze=False)
    for ax, (m, measure) in zip(axes[0], dial.measures.items()):
        for i, (row, f) in enumerate(frame.groupby("row")):
            color, style = f"C{i % 10}", ("-o", "--s", ":^")[i % 3]  # minimax_ref may lie on minimax
            ax.plot(
                f["dial"],
                f[m],
                style,
                ms=4,
                lw=1.2,
                color=color,
                label=f"{row} - {dial.baseline}",
                mfc="none",
            )
            ax.fill_between(f["dial"], f[f"{m}_low"], f[f"{m}_high"], color=color, alpha=0.2, lw=0)
            lo, hi = (
                f[m] - f[f"{m}_low"],
                f[f"{m}_high"] - f[m],
            )  # bars too: a band of one dial value is invisible
            ax.errorbar(f["dial"], f[m], yerr=[lo, hi], fmt="none", ecolor=color, capsize=3, lw=1)
            cross = f[f"{m}_crossover"].iloc[0]
            if math.isfinite(cross):
                ax.axvline(cross, color=color, ls="-.", lw=1, label=f"{row}: crossover {dial.key}={cross:g}")
        ax.axhline(0.0, color="k", lw=0.7)
        ax.set_title(measure.title.format(n=primary_n), fontsize=9)
        ax.set_xlabel(f"heterogeneity dial {dial.key}")
        ax.set_ylabel(
            f"paired difference vs {dial.baseline} ({'> 0' if measure.higher_is_better else '< 0'}: better)"
        )
        ax.set_xticks(sorted(frame["dial"].unique()))  # the swept values only: no crowded automatic ticks
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        if not dial.rises:
            ax.invert_xaxis()  # the lower the value, the more heterogeneous
    axes[0][0].legend(fontsize=7)  # the first panel also names the crossovers
    fig.suptitle("mean over pre-training seeds of the paired difference, raw 95% t-interval (band and bars);\ncrossover: "
                 "the least heterogeneous dial value better than 0 after Holm over the map", fontsize=8)  # fmt: skip
    fig.tight_layout()
    return save(fig, path)
