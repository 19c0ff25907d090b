"""The run behind ``python run.py``: pre-train -> export -> fine-tune every downstream task -> results.json.

Everything is built from the composed Hydra config with ``hydra.utils.instantiate``; see ``conf/``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf

from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    from utils.errors import UserError

    if node is None:
        raise ConfigError(
            f"config key '{key}' is not set: choose one with {key}=<choice> (see `python run.py --help`) "
            "or an experiment that sets it."
        )
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as exc:
        cause = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _resuming(cfg: DictConfig) -> bool:
    """Pre-training resumes from a checkpoint: the loggers continue the earlier run's logs."""
    return cfg.get("ckpt_path") is not None and cfg.stage in ("all", "pretrain")


def _resume_dirs(cfg: DictConfig, out_dir: Path) -> list[Path]:
    """Run directories whose wandb run a resumed pre-training continues: the checkpoint's, then this one."""
    path = cfg.get("ckpt_path")
    dirs = [] if path in (None, "last") else [Path(path).resolve().parent.parent]  # <run>/checkpoints/x.ckpt
    return [*dirs, out_dir]


def build_loggers(cfg: DictConfig) -> list:
    """The loggers of ``conf/logger``; wandb gets this run's name, group, job_type, tags and run id (the earlier
    run's id when pre-training resumes), and the CSV logger appends to metrics.csv on a resume."""
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from pretrain.loggers import CSVLogger, new_run_id, read_run_id, run_identity, store_run_id

    out_dir = Path(cfg.paths.output_dir)
    resuming = _resuming(cfg)
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            cls = get_class(node._target_)
            extra: dict[str, Any] = {}
            if issubclass(cls, LightningWandbLogger):
                identity = run_identity(cfg, _run_balancer(cfg), _task_overrides())
                extra = {k: v for k, v in identity.items() if node.get(k) is None}
                run_id = node.get("id") or (read_run_id(*_resume_dirs(cfg, out_dir)) if resuming else None)
                extra["id"] = run_id or new_run_id()
                store_run_id(out_dir, extra["id"])  # a later ckpt_path=... resume continues this wandb run
            elif issubclass(cls, CSVLogger):
                extra["append"] = resuming
            loggers.append(instantiate(node, **extra))
        except Exception as exc:  # a logger must never kill a run
            log.warning("logger %s could not start (%s); continuing without it", name, exc)
    return loggers


def build_callbacks(cfg: DictConfig, stage: str, loggers: list, label: str | None = None) -> list:
    """The callbacks of ``conf/callbacks`` for the pre-training Trainer (``stage="pretrain"``) or a downstream
    fit (``stage="downstream"``, ``label`` names the task in its progress line). The learning-rate monitor needs
    a logger and the progress bar ``trainer.enable_progress_bar``: without them they are left out."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.callbacks.progress import ProgressBar

    from pretrain.console import StepProgress

    callbacks = []
    for key, node in (OmegaConf.select(cfg, f"callbacks.{stage}") or {}).items():
        if node is None or "_target_" not in node:
            continue
        cb = _instantiate(node, f"callbacks.{stage}.{key}")
        if isinstance(cb, LearningRateMonitor) and not loggers:
            continue
        if isinstance(cb, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        if label and isinstance(cb, StepProgress):
            cb.label = f"{cb.label} {label}"
        callbacks.append(cb)
    return callbacks


#: Trainer keys an override may set back to None (Lightning's default: no limit)
_NONE_OVERRIDES = (
    "max_steps",
    "val_check_interval",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
)


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list | None = None, **overrides: Any):
    from hydra.utils import instantiate

    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    node.update({k: v for k, v in overrides.items() if v is not None or k in _NONE_OVERRIDES})
    if node.get("max_steps") is None:
        node["max_steps"] = -1
    return instantiate(node, logger=loggers or False, callbacks=callbacks or [])


def balancer_factory(cfg: DictConfig) -> Callable:
    return _instantiate(cfg.balancer, "balancer")


def build_pretraining(cfg: DictConfig):
    """(datamodule, LightningModule) for the configured experiment; the datamodule's ``validate()`` has checked
    its inputs (a local corpus that does not decode, ...) before anything is trained."""
    datamodule = _instantiate(cfg.data, "data")
    datamodule.validate()
    model = _instantiate(cfg.model, "model")
    factory = _instantiate(cfg.module, "module")
    aggregation = OmegaConf.to_container(cfg.get("aggregation") or {}, resolve=True)
    module = factory(model=model, balancer=balancer_factory(cfg), aggregation=aggregation)
    return datamodule, module


def _resolve_ckpt(cfg: DictConfig, out_dir: Path) -> str | None:
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    if path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise DataError(f"ckpt_path=last: no checkpoint at {last}; run without ckpt_path first.")
        return str(last)
    if not Path(path).is_file():
        raise DataError(f"ckpt_path: no checkpoint file at {path}.")
    return str(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a Lightning checkpoint, failing with one sentence if the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(
            f"checkpoint {path} is not a PyTorch/Lightning checkpoint ({type(exc).__name__})."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"checkpoint {path} has no 'state_dict': it is not a Lightning checkpoint.")
    return ckpt


def check_matches(ckpt: dict, module, path, experiment: str) -> None:
    """Fail with one sentence if a checkpoint's weights do not fit this experiment's module."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if missing or unexpected or wrong:
        detail = (missing or unexpected or wrong)[0]
        raise DataError(
            f"checkpoint {path} does not fit experiment '{experiment}' with this model config "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped keys, e.g. '{detail}'): "
            "it belongs to another experiment or model size."
        )


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


