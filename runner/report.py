"""Sweep summaries: one row per balancer, one column per downstream task, plus average and worst,
mean +- std over seeds; written as ``summary.md`` and ``summary.csv`` into the sweep directory, with the
paired statistics of every row (difference to ``none``/``vanilla`` of its group and gap to the
``random_init`` control, paired by pre-training seed with a 95% Student-t interval), the fine-tuning-seed
noise floor, the same paired statistics for the worst case of every metric a run lists in ``report_metrics``
(the convex experiment: initial risk, sample complexity, excess risk at each N), and figures (``curves.png``:
worst and average primary metric against the downstream N; ``theory.png``: the convex experiment's
worst-case excess risk and sample complexity against the worst-case initial risk).

Used at the end of every multirun (``SummaryCallback``, configured in ``conf/hydra/default.yaml``) and
as a stage that rebuilds the table from the run directories of an interrupted/resumed sweep::

    python run.py stage=report report.sweep_dir=multirun/convex/2026-11-27_10-00-00

Both also write ``provenance.json`` (runner/provenance.py: commit, command, machine, versions, wall time). The same
stage stores a finished sweep under ``results/<name>/`` (``report.store=<name>``, ``report.force=true`` to
replace one), stores a script's JSON output (``report.data=<file.json> report.store=<name>``) and renders
the docs' result blocks from ``results/`` (``report.docs=true``; with
``report.check=true`` it changes nothing and fails when they are out of date): runner/docs_render.py.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from runner.figures import write_figures
from runner.heterogeneity import (
    dial_check_frame,
    dial_check_markdown,
    heterogeneity_frame,
    heterogeneity_markdown,
)
from runner.provenance import write_provenance
from runner.tables import build_table, collect, render_markdown
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


#: the sweep figures summary.md links, in order (runner/figures.py writes them)
FIGURES = (
    "curves.png",
    "theory.png",
    "weights.png",
    "upstream_losses.png",
    "downstream.png",
    "figure3.png",
    "heterogeneity.png",
)


def summary_markdown(table: dict, folder: Path, runs: list[dict] | None = None) -> str:
    """summary.md: the rendered table, the heterogeneity map's numbers where ``runs`` are dialled, and a link to
    every figure present in ``folder``."""
    text = render_markdown(table) + heterogeneity_markdown(heterogeneity_frame(runs or []))
    text += dial_check_markdown(dial_check_frame(runs or []))
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
    md.write_text(summary_markdown(table, sweep_dir, runs))
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
    # every row of any table: a pre-training-only sweep (stage=pretrain) has upstream rows and no downstream ones
    rows = {
        **table["rows"],
        **{b: {} for t in ("upstream", "by_metric") for b in table.get(t) or {} if b not in table["rows"]},
    }
    frame = pd.DataFrame(
        [
            [b, len(table["seeds"].get(b, []))]
            + [x for c in table["columns"] for x in (row[c][:2] if c in row else (math.nan, math.nan))]
            for b, row in rows.items()
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


def report_stage(
    sweep_dir: str | Path | None = None,
    store: str | None = None,
    force: bool = False,
    docs: bool = False,
    check: bool = False,
    root: Path | None = None,
    data: str | Path | None = None,
) -> Path | None:
    """``stage=report`` (the ``report.*`` keys): write summary.md, summary.csv, the figures and provenance.json of
    the sweep folder ``sweep_dir`` from its runs' results.json and print the table, then with ``store`` copy it
    into ``results/<store>/``; or store the JSON file ``data`` (a script's output, not a sweep) as
    ``results/<store>/data.json``; or, with ``docs``, rebuild every stored summary and the docs' result blocks
    from ``results/`` (``check``: change nothing, fail naming what is out of date). Returns summary.md's path."""
    from runner import docs_render

    root = Path(root) if root else docs_render.REPO
    if docs:
        if sweep_dir or store or data:
            raise ConfigError(
                "report.docs=true renders from results/: leave report.sweep_dir, report.store and report.data unset."
            )
        stale = docs_render.render_all(root, check=check)
        if check and stale:
            raise DataError(
                f"out of date with results/: {', '.join(str(p.relative_to(root)) for p in stale)}; render them with "
                "`python run.py stage=report report.docs=true`."
            )
        for path in stale:
            print(f"rewritten: {path}")
        return None
    if check or (force and not store):
        raise ConfigError(
            "report.check goes with report.docs=true, and report.force with report.store=<name>."
        )
    if data:
        if sweep_dir or not store:
            raise ConfigError(
                "report.data=<file.json> goes with report.store=<name> and without report.sweep_dir."
            )
        _store(docs_render.store_file, Path(data), store, root, force)
        return None
    if not sweep_dir or not Path(sweep_dir).is_dir():
        raise ConfigError(
            f"stage=report needs report.sweep_dir=<a sweep folder holding the runs' results.json>, got {sweep_dir}."
        )
    path = write_summary(Path(sweep_dir))
    print(path.read_text())
    if store:
        _store(docs_render.store, Path(sweep_dir), store, root, force)
    return path


def _store(how, source: Path, name: str, root: Path, force: bool) -> None:
    """Store ``source`` as ``results/<name>/`` with ``how`` (docs_render.store or store_file); a refusal is a
    DataError (one sentence), and the line printed says how to render the docs."""
    from runner.docs_render import StoreError

    try:
        dest = how(source, name, root, force=force)
    except StoreError as exc:
        raise DataError(str(exc)) from None
    print(f"stored in {dest}; render the docs with `python run.py stage=report report.docs=true`")
