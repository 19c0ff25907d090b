"""The training stages of ``python run.py``: ``stage=all`` (pre-train -> export -> fine-tune every downstream task ->
results.json), ``stage=pretrain`` and ``stage=finetune`` (from a pre-training checkpoint, or the random-init
control). runner/pipeline.py picks the stage; this module (torch and Lightning) is imported only for these three.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.protocol import DownstreamSuite
from runner.checkpoints import (
    RNGStateCheckpoint,
    check_matches,
    load_checkpoint,
    resolve_ckpt,
    restore_pretrained,
)
from runner.factories import (
    build_callbacks,
    build_loggers,
    build_pretraining,
    build_trainer,
    config_choices,
    finish_loggers,
    instantiate_node,
    run_balancer,
    task_overrides,
)
from runner.results import StepTimer, build_results, print_table, write_json_atomic
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def shows_progress_bar(cfg: DictConfig) -> bool:
    """``trainer.enable_progress_bar``: whether the progress-bar callback is kept."""
    return bool(cfg.trainer.get("enable_progress_bar", True))


def pretrain(cfg: DictConfig, out_dir: Path, loggers: list):
    """Pre-train (resuming from ``ckpt_path``), validate the final weights once and export them: ``(module,
    trainer, cost)``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    datamodule, module = build_pretraining(cfg)
    timer = StepTimer()
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
        *build_callbacks(cfg.get("callbacks"), "pretrain", loggers, shows_progress_bar(cfg)),
    ]
    from runner.throughput import Throughput

    throughput = next((cb for cb in callbacks if isinstance(cb, Throughput)), None)
    trainer = build_trainer(cfg.trainer, loggers, callbacks)
    ckpt_path = resolve_ckpt(cfg.get("ckpt_path"), out_dir)
    if ckpt_path is not None:
        if module.prepares_from_data:  # e.g. the vocabulary sized to the tokenizer, before comparing shapes
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
    if trainer.global_rank == 0:
        module.export_pretrained(out_dir / "pretrained")
    # the step cost and the throughput callback's whole-run rates, for results.json
    cost = (
        {**timer.summary(), **(throughput.summary() if throughput is not None else {})} if timer.times else {}
    )
    return module, trainer, cost


def restore_worker_start_method() -> None:
    """Give DataLoader workers the platform's own start method again inside a joblib (loky) worker.

    ``hydra/launcher=joblib`` runs each job in a loky process, which makes loky's start method the default;
    DataLoader worker processes cannot be started with it (``'Process' object has no attribute 'env'``).
    Elsewhere this does nothing."""
    if multiprocessing.get_start_method(allow_none=True) in ("loky", "loky_init_main"):
        multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)


@dataclass
class TrainingRun:
    """What the training stages share: where the run writes, who it is (the head of results.json), its loggers
    and its wall time per step of the stage."""

    out_dir: Path
    head: dict
    loggers: list
    print_table: bool = True
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - t0

    def finish(self, results: dict, step: int) -> dict:
        """Write results.json, log its numbers at ``step``, print the upstream and downstream tables, where
        results.json is, the command of the random-init control, and the wall times."""
        from runner.console import format_seconds, print_next_steps, print_upstream
        from runner.loggers import log_results

        self.timings["total"] = time.monotonic() - self.started
        path = self.out_dir / "results.json"
        write_json_atomic(path, results)
        log_results(self.loggers, results, step, self.timings)
        if self.print_table:
            print_upstream(results)
            if results["downstream"]:
                print_table(results)
            print_next_steps(results, path)
        log.info("wall time: %s", ", ".join(f"{k} {format_seconds(v)}" for k, v in self.timings.items()))
        return results


