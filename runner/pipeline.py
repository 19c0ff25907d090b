"""The run behind ``python run.py``: pre-train -> export -> fine-tune every downstream task -> results.json.

Everything is built from the composed Hydra config with ``hydra.utils.instantiate``; see ``conf/``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.protocol import DownstreamSuite
from runner.checkpoints import (
    RNGStateCheckpoint,
    _resolve_ckpt,
    check_matches,
    load_checkpoint,
    restore_pretrained,
)
from runner.factories import (
    RANDOM_INIT,
    _choices,
    _finish_loggers,
    _instantiate,
    _run_balancer,
    build_callbacks,
    build_loggers,
    build_pretraining,
    build_trainer,
)
from runner.results import StepTimer, _results, print_table, write_json_atomic
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def pretrain(cfg: DictConfig, out_dir: Path, loggers: list):
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
        *build_callbacks(cfg, "pretrain", loggers),
    ]
    from runner.throughput import Throughput

    throughput = next((cb for cb in callbacks if isinstance(cb, Throughput)), None)
    trainer = build_trainer(cfg, loggers, callbacks)
    ckpt_path = _resolve_ckpt(cfg, out_dir)
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


def run(cfg: DictConfig) -> dict | None:
    """Run the configured stage; returns the results dict (stage all/finetune/pretrain) or None."""
    import lightning as L

    from runner.console import format_seconds, quiet_console
    from runner.loggers import log_results

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
    if cfg.stage == "dashboard":  # saves the wandb workspace of the project (runner/dashboard.py)
        from runner.dashboard import save

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
            if not isinstance(suite, DownstreamSuite):
                raise ConfigError(
                    f"downstream._target_={cfg.downstream.get('_target_')} builds a {type(suite).__name__}, not a "
                    "finetune.protocol.DownstreamSuite (the contract the runner relies on)."
                )
            suite.validate()
        t0 = time.monotonic()
        if cfg.stage == "finetune":
            if not cfg.get("pretrained_ckpt"):
                raise ConfigError(
                    "stage=finetune needs pretrained_ckpt=<path to a pre-training checkpoint> "
                    "(or pretrained_ckpt=random for the random-init control)."
                )
            module, cost = restore_pretrained(cfg, cfg.pretrained_ckpt), {}
            timings["restore"] = time.monotonic() - t0
            step = 0
        else:
            module, trainer, cost = pretrain(cfg, out_dir, loggers)
            timings["pretrain"] = time.monotonic() - t0
            if trainer.global_rank != 0:
                return None
            step = trainer.global_step
            if cfg.stage == "pretrain":
                return finish(_results(cfg, module, {}, None, cost), step)

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
        return finish(_results(cfg, module, downstream, suite, cost), step)
    finally:
        _finish_loggers(loggers)
