"""Sweep summaries: one row per balancer, one column per downstream task, plus average and worst,
mean +- std over seeds; written as ``summary.md`` and ``summary.csv`` into the sweep directory.

Used at the end of every multirun (``SummaryCallback``, configured in ``conf/hydra/default.yaml``) and
as a command that rebuilds the table from the run directories of an interrupted/resumed sweep::

    python -m pretrain.report multirun/convex/2026-11-27_10-00-00
"""

from __future__ import annotations

import csv
import json
import logging
import re
import statistics
import sys
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
    "hydra.",
    "logger",
    "paths.",
    "print_table",
    "trainer.enable_progress_bar",
)


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
        "cost": {b: statistics.median(v) for b, v in sorted(cost.items(), key=lambda kv: row_key(kv[0]))},
        "columns": columns,
        "rows": rows,
        "higher_is_better": higher,
        "seeds": {b: sorted(s, key=str) for b, s in seeds.items()},
        "primary": primary,
        "experiments": sorted({r.get("experiment", "?") for r in runs}),
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


def _none_of(label: str) -> str:
    """The `none` row of the same group: ``minimax (k=v)`` -> ``none (k=v)``."""
    head, sep, rest = label.partition(" (")
    return "none" + sep + rest


def read_history(run_dir: str | Path) -> dict[str, list[float]] | None:
    """A run's ``pretrain_history.csv`` as columns (``step``, ``loss/<task>``, ``weight/<task>``)."""
    path = Path(run_dir) / "pretrain_history.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in rows[0]}


def _mean_curves(
    histories: list[dict[str, list[float]]], prefix: str
) -> tuple[list[float], dict[str, list[float]]]:
    """Average over seeds of the ``prefix/<task>`` columns, on the shortest common step axis."""
    import numpy as np

    n = min(len(h["step"]) for h in histories)
    steps = histories[0]["step"][:n]
    keys = [k for k in histories[0] if k.startswith(prefix + "/")]
    window = max(1, n // 50)  # moving average against minibatch noise

    def smooth(ys):
        ys = np.asarray(ys, dtype=float)
        ok = np.isfinite(ys)
        num = np.convolve(np.where(ok, ys, 0.0), np.ones(window), mode="same")
        den = np.convolve(ok.astype(float), np.ones(window), mode="same")
        return list(np.where(den > 0, num / np.maximum(den, 1), np.nan))

    with np.errstate(all="ignore"):
        return steps, {
            k.split("/", 1)[1]: smooth(np.nanmean([h[k][:n] for h in histories if k in h], axis=0))
            for k in keys
        }


def write_figures(sweep_dir: Path, runs: list[dict], table: dict) -> list[Path]:
    """weights.png, upstream_losses.png (per balancer, over pre-training steps, mean over seeds) and
    downstream.png (each downstream task's primary metric per balancer, mean +- std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    by_balancer: dict[str, list[dict]] = defaultdict(list)
    for r, label in zip(runs, row_labels(runs)):
        h = read_history(r.get("_dir", ""))
        if h is not None:
            by_balancer[label].append(h)
    for prefix, fname, ylabel in (
        ("weight", "weights.png", "task weight"),
        ("loss", "upstream_losses.png", "task loss"),
    ):
        if not by_balancer:
            break
        names = sorted(by_balancer, key=row_key)
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False, sharey=True)
        for ax, b in zip(axes[0], names):
            steps, curves = _mean_curves(by_balancer[b], prefix)
            for task, ys in curves.items():
                ax.plot(steps, ys, label=task, lw=1.2)
            ax.set_title(b)
            ax.set_xlabel(f"pre-training step (moving average of {max(1, len(steps) // 50)})")
            if prefix == "loss":
                ax.set_yscale("log")
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7, loc="best", ncol=1 + len(curves) // 8)
        fig.tight_layout()
        path = Path(sweep_dir) / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    # Figure 3 of the paper: each balancer's segmentation of the same fixed dev images (first seed)
    with_seg = [
        (r, label)
        for r, label in zip(runs, row_labels(runs))
        if (Path(r.get("_dir", "")) / "seg_pred.npy").exists()
    ]
    if with_seg:
        from finetune.vision import sweep_figure

        seed = min(int(r.get("seed", 0)) for r, _ in with_seg)
        chosen = {}
        for r, label in with_seg:
            if int(r.get("seed", 0)) == seed:
                chosen.setdefault(label, Path(r["_dir"]))
        written.append(sweep_figure([chosen[k] for k in sorted(chosen)], Path(sweep_dir) / "figure3.png"))
    tasks = [c for c in table["columns"] if c not in ("average", "worst")]
    balancers = list(table["rows"])
    if tasks and balancers:
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(tasks) * max(1, len(balancers)) / 2), 3.6))
        width = 0.8 / len(balancers)
        x = np.arange(len(tasks))
        for i, b in enumerate(balancers):
            row = table["rows"][b]
            means = [row[t][0] if t in row else np.nan for t in tasks]
            stds = [row[t][1] if t in row else 0 for t in tasks]
            ax.bar(x + (i - (len(balancers) - 1) / 2) * width, means, width, yerr=stds, label=b, capsize=2)
        ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
        arrow = "higher is better" if table["higher_is_better"] else "lower is better"
        ax.set_ylabel(f"primary metric ({arrow})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(sweep_dir) / "downstream.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_summary(sweep_dir: Path, figures: bool = True) -> Path:
    sweep_dir = Path(sweep_dir)
    runs = collect(sweep_dir)
    table = build_table(runs)
    if figures and runs:
        try:
            write_figures(sweep_dir, runs, table)
        except Exception as exc:  # noqa: BLE001 - a figure must never cost the table
            log.warning("sweep figures failed: %s", exc)
    md = sweep_dir / "summary.md"
    text = render_markdown(table)
    figs = [
        f
        for f in ("weights.png", "upstream_losses.png", "downstream.png", "figure3.png")
        if (sweep_dir / f).exists()
    ]
    if figs:
        text += "\n" + "\n".join(f"![{f[:-4]}]({f})" for f in figs) + "\n"
    md.write_text(text)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["balancer", "seeds"] + [f"{c}_{s}" for c in table["columns"] for s in ("mean", "std")])
        for b, row in table["rows"].items():
            w.writerow(
                [b, len(table["seeds"].get(b, []))]
                + [x for c in table["columns"] for x in ((row[c][0], row[c][1]) if c in row else ("", ""))]
            )
    return md


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SummaryCallback(_HydraCallback):
    """Hydra callback: at the end of a multirun, write summary.md / summary.csv in the sweep dir."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            path = write_summary(sweep_dir)
            log.info("sweep summary written to %s", path)
            print(path.read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m pretrain.report <sweep_dir>  (a directory holding the runs' results.json)")
        return 2
    path = write_summary(Path(argv[0]))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
