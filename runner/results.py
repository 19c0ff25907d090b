"""A run's results: the summary over the downstream tasks, results.json (written atomically), the
console table and the step timer behind the cost table. The per-step history of the task losses and weights is
the loggers' (``csv/metrics.csv``, read by the sweep's figures).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from finetune.protocol import DownstreamSuite
from pretrain.base import PretrainingModule
from utils.errors import ConfigError

log = logging.getLogger(__name__)


class StepTimer(Callback):
    """Wall time of every pre-training step (forward, balancer, backward, optimizer): the cost table."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def summary(self) -> dict:
        steady = self.times[min(5, len(self.times) // 2) :] or self.times
        return {
            "steps": len(self.times),
            "median_step_ms": 1000 * statistics.median(steady) if steady else None,
            "pretrain_seconds": sum(self.times),
        }


def summarise(downstream: dict[str, dict]) -> dict[str, Any]:
    """Worst and average over the downstream tasks' primary metrics (means over fine-tuning seeds), over every
    shared metric, for each fine-tuning seed (``per_seed``) and at each N of the curve (``curve``)."""
    if not downstream:
        return {}
    directions = {bool(r["higher_is_better"]) for r in downstream.values()}
    if len(directions) != 1:
        raise ConfigError("downstream: tasks disagree on higher_is_better; the summary needs one direction.")
    higher = directions.pop()
    pick = max if not higher else min

    def worst_and_average(values: list[float]) -> dict[str, float]:
        return {"worst": pick(values), "average": statistics.fmean(values)}

    primary = [float(r["metrics"][r["primary"]]) for r in downstream.values()]
    worst = pick(primary)
    worst_task = list(downstream)[primary.index(worst)]
    by_metric = {}
    shared = set.intersection(*(set(r["metrics"]) for r in downstream.values()))
    for metric in sorted(shared):
        values = [float(r["metrics"][metric]) for r in downstream.values()]
        by_metric[metric] = {
            "worst": min(values) if higher else max(values),
            "average": statistics.fmean(values),
        }
    summary = {
        "worst": worst,
        "worst_task": worst_task,
        "average": statistics.fmean(primary),
        "higher_is_better": higher,
        "by_metric": by_metric,
    }
    seeds = [r.get("per_seed") for r in downstream.values()]
    if all(seeds) and len({len(s) for s in seeds}) == 1:
        per = [worst_and_average([s[i] for s in seeds]) for i in range(len(seeds[0]))]
        summary["per_seed"] = {k: [p[k] for p in per] for k in ("worst", "average")}
    curves = [r.get("curve") for r in downstream.values()]
    if all(curves) and len({tuple(c) for c in curves}) == 1:
        summary["curve"] = {n: worst_and_average([c[n] for c in curves]) for n in curves[0]}
    return summary


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write results.json under a temporary name and rename it: never a half-written results.json; a full disk
    is one sentence (DataError)."""
    from utils.atomic import atomic_write

    text = json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n"
    atomic_write(
        path,
        lambda tmp: tmp.write_text(text),
        what="results",
        relocate="run in another folder (hydra.run.dir=...)",
    )


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['experiment']} / {results['balancer']} / seed {results['seed']}")
    table.add_column("downstream task")
    table.add_column("primary metric")
    table.add_column("value", justify="right")

    def cell(mean: float, values: list[float] | None) -> str:
        if values and len(values) > 1:  # mean +- std over the fine-tuning seeds
            return f"{mean:.4g} +- {statistics.stdev(values):.2g}"
        return f"{mean:.4g}"

    for name, r in results["downstream"].items():
        table.add_row(name, r["primary"], cell(r["metrics"][r["primary"]], r.get("per_seed")))
    s = results.get("summary", {})
    if s:
        per = s.get("per_seed", {})
        table.add_row("[bold]worst[/bold]", s["worst_task"], cell(s["worst"], per.get("worst")))
        table.add_row("[bold]average[/bold]", "", cell(s["average"], per.get("average")))
    Console().print(table)


def build_results(
    head: dict, module: PretrainingModule, downstream: dict, suite: DownstreamSuite | None, cost: dict
) -> dict:
    """The results.json payload: ``head`` (the run's experiment, balancer, seed, stage and overrides), then the
    module's upstream losses and weights, the downstream results and their summary (``cost``: the pre-training's
    step time and throughput, empty when this run did not pre-train)."""
    agg = module.aggregator
    results = {
        **head,
        "upstream": agg.final_losses(),
        "weights": agg.weight_summary(),
        "downstream": downstream,
        "summary": summarise(downstream),
    }
    if module.upstream_eval:
        results["upstream_eval"] = module.upstream_eval
    if cost:
        results["cost"] = cost
    if suite is not None and suite.extra_results:
        results.update(suite.extra_results)
    return results
