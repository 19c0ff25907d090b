"""The sweep tables: the runs of a sweep directory, one row per balancer (and per other swept key), mean
+- std over seeds, Delta_m % against ``none`` and the mean rank over tasks, paired 95% Student-t intervals against
``none``/``vanilla`` of its group and the ``random_init`` control (starred where the p-value Holm-adjusted over
the table's family stays below 0.05; the statistics are :mod:`runner.statistics`'s), the fine-tuning-seed noise
floor, the metric and upstream tables, rendered as markdown.
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

import numpy as np

from runner.statistics import ALPHA, compare_rows, conventions, families

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


def _stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, std (NaN for one value: no spread measured) and count of the finite ``values`` (a diverged run's
    NaN is left out, and the count says so)."""
    values = [v for v in values if math.isfinite(v)]
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std, len(values)


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
    primary, task_higher = _tasks(runs)
    tasks = list(primary)
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
        b: {c: _stats(v[c]) for c in columns if v.get(c)}
        for b, v in sorted(values.items(), key=lambda kv: row_key(kv[0]))
    }
    cmp = compare(runs, list(rows))
    if tasks and not cmp.empty:
        reference = _reference(list(rows))
        means = {b: {t: row[t][0] for t in tasks if t in row} for b, row in rows.items()}
        cmp = cmp.join(conventions(means, {b: reference(b, "none") for b in rows}, task_higher))
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
        "compare": cmp,
        "higher_is_better": higher,
        "seeds": {b: sorted(s, key=str) for b, s in seeds.items()},
        "primary": primary,
        "experiments": sorted({r.get("experiment", "?") for r in runs}),
    }


def _tasks(runs: list[dict]) -> tuple[dict[str, str], dict[str, bool]]:
    """The downstream tasks in order of appearance: their primary metric and whether it is higher-is-better
    (results.json ``downstream.<task>.higher_is_better``, else the run's ``summary.higher_is_better``)."""
    primary: dict[str, str] = {}
    higher: dict[str, bool] = {}
    for r in runs:
        default = bool((r.get("summary") or {}).get("higher_is_better", True))
        for t, d in r.get("downstream", {}).items():
            primary.setdefault(t, d["primary"])
            higher.setdefault(t, bool(d.get("higher_is_better", default)))
    return primary, higher


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
        b: {m: _stats(cols[m]) for m in metrics if cols.get(m)}
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
        b: {c: _stats(v) for c, v in cols.items()}
        for b, cols in sorted(values.items(), key=lambda kv: row_key(kv[0]))
    }


def _best(table: dict, column: str) -> str | None:
    cands = {b: row[column][0] for b, row in table["rows"].items() if column in row}
    if not cands:
        return None
    pick = max if table["higher_is_better"] else min
    return pick(cands, key=cands.get)


def render_markdown(table: dict) -> str:
    if not table["rows"] and not table.get("cost"):
        return "No complete runs (no results.json) were found.\n"
    lines = [f"# Summary: {', '.join(table['experiments'])}", ""]
    lines += _render_rows(table) + _render_compare(table) + _render_by_metric(table)
    if table.get("upstream"):
        cols_up = list(dict.fromkeys(c for row in table["upstream"].values() for c in row))
        lines += ["", "Upstream (mean +- std over seeds), as far as the runs report them: NSP accuracy, the smallest "
                  "context gain over the upstream tasks on held-back data (upstream_eval: the context-free reference "
                  "loss minus the model's; PoS-BERT's POS groups, MM-MAE's modalities), the task weights' mean "
                  "entropy (nats).", ""]  # fmt: skip
        lines += ["| balancer | " + " | ".join(cols_up) + " |", "|---|" + "---|" * len(cols_up)]
        for b, row in table["upstream"].items():
            cells = [_mean_std(*row[c][:2], ".3f") if c in row else "" for c in cols_up]
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


def _mean_std(mean: float, std: float, fmt: str = ".4g") -> str:
    """``0.5 +- 0.01``; ``0.5 +- n/a`` where the std is undefined (one seed)."""
    return f"{mean:{fmt}} +- " + (f"{std:.2g}" if math.isfinite(std) else "n/a")


def _num(x: Any, fmt: str) -> str:
    return f"{x:{fmt}}" if x is not None and math.isfinite(x) else ""


