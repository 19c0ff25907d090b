"""The sweep tables: the runs of a sweep directory, one row per balancer (and per other swept key), mean
+- std over seeds, paired 95% Student-t intervals against ``none``/``vanilla`` of its group and the
``random_init`` control, the fine-tuning-seed noise floor, the metric and upstream tables, rendered as markdown.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> list[dict]:
    """Every complete ``results.json`` below ``sweep_dir`` (failed runs write none)."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob("results.json")):
        try:
            run = json.loads(path.read_text())
            run["_dir"] = str(path.parent)
            runs.append(run)
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable %s (%s)", path, exc)
    return runs


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


_NOT_GROUPING = (
    "seed",
    "balancer",
    "stage",
    "pretrained_ckpt",
    "hydra.",
    "logger",
    "paths.",
    "print_table",
    "trainer.enable_progress_bar",
)


MEASURES = ("worst", "average")  # the summary values compared between rows


_NAN3 = (math.nan, math.nan, math.nan)


def row_labels(runs: list[dict]) -> list[str]:
    """The row of each run: its balancer, plus every override that varies across the sweep (other than
    the seed), e.g. ``minimax (trainer.max_steps=800)`` when a sweep also varies the pre-training length."""

    def extra(r):
        return {
            o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1]
            for o in r.get("overrides", [])
            if "=" in o and not o.lstrip("+~").startswith(_NOT_GROUPING)
        }

    extras = [extra(r) for r in runs]
    keys = sorted({k for e in extras for k in e})
    varying = [k for k in keys if len({e.get(k) for e in extras}) > 1]
    labels = []
    for r, e in zip(runs, extras):
        label = str(r.get("balancer", "?"))
        if varying:
            label += " (" + ", ".join(f"{k}={e.get(k, '-')}" for k in varying) + ")"
        labels.append(label)
    return labels


def row_key(label: str) -> tuple:
    """Table order: rows grouped by their other swept values (numbers in numeric order), ``none`` first in
    each group, then the balancers alphabetically."""
    base, _, extra = label.partition(" (")
    natural = tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", extra))
    return natural, base != "none", base


def build_table(runs: list[dict]) -> dict[str, Any]:
    """Aggregate runs by balancer: {columns, rows: {balancer: {column: (mean, std, n)}}, higher_is_better}."""
    if not runs:
        return {"columns": [], "rows": {}, "higher_is_better": True, "experiments": []}
    tasks: list[str] = []
    for r in runs:
        for t in r.get("downstream", {}):
            if t not in tasks:
                tasks.append(t)
    higher = bool(runs[0].get("summary", {}).get("higher_is_better", True))
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[str, set] = defaultdict(set)
    for r, b in zip(runs, row_labels(runs)):
        seeds[b].add(r.get("seed"))
        for t, d in r.get("downstream", {}).items():
            values[b][t].append(float(d["metrics"][d["primary"]]))
        s = r.get("summary") or {}
        if "average" in s:
            values[b]["average"].append(float(s["average"]))
            values[b]["worst"].append(float(s["worst"]))
    columns = tasks + ["average", "worst"] if tasks else []
    rows = {
        b: {c: (*_stats(v[c]), len(v[c])) for c in columns if v.get(c)}
        for b, v in sorted(values.items(), key=lambda kv: row_key(kv[0]))
    }
    primary = {}
    for r in runs:
        for t, d in r.get("downstream", {}).items():
            primary.setdefault(t, d["primary"])
    cost: dict[str, list[float]] = defaultdict(list)
    for r, b in zip(runs, row_labels(runs)):
        ms = (r.get("cost") or {}).get("median_step_ms")
        if ms is not None:
            cost[b].append(float(ms))
    return {
        "upstream": upstream_table(runs),
        "by_metric": metric_table(runs),
        "settings": _settings(runs),
        "cost": {b: statistics.median(v) for b, v in sorted(cost.items(), key=lambda kv: row_key(kv[0]))},
        "columns": columns,
        "rows": rows,
        "compare": compare(runs, list(rows)),
        "higher_is_better": higher,
        "seeds": {b: sorted(s, key=str) for b, s in seeds.items()},
        "primary": primary,
        "experiments": sorted({r.get("experiment", "?") for r in runs}),
    }


def report_metrics(runs: list[dict]) -> list[str]:
    """The ``summary.by_metric`` entries the runs ask the report to tabulate (results.json ``report_metrics``,
    e.g. the convex experiment's initial risk, sample complexity and excess risk at every N), in order."""
    return list(dict.fromkeys(m for r in runs for m in r.get("report_metrics") or ()))


