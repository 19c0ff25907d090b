"""Sweep summaries: one row per balancer, one column per downstream task, plus average and worst,
mean +- std over seeds; written as ``summary.md`` and ``summary.csv`` into the sweep directory, with the
paired statistics of every row (difference to ``none``/``vanilla`` of its group and gap to the
``random_init`` control, paired by pre-training seed with a 95% Student-t interval), the fine-tuning-seed
noise floor, the same paired statistics for the worst case of every metric a run lists in ``report_metrics``
(the convex experiment: initial risk, sample complexity, excess risk at each N), and figures (``curves.png``:
worst and average primary metric against the downstream N; ``theory.png``: the convex experiment's
worst-case excess risk and sample complexity against the worst-case initial risk).

Used at the end of every multirun (``SummaryCallback``, configured in ``conf/hydra/default.yaml``) and
as a command that rebuilds the table from the run directories of an interrupted/resumed sweep::

    python -m runner.report multirun/convex/2026-11-27_10-00-00

Both also write ``provenance.json`` (runner/provenance.py: commit, command, machine, versions, wall time). The same
command stores a finished sweep under ``results/<name>/`` (``--store <name>``, ``--force`` to replace one) and
renders the docs' result blocks from ``results/`` (``--docs``; ``--docs --check`` exits 1 when they are out of
date): runner/docs_render.py.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from runner.figures import write_figures
from runner.provenance import write_provenance
from runner.tables import build_table, collect, render_markdown

log = logging.getLogger(__name__)


#: the sweep figures summary.md links, in order (runner/figures.py writes them)
FIGURES = ("curves.png", "theory.png", "weights.png", "upstream_losses.png", "downstream.png", "figure3.png")


def summary_markdown(table: dict, folder: Path) -> str:
    """summary.md: the rendered table and a link to every figure present in ``folder``."""
    text = render_markdown(table)
    figs = [f for f in FIGURES if (Path(folder) / f).exists()]
    if figs:
        text += "\n" + "\n".join(f"![{f[:-4]}]({f})" for f in figs) + "\n"
    return text


def write_summary(sweep_dir: Path, figures: bool = True, argv: list[str] | None = None) -> Path:
    """summary.md, summary.csv, the figures and provenance.json of the runs below ``sweep_dir`` (``argv``: the
    multirun's command line, when called at its end)."""
    sweep_dir = Path(sweep_dir)
    runs = collect(sweep_dir)
    table = build_table(runs)
    if figures and runs:
        try:
            write_figures(sweep_dir, runs, table)
        except Exception as exc:  # noqa: BLE001 - a figure must never cost the table
            log.warning("sweep figures failed: %s", exc)
    md = sweep_dir / "summary.md"
    md.write_text(summary_markdown(table, sweep_dir))
    write_csv(sweep_dir / "summary.csv", table)
    try:
        write_provenance(sweep_dir, runs, argv)
    except Exception as exc:  # noqa: BLE001 - provenance must never cost the table
        log.warning("provenance.json failed: %s", exc)
    return md


def write_csv(path: Path, table: dict) -> None:
    """summary.csv: ``balancer, seeds, <column>_mean, <column>_std, ...`` and the columns of ``compare``."""
    import pandas as pd

    head = ["balancer", "seeds"] + [f"{c}_{s}" for c in table["columns"] for s in ("mean", "std")]
    frame = pd.DataFrame(
        [
            [b, len(table["seeds"].get(b, []))]
            + [x for c in table["columns"] for x in (row[c][:2] if c in row else (math.nan, math.nan))]
            for b, row in table["rows"].items()
        ],
        columns=head,
    )
    for b, row in (table.get("upstream") or {}).items():
        for c, (mean, std, _) in row.items():
            frame.loc[frame["balancer"] == b, f"{c}_mean"] = mean
            frame.loc[frame["balancer"] == b, f"{c}_std"] = std
    for b, row in (table.get("by_metric") or {}).items():
        for m, (mean, std, _) in row.items():
            frame.loc[frame["balancer"] == b, f"{m}_worst_mean"] = mean
            frame.loc[frame["balancer"] == b, f"{m}_worst_std"] = std
    cmp = table.get("compare")
    if cmp is not None and not cmp.empty:
        cmp = cmp.astype({c: "Int64" for c in cmp.columns if c.endswith("pairs")})
        frame = frame.join(cmp, on="balancer")
    frame.to_csv(path, index=False)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SummaryCallback(_HydraCallback):
    """Hydra callback: at the end of a multirun, write summary.md / summary.csv in the sweep dir (and, with
    ``logger=wandb``, log them and the figures to wandb as one artifact)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            path = write_summary(sweep_dir, argv=sys.argv)
            log.info("sweep summary written to %s", path)
            print(path.read_text())
            wandb_cfg = (config.get("logger") or {}).get("wandb")
            if wandb_cfg and "_target_" in wandb_cfg:
                try:
                    from runner.loggers import upload_sweep_summary

                    name = upload_sweep_summary(sweep_dir, wandb_cfg)
                    log.info("sweep summary logged to wandb as the artifact %s", name)
                except Exception as exc:  # noqa: BLE001 - the summary files are written already
                    log.warning("could not log the sweep summary to wandb: %s", exc)


def _parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Write a sweep's summary (and store it under results/<name>), or render the docs from results/.",
    )
    p.add_argument("sweep_dir", nargs="?", type=Path, help="a directory holding the runs' results.json")
    p.add_argument("--store", metavar="NAME", help="copy the finished sweep into results/NAME/")
    p.add_argument("--force", action="store_true", help="with --store: replace an existing results/NAME/")
    p.add_argument(
        "--docs", action="store_true", help="rebuild results/*/summary.* and the docs' results blocks"
    )
    p.add_argument("--check", action="store_true", help="with --docs: change nothing, exit 1 if out of date")
    p.add_argument("--root", type=Path, default=None, help="the repository root (default: this checkout)")
    return p


def main(argv: list[str] | None = None) -> int:
    from runner import docs_render

    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check and not args.docs or args.force and not args.store:
        parser.error("--check goes with --docs, and --force with --store NAME")
    if args.docs and (args.store or args.sweep_dir):
        parser.error("--docs renders from results/: give it no sweep directory and no --store")
    root = args.root or docs_render.REPO
    if args.docs:
        stale = docs_render.render_all(root, check=args.check)
        for path in stale:
            print(f"out of date: {path}" if args.check else f"rewritten: {path}")
        if args.check and stale:
            print("the docs or results/ are out of date: run `python -m runner.report --docs`")
        return 1 if args.check and stale else 0
    if args.sweep_dir is None or not args.sweep_dir.is_dir():
        print("usage: python -m runner.report <sweep_dir> [--store NAME [--force]] | --docs [--check]"
              "  (sweep_dir: a directory holding the runs' results.json)")  # fmt: skip
        return 2
    path = write_summary(args.sweep_dir)
    print(path.read_text())
    if args.store:
        try:
            dest = docs_render.store(args.sweep_dir, args.store, root, force=args.force)
        except docs_render.StoreError as exc:
            print(exc)
            return 2
        print(f"stored in {dest}; render the docs with `python -m runner.report --docs`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