def _render_rows(table: dict) -> list[str]:
    """The main table: mean +- std per column, the difference of the means to ``none`` of the group, and the
    field's conventions (Delta_m % against ``none``, mean rank over the tasks) where there are tasks."""
    cols = table["columns"]
    if not cols:
        return []
    cmp = table.get("compare")
    conv = cmp.to_dict("index") if cmp is not None and "delta_m_pct" in cmp else {}
    arrow = "higher is better" if table["higher_is_better"] else "lower is better"
    text = (
        f"Primary metric per task ({arrow}); mean +- std over the seeds with a finite value (n/a: one seed, no "
        "spread measured); **bold** = best per column; (diff vs none) in brackets."
    )
    if conv:
        text += (
            " Delta_m % = mean over the tasks of 100 s_k (M_k - M_none,k) / M_none,k, M the mean over seeds, "
            "against `none` of the row's group (s_k = +1 where the task's metric is higher-is-better, else -1, "
            "so Delta_m > 0 is an improvement); mean rank = the row's rank among all rows of this table on each "
            "task (1 = best), averaged over the tasks."
        )
    extra = ["Delta_m % vs none", "mean rank"] if conv else []
    lines = [
        text,
        "",
        "| balancer | seeds | " + " | ".join(cols + extra) + " |",
        "|---|---|" + "---|" * len(cols + extra),
    ]
    for b, row in table["rows"].items():
        base = table["rows"].get(_none_of(b))
        cells = []
        for c in cols:
            if c not in row:
                cells.append("")
                continue
            text = _mean_std(*row[c][:2])
            if _best(table, c) == b and len(table["rows"]) > 1:
                text = f"**{text}**"
            if base is not None and base is not row and c in base:
                text += f" ({row[c][0] - base[c][0]:+.3g})"
            cells.append(text)
        if conv:
            cells += [_num(conv[b].get("delta_m_pct"), "+.2f"), _num(conv[b].get("mean_rank"), ".2f")]
        lines.append(f"| {b} | {len(table['seeds'].get(b, []))} | " + " | ".join(cells) + " |")
    return lines


_CONSTANT = " (constant)"


def _interval(c: dict, mean_col: str, stem: str, note: str = "") -> str:
    """``+0.12 [+0.05, +0.19]*``: the mean, its raw 95% interval when there is one, * when its Holm-adjusted
    p-value is below ALPHA; ``+88 (constant)`` for a difference without spread (no p-value, no star)."""
    mean, low, high = (c.get(x, math.nan) for x in (mean_col, f"{stem}_ci_low", f"{stem}_ci_high"))
    if not math.isfinite(mean):
        return ""
    text = f"{mean:+.3g}"
    if math.isfinite(low) and math.isfinite(high):
        if not math.isfinite(c.get(f"{stem}_p", math.nan)):
            return text + _CONSTANT + note
        text += f" [{low:+.3g}, {high:+.3g}]" + ("*" if c.get(f"{stem}_p_holm", math.nan) < ALPHA else "")
    return text + note


def _rule(table: dict, families_text: str, body: list[str]) -> str:
    """The text under a paired table: the pairing, the interval, the family and its correction, the sign."""
    better = "positive = better" if table["higher_is_better"] else "negative = better"
    text = (
        "paired by pre-training seed; [raw 95% Student-t interval over the paired differences]; "
        f"{families_text}; * = Holm-adjusted p < {ALPHA:g} within its family; {better}."
    )
    if any(_CONSTANT in line for line in body):
        text += (
            f" {_CONSTANT.strip()} = the same difference in every pair: no spread, so no p-value and no star."
        )
    return text


def _family_size(table: dict, family: str) -> int:
    cmp = table["compare"]
    return int(np.isfinite(cmp[families(cmp.columns, MEASURES)[family]].to_numpy(dtype=float)).sum())


def _pairs(x: float) -> str:
    return "" if math.isnan(x) else str(int(x))