def _worst_of(run: dict, metric: str) -> float:
    v = ((run.get("summary") or {}).get("by_metric") or {}).get(metric)
    return float(v["worst"]) if v and v.get("worst") is not None else math.nan


def metric_table(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per row and report metric: mean, std and count over seeds of the metric's worst case over the
    downstream tasks (``summary.by_metric[metric].worst``)."""
    metrics = report_metrics(runs)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, b in zip(runs, row_labels(runs)):
        for m in metrics:
            v = _worst_of(r, m)
            if math.isfinite(v):
                values[b][m].append(v)
    return {
        b: {m: (*_stats(cols[m]), len(cols[m])) for m in metrics if cols.get(m)}
        for b, cols in sorted(values.items(), key=lambda kv: row_key(kv[0]))
    }


def _settings(runs: list[dict]) -> dict:
    """The downstream settings the runs report (results.json ``downstream_settings``), when they all agree."""
    found = {
        json.dumps(r.get("downstream_settings"), sort_keys=True) for r in runs if r.get("downstream_settings")
    }
    return json.loads(found.pop()) if len(found) == 1 else {}


#: upstream columns: results.json path -> column name
UPSTREAM_COLUMNS = {
    ("upstream_eval", "nsp_accuracy"): "nsp_accuracy",
    ("upstream_eval", "min_context_gain"): "min_context_gain",
    ("weights", "mean_entropy"): "weight_entropy",
}


def upstream_table(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per row: mean, std and count over seeds of the upstream evaluation (NSP accuracy, the smallest
    context gain over the groups) and of the weights' mean entropy, where the runs have them."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, b in zip(runs, row_labels(runs)):
        for (section, key), column in UPSTREAM_COLUMNS.items():
            v = (r.get(section) or {}).get(key)
            if v is not None:
                values[b][column].append(float(v))
    return {
        b: {c: (*_stats(v), len(v)) for c, v in cols.items()}
        for b, cols in sorted(values.items(), key=lambda kv: row_key(kv[0]))
    }


def _best(table: dict, column: str) -> str | None:
    cands = {b: row[column][0] for b, row in table["rows"].items() if column in row}
    if not cands:
        return None
    pick = max if table["higher_is_better"] else min
    return pick(cands, key=cands.get)


def render_markdown(table: dict) -> str:
    cols = table["columns"]
    if not table["rows"] and not table.get("cost"):
        return "No complete runs (no results.json) were found.\n"
    arrow = "higher is better" if table["higher_is_better"] else "lower is better"
    lines = [f"# Summary: {', '.join(table['experiments'])}", ""]
    if cols:
        lines += [
            f"Primary metric per task ({arrow}); mean +- std over seeds; **bold** = best per column; "
            "(diff vs none) in brackets.",
            "",
            "| balancer | seeds | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
    for b, row in table["rows"].items() if cols else ():
        base = table["rows"].get(_none_of(b))
        cells = []
        for c in cols:
            if c not in row:
                cells.append("")
                continue
            mean, std, _ = row[c]
            text = f"{mean:.4g} +- {std:.2g}"
            if _best(table, c) == b and len(table["rows"]) > 1:
                text = f"**{text}**"
            if base is not None and base is not row and c in base:
                text += f" ({mean - base[c][0]:+.3g})"
            cells.append(text)
        n_seeds = len(table["seeds"].get(b, []))
        lines.append(f"| {b} | {n_seeds} | " + " | ".join(cells) + " |")
    lines += _render_compare(table)
    lines += _render_by_metric(table)
    if table.get("upstream"):
        cols_up = list(dict.fromkeys(c for row in table["upstream"].values() for c in row))
        lines += ["", "Upstream (mean +- std over seeds): NSP accuracy and the smallest context gain over the POS "
                  "groups on held-back pairs (upstream_eval), the task weights' mean entropy (nats).", ""]  # fmt: skip
        lines += ["| balancer | " + " | ".join(cols_up) + " |", "|---|" + "---|" * len(cols_up)]
        for b, row in table["upstream"].items():
            cells = [f"{row[c][0]:.3f} +- {row[c][1]:.2g}" if c in row else "" for c in cols_up]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    if table.get("cost"):
        lines += ["", "Cost of a pre-training step (median over the run's steps, median over runs):", ""]
        lines += ["| balancer | ms/step | x none |", "|---|---|---|"]
        for b, ms in table["cost"].items():
            base_ms = table["cost"].get(_none_of(b))
            ratio = f"{ms / base_ms:.2f}" if base_ms else ""
            lines.append(f"| {b} | {ms:.3g} | {ratio} |")
    if table.get("primary"):
        lines += ["", "Primary metrics: " + ", ".join(f"{t}: {m}" for t, m in table["primary"].items())]
    return "\n".join(lines) + "\n"


def _interval(mean: float, low: float, high: float, note: str = "") -> str:
    """``+0.12 [+0.05, +0.19]*``: the mean, its interval when there is one, * when it excludes 0."""
    if not math.isfinite(mean):
        return ""
    text = f"{mean:+.3g}"
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{low:+.3g}, {high:+.3g}]" + ("*" if low > 0 or high < 0 else "")
    return text + note


def _render_compare(table: dict) -> list[str]:
    """The "Paired differences" sections of summary.md (vs ``none``, and vs ``vanilla`` if the sweep has it)."""
    cmp = table.get("compare")
    if cmp is None or cmp.empty:
        return []
    better = "positive = better" if table["higher_is_better"] else "negative = better"
    rule = (
        "paired by pre-training seed; 95% Student-t interval over the paired differences; "
        f"* = interval excludes 0; {better}"
    )

    def diff(c: dict, p: str, m: str) -> str:
        return _interval(c[f"{p}{m}_diff"], c[f"{p}{m}_ci_low"], c[f"{p}{m}_ci_high"])

    def gap(c: dict, m: str, note: str) -> str:
        g = f"{m}_gap_random_init"
        return _interval(c[g], c[f"{g}_ci_low"], c[f"{g}_ci_high"], note)

    def pairs(x: float) -> str:
        return "" if math.isnan(x) else str(int(x))

    rows = cmp.to_dict("index")
    control = any(not math.isnan(c["random_init_pairs"]) for c in rows.values())
    head = ["balancer", "pairs", "worst diff vs none", "average diff vs none", "ft std (worst / average)"]
    head += ["worst gap to random_init", "average gap to random_init"] if control else []
    body, unpaired = [], False
    for b, c in rows.items():
        cells = [diff(c, "", m) for m in MEASURES]
        cells.append(
            " / ".join(f"{c[f'{m}_ft_std']:.2g}" for m in MEASURES if math.isfinite(c[f"{m}_ft_std"]))
        )
        if control:
            note = " (unpaired)" if c["random_init_pairs"] == 0 else ""
            unpaired |= bool(note)
            cells += [gap(c, m, note) for m in MEASURES]
        if any(cells):
            body.append(f"| {b} | {pairs(c['pairs'])} | " + " | ".join(cells) + " |")
    lines = []
    if body:
        text = (
            f"Row minus `none` of its group{' (and minus the random-init control)' if control else ''}: "
            f"{rule}. ft std = std over fine-tuning seeds, mean over the row's runs (the noise floor)."
        )
        if unpaired:
            text += " (unpaired) = no pre-training seed shared with random_init: difference of means."
        lines += _md_section("Paired differences", text, head, body)
    vanilla = [
        f"| {b} | {pairs(c['vanilla_pairs'])} | "
        + " | ".join(diff(c, "vanilla_", m) for m in MEASURES)
        + " |"
        for b, c in rows.items()
        if not math.isnan(c.get("vanilla_pairs", math.nan))
    ]
    if vanilla:
        head = ["balancer", "pairs", "worst diff vs vanilla", "average diff vs vanilla"]
        lines += _md_section(
            "Paired differences vs vanilla", f"Row minus `vanilla` of its group: {rule}.", head, vanilla
        )
    return lines


def _render_by_metric(table: dict) -> list[str]:
    """The worst case over the downstream tasks of every report metric (mean +- std over seeds), and its paired
    difference to ``none`` of the row's group, through the same pairing and t-interval as the table above."""
    rows = table.get("by_metric") or {}
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    if not metrics:
        return []
    head = ["balancer", "seeds", *metrics]
    body = [
        f"| {b} | {len(table['seeds'].get(b, []))} | "
        + " | ".join(f"{row[m][0]:.4g} +- {row[m][1]:.2g}" if m in row else "" for m in metrics)
        + " |"
        for b, row in rows.items()
    ]
    text = "Worst case over the downstream tasks (max for lower-is-better metrics) of each metric; mean +- std over seeds."
    settings = table.get("settings") or {}
    if "sample_complexity" in metrics and settings.get("eps") is not None:
        text += (
            f" sample_complexity = max over the tasks of N_lambda(theta_0, eps={settings['eps']:g}, "
            f"delta={settings['delta']:g}): the smallest N of the grid {settings.get('sample_sizes')} from which on "
            f"the excess risk is <= eps in >= 1 - delta of {settings.get('draws')} draws "
            f"({settings.get('censored_as')} = not reached on the grid)."
        )
    lines = _md_section("Worst case per metric", text, head, body)
    cmp = table.get("compare")
    if cmp is None or cmp.empty:
        return lines
    better = "positive = better" if table["higher_is_better"] else "negative = better"
    paired = []
    for b, c in cmp.to_dict("index").items():
        cells = [
            _interval(c.get(f"{m}_worst_diff", math.nan), c.get(f"{m}_worst_ci_low", math.nan),
                      c.get(f"{m}_worst_ci_high", math.nan))
            for m in metrics
        ]  # fmt: skip
        if any(cells):
            paired.append(
                f"| {b} | {'' if math.isnan(c['pairs']) else int(c['pairs'])} | " + " | ".join(cells) + " |"
            )
    if paired:
        lines += _md_section(
            "Paired differences per metric",
            "Worst case of each metric, row minus `none` of its group: paired by pre-training seed; 95% Student-t "
            f"interval over the paired differences; * = interval excludes 0; {better}.",
            ["balancer", "pairs", *metrics],
            paired,
        )
    return lines


def _md_section(title: str, text: str, head: list[str], body: list[str]) -> list[str]:
    return ["", f"## {title}", "", text, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *body]


def _ref_of(label: str, ref: str) -> str:
    """The ``ref`` row of the same group: ``_ref_of("minimax (k=v)", "none")`` -> ``none (k=v)``."""
    head, sep, rest = label.partition(" (")
    return ref + sep + rest


def _none_of(label: str) -> str:
    return _ref_of(label, "none")


def _run_frame(runs: list[dict]):
    """One line per run: its row, pre-training seed, summary worst/average, and the std over its fine-tuning
    seeds (ddof=1; NaN without ``per_seed`` or with one seed) of worst, average and each task's primary."""
    import pandas as pd

    def ft_std(values) -> float:
        return pd.Series(values or [], dtype=float).std(ddof=1)

    recs = []
    metrics = report_metrics(runs)
    for r, label in zip(runs, row_labels(runs)):
        s = r.get("summary") or {}
        rec = {"row": label, "seed": r.get("seed")}
        rec.update({m: float(s.get(m, math.nan)) for m in MEASURES})
        rec.update({f"{m}_ft_std": ft_std((s.get("per_seed") or {}).get(m)) for m in MEASURES})
        rec.update({f"{t}_ft_std": ft_std(d.get("per_seed")) for t, d in r.get("downstream", {}).items()})
        rec.update({f"{m}_worst": _worst_of(r, m) for m in metrics})
        recs.append(rec)
    return pd.DataFrame(recs)


def t_interval(d) -> tuple[float, float, float]:
    """Mean of the differences ``d`` and its 95% Student-t interval (NaN bounds with fewer than 2)."""
    from scipy import stats

    d = d.dropna()
    n = len(d)
    if n < 2:
        return (float(d.mean()) if n else math.nan), math.nan, math.nan
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _paired(df, row: str, ref: str, unpaired_fallback: bool = False, measures=MEASURES) -> dict:
    """``row - ref`` per measure over the pre-training seeds both rows have (runs of one seed averaged):
    {pairs, worst: (mean, low, high), average: ...}. With no shared seed and ``unpaired_fallback``, the
    difference of the two rows' means (pairs 0, no interval)."""
    a, b = (df[df["row"] == x].groupby("seed")[list(measures)].mean() for x in (row, ref))
    shared = a.index.intersection(b.index)
    if not len(shared) and unpaired_fallback:
        return {"pairs": 0, **{m: (a[m].mean() - b[m].mean(), math.nan, math.nan) for m in measures}}
    d = a.loc[shared] - b.loc[shared]
    return {"pairs": len(shared), **{m: t_interval(d[m]) for m in measures}}


def compare(runs: list[dict], labels: list[str]):
    """The paired statistics of each row in ``labels`` (a DataFrame indexed by row; the extra columns of
    summary.csv): ``pairs, worst_diff, worst_ci_low, worst_ci_high, average_diff, ...`` against ``none`` of
    the row's group, the same prefixed ``vanilla_`` when the sweep has a ``vanilla`` row, the fine-tuning
    noise floor ``<worst|average|task>_ft_std`` (mean over the row's runs), and ``random_init_pairs,
    <worst|average>_gap_random_init[_ci_low|_ci_high]`` against the random-init control, falling back to
    the difference of means when no seed is shared. With report metrics (results.json ``report_metrics``),
    also ``<metric>_worst_diff, <metric>_worst_ci_low, <metric>_worst_ci_high``: the same pairing against
    ``none`` for the worst case of each metric."""
    import pandas as pd

    if not labels:
        return pd.DataFrame()
    df = _run_frame(runs)
    metric_cols = [f"{m}_worst" for m in report_metrics(runs)]
    base = {label: label.partition(" (")[0] for label in labels}

    def reference(label: str, ref: str) -> str | None:
        """``ref`` of the label's group; the random-init control lacks the pre-training overrides that group
        the other rows, so it is compared with the sweep's only ``ref`` row (or they with the only control)."""
        if base[label] == ref:
            return None
        if _ref_of(label, ref) in labels:
            return _ref_of(label, ref)
        only = [x for x in labels if base[x] == ref]
        return only[0] if len(only) == 1 and "random_init" in (ref, base[label]) else None

    refs = {"none": ""} | ({"vanilla": "vanilla_"} if "vanilla" in base.values() else {})
    out = {}
    for label in labels:
        rec: dict[str, Any] = {}
        for ref, p in refs.items():
            other = reference(label, ref)
            res = _paired(df, label, other) if other else {}
            rec[f"{p}pairs"] = res.get("pairs", math.nan)
            for m in MEASURES:
                rec[f"{p}{m}_diff"], rec[f"{p}{m}_ci_low"], rec[f"{p}{m}_ci_high"] = res.get(m, _NAN3)
        other = reference(label, "none")
        res = _paired(df, label, other, measures=metric_cols) if other and metric_cols else {}
        for m in metric_cols:
            rec[f"{m}_diff"], rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = res.get(m, _NAN3)
        rec.update(df[df["row"] == label].filter(like="_ft_std").mean())
        control = reference(label, "random_init")
        res = _paired(df, label, control, unpaired_fallback=True) if control else {}
        rec["random_init_pairs"] = res.get("pairs", math.nan)
        for m in MEASURES:
            g = f"{m}_gap_random_init"
            rec[g], rec[f"{g}_ci_low"], rec[f"{g}_ci_high"] = res.get(m, _NAN3)
        out[label] = rec
    return pd.DataFrame.from_dict(out, orient="index")


def curve_frame(runs: list[dict]):
    """Worst and average primary metric against the downstream N, per row: one line per (row, measure, N)
    with the mean over pre-training seeds, ``half`` the half-width of its 95% Student-t interval (NaN with
    one seed) and ``seeds``. From ``summary.curve``, else (convex) the ``<primary>@N=<n>`` metrics of
    ``summary.by_metric``."""
    import pandas as pd
    from scipy import stats

    recs = []
    for r, label in zip(runs, row_labels(runs)):
        s = r.get("summary") or {}
        curve = s.get("curve")
        if not curve:
            primary = next((d.get("primary") for d in r.get("downstream", {}).values()), None)
            at_n = re.compile(re.escape(str(primary)) + r"@N=(\d+)$")
            curve = {m[1]: v for k, v in (s.get("by_metric") or {}).items() if (m := at_n.match(k))}
        for n, v in curve.items():
            recs += [
                {"row": label, "measure": m, "N": int(n), "seed": r.get("seed"), "value": v[m]}
                for m in MEASURES
            ]
    if not recs:
        return pd.DataFrame(columns=["row", "measure", "N", "mean", "half", "seeds"])
    per_seed = pd.DataFrame(recs).groupby(["row", "measure", "N", "seed"])["value"].mean()
    out = per_seed.groupby(["row", "measure", "N"]).agg(["mean", "sem", "count"]).reset_index()
    many = out["count"] > 1
    out["half"] = (stats.t.ppf(0.975, out["count"].where(many) - 1) * out["sem"]).where(many)
    return out.rename(columns={"count": "seeds"}).drop(columns="sem")


def theory_frame(runs: list[dict]):
    """Per run with the convex report metrics: its row, seed, and the worst case over the downstream tasks of the
    initial risk (``initial``), of the primary metric (``excess``: the excess risk at the primary N) and of the
    sample complexity (``complexity``). Empty without them."""
    import pandas as pd

    recs = [
        {
            "row": label,
            "seed": r.get("seed"),
            "initial": _worst_of(r, "initial_risk"),
            "excess": float((r.get("summary") or {}).get("worst", math.nan)),
            "complexity": _worst_of(r, "sample_complexity"),
        }
        for r, label in zip(runs, row_labels(runs))
        if {"initial_risk", "sample_complexity"} <= set(r.get("report_metrics") or ())
    ]
    return pd.DataFrame(recs, columns=["row", "seed", "initial", "excess", "complexity"]).dropna()
