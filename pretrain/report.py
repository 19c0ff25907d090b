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
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable %s (%s)", path, exc)
    return runs


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


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
    for r in runs:
        b = r.get("balancer", "?")
        seeds[b].add(r.get("seed"))
        for t, d in r.get("downstream", {}).items():
            values[b][t].append(float(d["metrics"][d["primary"]]))
        s = r.get("summary") or {}
        if "average" in s:
            values[b]["average"].append(float(s["average"]))
            values[b]["worst"].append(float(s["worst"]))
    columns = tasks + ["average", "worst"]
    rows = {
        b: {c: (*_stats(v[c]), len(v[c])) for c in columns if v.get(c)} for b, v in sorted(values.items())
    }
    primary = {}
    for r in runs:
        for t, d in r.get("downstream", {}).items():
            primary.setdefault(t, d["primary"])
    return {
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
    if not cols:
        return "No complete runs (no results.json) were found.\n"
    arrow = "higher is better" if table["higher_is_better"] else "lower is better"
    lines = [
        f"# Summary: {', '.join(table['experiments'])}",
        "",
        f"Primary metric per task ({arrow}); mean +- std over seeds; **bold** = best per column; "
        "(diff vs none) in brackets.",
        "",
        "| balancer | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    base = table["rows"].get("none")
    for b, row in table["rows"].items():
        cells = []
        for c in cols:
            if c not in row:
                cells.append("")
                continue
            mean, std, _ = row[c]
            text = f"{mean:.4g} +- {std:.2g}"
            if _best(table, c) == b and len(table["rows"]) > 1:
                text = f"**{text}**"
            if base is not None and b != "none" and c in base:
                text += f" ({mean - base[c][0]:+.3g})"
            cells.append(text)
        n_seeds = len(table["seeds"].get(b, []))
        lines.append(f"| {b} | {n_seeds} | " + " | ".join(cells) + " |")
    if table.get("primary"):
        lines += ["", "Primary metrics: " + ", ".join(f"{t}: {m}" for t, m in table["primary"].items())]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> Path:
    sweep_dir = Path(sweep_dir)
    table = build_table(collect(sweep_dir))
    md = sweep_dir / "summary.md"
    md.write_text(render_markdown(table))
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
