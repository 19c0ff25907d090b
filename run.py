"""The one entry point: ``python run.py [group=choice ...] [key=value ...]`` (``-m`` for a sweep).

Examples::

    python run.py                                   # the default experiment, pre-train + fine-tune
    python run.py experiment=convex balancer=none   # section 5 of the paper with average pre-training
    python run.py -m experiment=convex balancer=none,minimax seed=0,1,2   # a sweep + summary.md
    python run.py experiment=convex debug=smoke     # every stage on a few batches, in seconds
    python run.py stage=report report.sweep_dir=multirun/convex/<time>   # rebuild a sweep's summary.md

Every tool is a stage (``stage=`` in conf/config.yaml: all, pretrain, finetune, pseudo_label, dashboard, report,
nsp_cues). See README.md for each config group.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger("run")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from runner.pipeline import run
    from utils.errors import UserError

    try:
        results = run(cfg)
        return objective(results, cfg.get("optimized_metric"))  # what a Hydra sweeper (Optuna) optimises
    except UserError as exc:
        # One sentence naming the key, file or step; no traceback, and no results.json was written.
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except BaseException:
        # Keep the traceback in this run's own run.log: a failed job of a sweep is otherwise only a line in the
        # launcher's output.
        log.exception("the run failed")
        raise


def objective(results: dict | None, key: str | None) -> float | None:
    """The value of ``optimized_metric`` (a dotted key of results.json, default ``summary.worst``) in a run's
    results, or None when the run has none (stage=pretrain writes an empty summary)."""
    from utils.errors import ConfigError

    if not results or not key:
        return None
    value = results
    for part in str(key).split("."):
        if isinstance(value, dict) and not value:
            return None
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(
                f"optimized_metric={key}: results.json has no such number (e.g. summary.worst, summary.average, "
                "downstream.<task>.metrics.<metric>)."
            )
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"optimized_metric={key}: results.json holds {value!r} there, not a number.")
    return float(value)


if __name__ == "__main__":
    main()
