"""What a run is built from: the configured loggers, callbacks, trainer and pre-training (datamodule, balancer,
LightningModule), each instantiated from its node of the composed Hydra config; the run's identity (balancer
name, config choices, task overrides) read from Hydra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from utils.errors import ConfigError

log = logging.getLogger(__name__)


#: ``pretrained_ckpt=random``: adapt a freshly initialised model (the random-init control)
RANDOM_INIT = "random"


def instantiate_node(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node)``; an unset node or a user error inside it ends in one sentence naming
    ``key``."""
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


def _resume_dirs(ckpt_path: str, out_dir: Path) -> list[Path]:
    """Run directories whose wandb run a resumed pre-training continues: the checkpoint's (``<run>/checkpoints/
    x.ckpt``), then this one."""
    dirs = [] if ckpt_path == "last" else [Path(ckpt_path).resolve().parent.parent]
    return [*dirs, out_dir]


def build_loggers(nodes: Any, out_dir: Path, identity: dict[str, Any], resume: str | None = None) -> list:
    """The loggers of ``conf/logger`` (``nodes``: name -> node) writing under ``out_dir``; wandb gets the run's
    ``identity`` (name, group, job_type, tags: :func:`runner.loggers.run_identity`) and run id (the earlier run's
    id when pre-training resumes from the checkpoint ``resume``), and the CSV logger appends to metrics.csv on a
    resume."""
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from runner.loggers import CSVLogger, new_run_id, read_run_id, store_run_id

    resuming = resume is not None
    loggers = []
    for name, node in (nodes or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            cls = get_class(node._target_)
            extra: dict[str, Any] = {}
            if issubclass(cls, LightningWandbLogger):
                extra = {k: v for k, v in identity.items() if node.get(k) is None}
                run_id = node.get("id") or (read_run_id(*_resume_dirs(resume, out_dir)) if resuming else None)
                extra["id"] = run_id or new_run_id()
                store_run_id(out_dir, extra["id"])  # a later ckpt_path=... resume continues this wandb run
            elif issubclass(cls, CSVLogger):
                extra["append"] = resuming
            loggers.append(instantiate(node, **extra))
        except Exception as exc:  # a logger must never kill a run
            log.warning("logger %s could not start (%s); continuing without it", name, exc)
    return loggers


def build_callbacks(
    nodes: Any, stage: str, loggers: list, progress_bar: bool = True, label: str | None = None
) -> list:
    """The callbacks of ``conf/callbacks`` (``nodes``) for the pre-training Trainer (``stage="pretrain"``) or a
    downstream fit (``stage="downstream"``, ``label`` names the task in its progress line). The learning-rate
    monitor needs a logger and the progress bar ``progress_bar`` (``trainer.enable_progress_bar``): without them
    they are left out."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.callbacks.progress import ProgressBar

    from runner.console import StepProgress

    callbacks = []
    for key, node in ((nodes or {}).get(stage) or {}).items():
        if node is None or "_target_" not in node:
            continue
        cb = instantiate_node(node, f"callbacks.{stage}.{key}")
        if isinstance(cb, LearningRateMonitor) and not loggers:
            continue
        if isinstance(cb, ProgressBar) and not progress_bar:
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


def build_trainer(trainer: Any, loggers: list, callbacks: list | None = None, **overrides: Any):
    """The Lightning Trainer of the ``trainer`` node (``conf/trainer``) with ``overrides`` on top."""
    from hydra.utils import instantiate

    node = OmegaConf.to_container(trainer, resolve=True)
    node.update({k: v for k, v in overrides.items() if v is not None or k in _NONE_OVERRIDES})
    if node.get("max_steps") is None:
        node["max_steps"] = -1
    return instantiate(node, logger=loggers or False, callbacks=callbacks or [])


def build_pretraining(cfg: DictConfig):
    """(datamodule, LightningModule) for the configured experiment; the datamodule's ``validate()`` has checked
    its inputs (a local corpus that does not decode, ...) before anything is trained."""
    from pretrain.base import PretrainingModule  # torch and Lightning: only for the training stages

    datamodule = instantiate_node(cfg.data, "data")
    datamodule.validate()
    model = instantiate_node(cfg.model, "model")
    factory = instantiate_node(cfg.module, "module")
    aggregation = OmegaConf.to_container(cfg.get("aggregation") or {}, resolve=True)
    balancer = instantiate_node(cfg.balancer, "balancer")  # a factory: balancer(num_tasks)
    module = factory(model=model, balancer=balancer, aggregation=aggregation)
    if not isinstance(module, PretrainingModule):
        raise ConfigError(
            f"module._target_={cfg.module.get('_target_')} builds a {type(module).__name__}, not a "
            "pretrain.base.PretrainingModule (the contract the runner relies on)."
        )
    return datamodule, module


def task_overrides() -> list[str]:
    """The command line's overrides of the run's config (not where it writes)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        where = ("hydra.", "paths.output_dir")  # where a run writes is not what it ran
        return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(where)]
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return []


def run_balancer(cfg: DictConfig) -> str:
    """The balancer a run reports: ``random_init`` for the random-init control, else the balancer choice."""
    if cfg.stage == "finetune" and cfg.get("pretrained_ckpt") == RANDOM_INIT:
        return "random_init"
    return _balancer_name(cfg)


def config_choices() -> dict[str, str]:
    """The config group choices of this run (experiment, balancer, model, ...), from Hydra's runtime; not Hydra's
    own, and not the smoke values ``debug=smoke`` merges into data and downstream (``debug@data``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {
            k: str(v)
            for k, v in choices.items()
            if v is not None and not k.startswith("hydra") and "@" not in k
        }
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return {}


def _balancer_name(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices["balancer"]
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return str(cfg.balancer.get("_target_", "?")).rsplit(".", 1)[-1].lower()


def finish_loggers(loggers: list) -> None:
    """Close every logger (and the process's wandb run, which would otherwise leak into a sweep's next job)."""
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
