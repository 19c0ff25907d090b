"""The run's loggers (``conf/logger``): who the run is on the dashboard, logs that survive a resume, and the
paper's numbers in every logger's summary.

- :func:`run_identity`: wandb name ``<experiment>-<balancer>-s<seed>`` (plus the other overrides, e.g. a swept
  ``trainer.max_steps=600``), job_type = the stage, group = the sweep's folder (the experiment for a single run),
  tags experiment / balancer / adaptation protocol.
- :class:`WandbLogger`: Lightning's, quiet, without the deprecated ``anonymous`` setting; its run id is kept in
  ``<run_dir>/wandb/run_id`` and reused (``resume="allow"``) when pre-training resumes from a checkpoint.
- :class:`CSVLogger`: Lightning's, appending to ``metrics.csv`` on a resume instead of replacing it.
- :func:`log_results`: ``summary/worst``, ``summary/average``, ``summary/worst_task``,
  ``downstream/<task>/<metric>``, ``upstream/<task>/final_loss`` (and wall times) to every logger, the wandb
  run summary and a wandb table of the downstream results.
- :func:`upload_sweep_summary`: a sweep's summary.md, summary.csv and figures as one wandb artifact.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

#: where a run directory keeps its wandb run id
RUN_ID_FILE = Path("wandb") / "run_id"

#: overrides that do not name a run (where it writes, how it logs, what is fixed by the name already)
_NOT_NAMING = (
    "experiment",
    "balancer",
    "seed",
    "stage",
    "debug",
    "logger",
    "callbacks",
    "threads",
    "ckpt_path",
    "pretrained_ckpt",
    "print_table",
    "optimized_metric",
    "dashboard",
    "hydra.",
    "paths.",
    "trainer.enable_progress_bar",
)


def _hydra_runtime():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return None


def run_identity(cfg, balancer: str, overrides: list[str]) -> dict[str, Any]:
    """name, group, job_type and tags of this run on the dashboard."""
    experiment, seed = str(cfg.experiment), int(cfg.seed)
    extra = [o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(_NOT_NAMING)]
    name = "-".join([experiment, balancer, f"s{seed}", *extra])
    group = experiment
    hc = _hydra_runtime()
    if hc is not None and _is_multirun(hc):
        group = Path(str(hc.sweep.dir)).name  # the sweep: every job of it shares the group
    tags = [experiment, balancer]
    protocol = (cfg.get("downstream") or {}).get("protocol") if cfg.stage != "pretrain" else None
    if protocol:
        tags.append(str(protocol))
    return {"name": name, "group": group, "job_type": str(cfg.stage), "tags": tags}


def _is_multirun(hc) -> bool:
    from hydra.types import RunMode

    return hc.mode == RunMode.MULTIRUN


def read_run_id(*run_dirs: Path) -> str | None:
    """The wandb run id kept in the first of ``run_dirs`` that has one."""
    for d in run_dirs:
        path = Path(d) / RUN_ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def new_run_id() -> str:
    """A fresh wandb-style run id: 8 lower-case letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@rank_zero_only
def store_run_id(run_dir: Path, run_id: str) -> None:
    path = Path(run_dir) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger``, quiet (``quiet``: no run history printed at the end) and without the
    ``anonymous`` setting Lightning always passes (wandb >= 0.19 warns about it on every run). The pipeline gives it
    its name, group, job_type, tags and run id (:func:`run_identity`, :data:`RUN_ID_FILE`)."""

    def __init__(self, *, quiet: bool = True, settings: dict | None = None, **kwargs: Any) -> None:
        import wandb

        settings = dict(settings or {})
        if quiet:
            settings.setdefault("quiet", True)
        super().__init__(settings=wandb.Settings(**settings), **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class _AppendingWriter(ExperimentWriter):
    """Lightning's metrics.csv writer that keeps an earlier metrics.csv (its rows and header) and appends."""

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            header = next(csv.reader(f), [])
        self.metrics_keys = sorted(header)
        if header != self.metrics_keys:  # rows are appended in sorted-key order
            self._rewrite_with_new_header(self.metrics_keys)