class RNGStateCheckpoint(Callback):
    """Keeps the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and restores
    them on resume, so masking and dropout after a resume draw what the uninterrupted run drew."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        checkpoint["rng_states"] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        states = checkpoint.get("rng_states")
        if not states:
            return
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        if states.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def pretrain(cfg: DictConfig, out_dir: Path, loggers: list):
    from lightning.pytorch.callbacks import ModelCheckpoint

    datamodule, module = build_pretraining(cfg)
    timer = StepTimer()
    module.step_timer = timer
    callbacks = [
        timer,
        RNGStateCheckpoint(),
        ModelCheckpoint(
            dirpath=out_dir / "checkpoints",
            filename="step{step}",
            save_last=cfg.checkpoint.save_last,
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            save_top_k=-1 if cfg.checkpoint.every_n_train_steps else 0,
            auto_insert_metric_name=False,
        ),
        *build_callbacks(cfg, "pretrain", loggers),
    ]
    from pretrain.throughput import Throughput

    # the throughput callback's whole-run rates join the step cost in results.json
    module.throughput = next((cb for cb in callbacks if isinstance(cb, Throughput)), None)
    trainer = build_trainer(cfg, loggers, callbacks)
    ckpt_path = _resolve_ckpt(cfg, out_dir)
    if ckpt_path is not None:
        if hasattr(
            module, "prepare_for_finetune"
        ):  # size the vocabulary to the tokenizer before comparing shapes
            datamodule.prepare_data()
            datamodule.setup("fit")
            module.prepare_for_finetune(datamodule)
        check_matches(load_checkpoint(ckpt_path), module, ckpt_path, cfg.experiment)
    # our checkpoints hold configs and balancer/RNG states beside tensors: load them in full (only files
    # the user points at, after check_matches has read them as a checkpoint of this experiment)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    if trainer.limit_val_batches and not trainer.interrupted:
        # the final weights, validated once: val/* at the last step and the module's upstream evaluation
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if trainer.global_rank == 0 and hasattr(module, "export_pretrained"):
        module.export_pretrained(out_dir / "pretrained")
    return module, trainer


#: ``pretrained_ckpt=random``: adapt a freshly initialised model (the random-init control)
RANDOM_INIT = "random"


def restore_pretrained(cfg: DictConfig, path: str):
    """Build the experiment's module and load a pre-training checkpoint into it (stage=finetune); with
    ``path == "random"`` keep the fresh initialisation drawn from ``seed`` (the random-init control)."""
    datamodule, module = build_pretraining(cfg)
    if hasattr(module, "prepare_for_finetune"):  # before loading: it sizes the vocabulary to the tokenizer
        datamodule.prepare_data()
        datamodule.setup("fit")
        module.prepare_for_finetune(datamodule)
    if path != RANDOM_INIT:
        ckpt = load_checkpoint(path)
        check_matches(ckpt, module, path, cfg.experiment)
        module.load_state_dict(ckpt["state_dict"], strict=True)
        agg = getattr(module, "aggregator", None)
        if agg is not None and "LossAggregation" in ckpt.get("callbacks", {}):
            agg.load_state_dict(ckpt["callbacks"]["LossAggregation"])
    return module


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


def restore_worker_start_method() -> None:
    """Give DataLoader workers the platform's own start method again inside a joblib (loky) worker.

    ``hydra/launcher=joblib`` runs each job in a loky process, which makes loky's start method the default;
    DataLoader worker processes cannot be started with it (``'Process' object has no attribute 'env'``).
    Elsewhere this does nothing."""
    if multiprocessing.get_start_method(allow_none=True) in ("loky", "loky_init_main"):
        multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)


def run(cfg: DictConfig) -> dict | None:
    """Run the configured stage; returns the results dict (stage all/finetune/pretrain) or None."""
    import lightning as L

    from pretrain.console import format_seconds, quiet_console
    from pretrain.loggers import log_results

    quiet_console()
    started = time.monotonic()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    if results_path.exists():
        results_path.unlink()  # never leave an earlier run's results beside a new run's failure
    if cfg.stage not in ("pretrain", "finetune", "all", "pseudo_label", "dashboard"):
        raise ConfigError(
            f"stage must be pretrain, finetune, all, pseudo_label or dashboard, got {cfg.stage!r}."
        )
    if cfg.get("pretrained_ckpt") == RANDOM_INIT and cfg.stage != "finetune":
        raise ConfigError(
            f"pretrained_ckpt=random (the random-init control, balancer=random_init) needs stage=finetune, got stage={cfg.stage}."
        )
    if cfg.stage == "pseudo_label":  # writes depth/semantic maps for an image folder (data/pseudo_labels.py)
        _instantiate(cfg.get("pseudo_label"), "pseudo_label").run()
        return None
    if cfg.stage == "dashboard":  # saves the wandb workspace of the project (pretrain/dashboard.py)
        from pretrain.dashboard import save

        log.info("wandb workspace saved: %s", save(cfg))
        return None
    restore_worker_start_method()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision("high")
    loggers = build_loggers(cfg)
    params = OmegaConf.to_container(cfg, resolve=True)
    params["choices"] = {**_choices(), "balancer": _run_balancer(cfg)}  # what the dashboard groups runs by
    for lg in loggers:
        try:
            lg.log_hyperparams(params)
        except Exception:  # noqa: BLE001 - hyper-parameter logging is best effort
            pass
    timings: dict[str, float] = {}  # wall time per stage, printed at the end and logged

    def finish(results: dict, step: int) -> dict:
        timings["total"] = time.monotonic() - started
        write_json_atomic(results_path, results)
        log_results(loggers, results, step, timings)
        if results["downstream"] and cfg.get("print_table", True):
            print_table(results)
        log.info("wall time: %s", ", ".join(f"{k} {format_seconds(v)}" for k, v in timings.items()))
        return results

    try:
        # build and validate the downstream suite first: a missing file, a malformed row or an unreachable hub
        # stops the run within seconds, before any pre-training (finetune.protocol.DownstreamSuite)
        suite = _instantiate(cfg.downstream, "downstream") if cfg.stage != "pretrain" else None
        if suite is not None:
            suite.validate()
        t0 = time.monotonic()
        if cfg.stage == "finetune":
            if not cfg.get("pretrained_ckpt"):
                raise ConfigError(
                    "stage=finetune needs pretrained_ckpt=<path to a pre-training checkpoint> "
                    "(or pretrained_ckpt=random for the random-init control)."
                )
            module = restore_pretrained(cfg, cfg.pretrained_ckpt)
            timings["restore"] = time.monotonic() - t0
            step = 0
        else:
            module, trainer = pretrain(cfg, out_dir, loggers)
            timings["pretrain"] = time.monotonic() - t0
            if trainer.global_rank != 0:
                return None
            step = trainer.global_step
            if cfg.stage == "pretrain":
                return finish(_results(cfg, module, {}, None), step)

        def make_trainer(max_epochs: int | None = None, max_steps: int | None = None, name: str = "finetune"):
            return build_trainer(
                cfg,
                loggers,
                build_callbacks(cfg, "downstream", loggers, label=name),
                max_epochs=max_epochs if max_epochs is not None else -1,
                max_steps=max_steps if max_steps is not None else -1,
                enable_checkpointing=False,
                strategy="auto",
                devices=1,
                num_nodes=1,
                # adaptation never inherits pre-training limits: every training batch, every dev row
                val_check_interval=None,
                check_val_every_n_epoch=1,
                limit_train_batches=None,
                limit_val_batches=None,
                limit_test_batches=None,
                num_sanity_val_steps=0,
                accumulate_grad_batches=1,
            )

        t0 = time.monotonic()
        downstream = suite.run(module, make_trainer, out_dir)
        timings["downstream"] = time.monotonic() - t0
        for name, r in downstream.items():
            bad = {k: v for k, v in r["metrics"].items() if not math.isfinite(float(v))}
            if bad:
                raise DataError(
                    f"downstream task '{name}' produced non-finite metrics {bad}; no results written."
                )
        return finish(_results(cfg, module, downstream, suite), step)
    finally:
        _finish_loggers(loggers)


def _results(cfg: DictConfig, module, downstream: dict, suite) -> dict:
    """The results.json payload; also writes pretrain_history.csv beside it."""
    from pretrain.aggregation import weight_summary

    agg = getattr(module, "aggregator", None)
    results = {
        "experiment": cfg.experiment,
        "balancer": _run_balancer(cfg),
        "seed": int(cfg.seed),
        "stage": str(cfg.stage),
        "overrides": _task_overrides(),
        "upstream": agg.final_losses() if agg is not None else {},
        "weights": weight_summary(agg.history, agg.task_names) if agg is not None else {},
        "downstream": downstream,
        "summary": summarise(downstream),
    }
    upstream_eval = getattr(module, "upstream_eval", None)
    if upstream_eval:
        results["upstream_eval"] = upstream_eval
    timer = getattr(module, "step_timer", None)
    if timer is not None and timer.times:
        results["cost"] = timer.summary()
        throughput = getattr(module, "throughput", None)
        if throughput is not None:
            results["cost"].update(throughput.summary())
    extra = getattr(suite, "extra_results", None)
    if extra:
        results.update(extra)
    if agg is not None and agg.history:
        _write_history(Path(cfg.paths.output_dir) / "pretrain_history.csv", agg)
    return results


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        where = ("hydra.", "paths.output_dir")  # where a run writes is not what it ran
        return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(where)]
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return []


def _run_balancer(cfg: DictConfig) -> str:
    """The balancer a run reports: ``random_init`` for the random-init control, else the balancer choice."""
    if cfg.stage == "finetune" and cfg.get("pretrained_ckpt") == RANDOM_INIT:
        return "random_init"
    return _balancer_name(cfg)


def _choices() -> dict[str, str]:
    """The config group choices of this run (experiment, balancer, model, ...), from Hydra's runtime."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra")}
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return {}


def _balancer_name(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices["balancer"]
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return str(cfg.balancer.get("_target_", "?")).rsplit(".", 1)[-1].lower()


def _write_history(path: Path, agg) -> None:
    names = agg.task_names + agg.extra_tasks
    lines = [
        "step," + ",".join(f"loss/{n}" for n in names) + "," + ",".join(f"weight/{n}" for n in agg.task_names)
    ]
    for h in agg.history:
        row = [str(h["step"])]
        row += ["" if h["loss"].get(n) is None else f"{h['loss'][n]:.6g}" for n in names]
        row += [f"{h['weight'][n]:.6g}" for n in agg.task_names]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")


def _finish_loggers(loggers: list) -> None:
    for lg in loggers:
        try:
            lg.finalize("success")
        except Exception:  # noqa: BLE001
            pass
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        try:
            import wandb

            wandb.finish()
        except Exception:  # noqa: BLE001
            pass