@contextmanager
def training_run(cfg: DictConfig, out_dir: Path) -> Iterator[TrainingRun]:
    """Seed and set up the process, read the run's identity once, start its loggers (finished on the way out,
    whatever happens) and log the config to them."""
    import lightning as L

    from runner.console import quiet_console
    from runner.loggers import run_identity

    started = time.monotonic()
    quiet_console()
    restore_worker_start_method()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision("high")
    balancer, overrides = run_balancer(cfg), task_overrides()
    head = {  # the run's identity, first in results.json
        "experiment": cfg.experiment,
        "balancer": balancer,
        "seed": int(cfg.seed),
        "stage": str(cfg.stage),
        "overrides": overrides,
    }
    resume = cfg.get("ckpt_path") if cfg.stage in ("all", "pretrain") else None
    loggers = build_loggers(cfg.get("logger"), out_dir, run_identity(cfg, balancer, overrides), resume)
    params = OmegaConf.to_container(cfg, resolve=True)
    params["choices"] = {**config_choices(), "balancer": balancer}  # what the dashboard groups runs by
    for lg in loggers:
        try:
            lg.log_hyperparams(params)
        except Exception:  # noqa: BLE001 - hyper-parameter logging is best effort
            pass
    try:
        yield TrainingRun(out_dir, head, loggers, bool(cfg.get("print_table", True)), started)
    finally:
        finish_loggers(loggers)


def downstream_suite(cfg: DictConfig) -> DownstreamSuite:
    """The downstream suite, built and validated first: a missing file, a malformed row or an unreachable hub
    stops the run within seconds, before any pre-training (finetune.protocol.DownstreamSuite)."""
    suite = instantiate_node(cfg.downstream, "downstream")
    if not isinstance(suite, DownstreamSuite):
        raise ConfigError(
            f"downstream._target_={cfg.downstream.get('_target_')} builds a {type(suite).__name__}, not a "
            "finetune.protocol.DownstreamSuite (the contract the runner relies on)."
        )
    suite.validate()
    return suite


def adapt(cfg: DictConfig, run: TrainingRun, suite: DownstreamSuite, module, cost: dict) -> dict:
    """Fine-tune (or probe) every downstream task from ``module``; the results.json payload."""
    trainer_node, callbacks, progress_bar = cfg.trainer, cfg.get("callbacks"), shows_progress_bar(cfg)

    def make_trainer(max_epochs: int | None = None, max_steps: int | None = None, name: str = "finetune"):
        return build_trainer(
            trainer_node,
            run.loggers,
            build_callbacks(callbacks, "downstream", run.loggers, progress_bar, label=name),
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

    with run.timed("downstream"):
        downstream = suite.run(module, make_trainer, run.out_dir)
    for name, r in downstream.items():
        bad = {k: v for k, v in r["metrics"].items() if not math.isfinite(float(v))}
        if bad:
            raise DataError(
                f"downstream task '{name}' produced non-finite metrics {bad}; no results written."
            )
    return build_results(run.head, module, downstream, suite, cost)


def pretrain_and_adapt(cfg: DictConfig, out_dir: Path) -> dict | None:
    """``stage=all``: pre-train, then fine-tune every downstream task from the result."""
    with training_run(cfg, out_dir) as run:
        suite = downstream_suite(cfg)
        with run.timed("pretrain"):
            module, trainer, cost = pretrain(cfg, out_dir, run.loggers)
        if trainer.global_rank != 0:
            return None
        return run.finish(adapt(cfg, run, suite, module, cost), trainer.global_step)


def pretrain_only(cfg: DictConfig, out_dir: Path) -> dict | None:
    """``stage=pretrain``: pre-train and export; results.json without downstream results."""
    with training_run(cfg, out_dir) as run:
        with run.timed("pretrain"):
            module, trainer, cost = pretrain(cfg, out_dir, run.loggers)
        if trainer.global_rank != 0:
            return None
        return run.finish(build_results(run.head, module, {}, None, cost), trainer.global_step)


def adapt_checkpoint(cfg: DictConfig, out_dir: Path) -> dict:
    """``stage=finetune``: fine-tune every downstream task from ``pretrained_ckpt`` (``random``: the random-init
    control)."""
    with training_run(cfg, out_dir) as run:
        suite = downstream_suite(cfg)
        if not cfg.get("pretrained_ckpt"):
            raise ConfigError(
                "stage=finetune needs pretrained_ckpt=<path to a pre-training checkpoint> "
                "(or pretrained_ckpt=random for the random-init control)."
            )
        with run.timed("restore"):
            module = restore_pretrained(cfg, cfg.pretrained_ckpt)
        return run.finish(adapt(cfg, run, suite, module, {}), 0)