class CSVLogger(_CSVLogger):
    """Lightning's ``CSVLogger``; with ``append`` (a resumed pre-training), rows go after the earlier run's rows
    in the same ``metrics.csv`` instead of replacing them."""

    def __init__(self, *args: Any, append: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append = bool(append)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.append:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return super().experiment


def results_metrics(results: dict, timings: dict[str, float] | None = None) -> dict[str, float]:
    """The numbers of results.json every logger gets at the end of a run."""
    values: dict[str, float] = {}
    for task, r in (results.get("downstream") or {}).items():
        for metric, v in r["metrics"].items():
            values[f"downstream/{task}/{metric}"] = float(v)
    for task, loss in (results.get("upstream") or {}).items():
        if loss is not None:
            values[f"upstream/{task}/final_loss"] = float(loss)
    summary = results.get("summary") or {}
    if summary:
        values["summary/worst"] = float(summary["worst"])
        values["summary/average"] = float(summary["average"])
    for stage, seconds in (timings or {}).items():
        values[f"time/{stage}_s"] = float(seconds)
    for key, v in (results.get("cost") or {}).items():  # step time and throughput of pre-training
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[f"cost/{key}"] = float(v)
    return values


def log_results(loggers: list, results: dict, step: int, timings: dict[str, float] | None = None) -> None:
    """Write the run's headline numbers to every logger: one row at ``step`` (the last pre-training step) in
    CSV / TensorBoard / wandb history, and, for wandb, the run summary (``define_metric`` with ``min``/``max``
    by the metrics' direction) and a ``downstream/results`` table (task, metric, value, primary)."""
    values = results_metrics(results, timings)
    summary = results.get("summary") or {}
    worst_task = {"summary/worst_task": summary["worst_task"]} if summary else {}
    for lg in loggers:
        try:
            if isinstance(lg, _WandbLogger):
                _log_wandb(lg, results, values, worst_task, step)
            elif isinstance(lg, _CSVLogger):
                lg.log_metrics({**values, **worst_task}, step)
            else:
                lg.log_metrics(values, step)
                if worst_task and isinstance(lg, TensorBoardLogger):
                    lg.experiment.add_text("summary/worst_task", worst_task["summary/worst_task"], step)
            lg.save()
        except Exception as exc:  # noqa: BLE001 - a logger must never fail a finished run
            log.warning("could not write the results to %s: %s", type(lg).__name__, exc)


def _log_wandb(lg, results: dict, values: dict, worst_task: dict, step: int) -> None:
    run = lg.experiment
    summary = results.get("summary") or {}
    best = "max" if summary.get("higher_is_better", True) else "min"
    define = getattr(run, "define_metric", None)
    if define is not None:
        for key in ("summary/worst", "summary/average"):
            define(key, step_metric="trainer/global_step", summary=best)
        define("upstream/*", step_metric="trainer/global_step", summary="min")
    lg.log_metrics(values, step)
    run.summary.update({**values, **worst_task})  # the values of results.json, whatever the aggregation
    rows = [
        [task, metric, float(v), metric == r["primary"]]
        for task, r in (results.get("downstream") or {}).items()
        for metric, v in r["metrics"].items()
    ]
    if rows:
        lg.log_table(key="downstream/results", columns=["task", "metric", "value", "primary"], data=rows)


def upload_sweep_summary(sweep_dir: Path, wandb_cfg: Any) -> str | None:
    """Log a sweep's ``summary.md``, ``summary.csv`` and figures (``*.png``) as one wandb artifact of type
    ``sweep-summary`` (and summary.csv as the table ``sweep/summary``), from a run of job_type ``sweep-summary``
    in the sweep's group, offline unless ``logger.wandb.offline=false``. Returns the artifact's name, or None
    when the sweep wrote no summary."""
    import wandb

    sweep_dir = Path(sweep_dir)
    files = [sweep_dir / "summary.md", sweep_dir / "summary.csv", *sorted(sweep_dir.glob("*.png"))]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    group = sweep_dir.name
    kwargs: dict[str, Any] = {}
    if "WANDB_MODE" not in os.environ:  # the environment (e.g. WANDB_MODE=disabled) wins
        kwargs["mode"] = "offline" if wandb_cfg.get("offline", True) else "online"
    run = wandb.init(
        project=wandb_cfg.get("project"),
        entity=wandb_cfg.get("entity"),
        dir=str(sweep_dir),
        group=group,
        job_type="sweep-summary",
        name=f"{group}-summary",
        settings=wandb.Settings(quiet=True),
        **kwargs,
    )
    try:
        name = "sweep-" + re.sub(r"[^\w.-]", "-", group)
        artifact = wandb.Artifact(name, type="sweep-summary", description=f"summary of the sweep {sweep_dir}")
        for f in files:
            artifact.add_file(str(f), name=f.name)
        run.log_artifact(artifact)
        if (sweep_dir / "summary.csv").is_file():
            import pandas as pd

            run.log({"sweep/summary": wandb.Table(dataframe=pd.read_csv(sweep_dir / "summary.csv"))})
    finally:
        run.finish()
    return name