def _render_compare(table: dict) -> list[str]:
    """The "Paired differences" sections of summary.md (vs ``none``, and vs ``vanilla`` if the sweep has it)."""
    cmp = table.get("compare")
    if cmp is None or cmp.empty:
        return []
    rows = cmp.to_dict("index")
    control = any(not math.isnan(c["random_init_pairs"]) for c in rows.values())
    head = ["balancer", "pairs", "worst diff vs none", "average diff vs none", "ft std (worst / average)"]
    head += ["worst gap to random_init", "average gap to random_init"] if control else []
    body, unpaired = [], False
    for b, c in rows.items():
        cells = [_interval(c, f"{m}_diff", m) for m in MEASURES]
        cells.append(
            " / ".join(_num(c[f"{m}_ft_std"], ".2g") for m in MEASURES if math.isfinite(c[f"{m}_ft_std"]))
        )
        if control:
            note = " (unpaired)" if c["random_init_pairs"] == 0 else ""
            unpaired |= bool(note)
            cells += [_interval(c, f"{m}_gap_random_init", f"{m}_gap_random_init", note) for m in MEASURES]
        if any(cells):
            body.append(f"| {b} | {_pairs(c['pairs'])} | " + " | ".join(cells) + " |")
    lines = []
    if body:
        fams = f"{_family_size(table, 'none')} intervals in this family"
        if control:
            fams = (
                f"two families: the {_family_size(table, 'none')} intervals vs `none` and the "
                f"{_family_size(table, 'random_init')} gaps to random_init"
            )
        text = (
            f"Row minus `none` of its group{' (and minus the random-init control)' if control else ''}: "
            f"{_rule(table, fams, body)} ft std = std over fine-tuning seeds, mean over the row's runs (the noise "
            "floor)."
        )
        if unpaired:
            text += " (unpaired) = no pre-training seed shared with random_init: difference of means."
        lines += _md_section("Paired differences", text, head, body)
    vanilla = [
        f"| {b} | {_pairs(c['vanilla_pairs'])} | "
        + " | ".join(_interval(c, f"vanilla_{m}_diff", f"vanilla_{m}") for m in MEASURES)
        + " |"
        for b, c in rows.items()
        if not math.isnan(c.get("vanilla_pairs", math.nan))
    ]
    if vanilla:
        fams = f"{_family_size(table, 'vanilla')} intervals in this family"
        head = ["balancer", "pairs", "worst diff vs vanilla", "average diff vs vanilla"]
        text = f"Row minus `vanilla` of its group: {_rule(table, fams, vanilla)}"
        lines += _md_section("Paired differences vs vanilla", text, head, vanilla)
    return lines


def _render_by_metric(table: dict) -> list[str]:
    """The worst case over the downstream tasks of every report metric (mean +- std over seeds), and its paired
    difference to ``none`` of the row's group, through the same pairing and t-test as the table above."""
    rows = table.get("by_metric") or {}
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    if not metrics:
        return []
    head = ["balancer", "seeds", *metrics]
    body = [
        f"| {b} | {len(table['seeds'].get(b, []))} | "
        + " | ".join(_mean_std(*row[m][:2]) if m in row else "" for m in metrics)
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
    if cmp is None or cmp.empty or "metric_pairs" not in cmp:
        return lines
    paired = []
    for b, c in cmp.to_dict("index").items():
        cells = [_interval(c, f"{m}_worst_diff", f"{m}_worst") for m in metrics]
        if any(cells):
            paired.append(f"| {b} | {_pairs(c['metric_pairs'])} | " + " | ".join(cells) + " |")
    if paired:
        fams = f"{_family_size(table, 'by_metric')} intervals in this family"
        text = f"Worst case of each metric, row minus `none` of its group: {_rule(table, fams, paired)}"
        lines += _md_section("Paired differences per metric", text, ["balancer", "pairs", *metrics], paired)
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


def _reference(labels: list[str]):
    """``reference(label, ref)``: the ``ref`` row of the label's group; the random-init control lacks the
    pre-training overrides that group the other rows, so it is compared with the sweep's only ``ref`` row (or
    they with the only control). None for a ``ref`` row itself or without such a row."""
    base = {label: label.partition(" (")[0] for label in labels}

    def reference(label: str, ref: str) -> str | None:
        if base[label] == ref:
            return None
        if _ref_of(label, ref) in labels:
            return _ref_of(label, ref)
        only = [x for x in labels if base[x] == ref]
        return only[0] if len(only) == 1 and "random_init" in (ref, base[label]) else None

    return reference


def compare(runs: list[dict], labels: list[str]):
    """The paired statistics of each row in ``labels`` against ``none``/``vanilla`` of its group, the
    random-init control and, with report metrics (results.json ``report_metrics``), of the worst case of each
    metric against ``none``: a DataFrame indexed by row, the extra columns of summary.csv
    (:func:`runner.statistics.compare_rows`)."""
    import pandas as pd

    if not labels:
        return pd.DataFrame()
    metric_cols = [f"{m}_worst" for m in report_metrics(runs)]
    return compare_rows(_run_frame(runs), labels, _reference(labels), MEASURES, metric_cols)


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
