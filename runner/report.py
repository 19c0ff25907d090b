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
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from runner.figures import write_figures
from runner.tables import build_table, collect, render_markdown
from utils.errors import ConfigError

log = logging.getLogger(__name__)


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
        for f in (
            "curves.png",
            "theory.png",
            "weights.png",
            "upstream_losses.png",
            "downstream.png",
            "figure3.png",
            "heterogeneity.png",
        )
        if (sweep_dir / f).exists()
    ]
    if figs:
        text += "\n" + "\n".join(f"![{f[:-4]}]({f})" for f in figs) + "\n"
    md.write_text(text)
    write_csv(sweep_dir / "summary.csv", table)
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
            path = write_summary(sweep_dir)
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


def print_summary(sweep_dir: str | Path | None) -> Path:
    """``stage=report``: write summary.md, summary.csv and the figures of the sweep folder ``sweep_dir``
    (``report.sweep_dir``) from its runs' results.json, print the table and return summary.md's path."""
    if not sweep_dir or not Path(sweep_dir).is_dir():
        raise ConfigError(
            f"stage=report needs report.sweep_dir=<a sweep folder holding the runs' results.json>, got {sweep_dir}."
        )
    path = write_summary(Path(sweep_dir))
    print(path.read_text())
    return path
