"""What the runner asks of every pre-training LightningModule (``runner/pipeline.py``), and what they share.

:class:`PretrainingModule` is the contract, checked with ``isinstance`` where the runner builds a module: the
module owns the shared :class:`~pretrain.aggregation.LossAggregation` (``aggregator``), exports its encoder for
others (``export_pretrained``), prepares itself from the data it was pre-trained on before a checkpoint is loaded
for fine-tuning (``prepare_for_finetune``: e.g. the vocabulary sized to the tokenizer), says what a batch holds
for the throughput callback (``throughput_units``) and may leave an upstream evaluation for results.json
(``upstream_eval``); ``prepares_from_data`` says whether ``prepare_for_finetune`` reads the data. The step timer
and the throughput callback stay with the runner, which passes their numbers to results.json itself.

What every experiment repeated lives here: the aggregator as the module's callback (``configure_callbacks``) and
the optimisation (``configure_optimizers``): the configured optimizer (a ``_partial_`` config of
conf/module/optimizer/, e.g. ``partial(torch.optim.AdamW, lr=1e-3)``) over the model's parameter groups (weight
decay on matrices only, none on vectors nor on the parameters whose name contains a string of ``no_decay``) and
the balancer's, fused where the parameters are on a GPU and the optimizer has a fused kernel, stepped by the
configured schedule (conf/module/scheduler/, or none). A subclass sets ``self.model`` and ``self.aggregator``
and keeps its losses, its validation and its export.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pretrain.aggregation import LossAggregation
from utils.errors import ConfigError
from utils.optim import decay_groups, estimated_steps


def default_units(batch: Any) -> dict[str, int]:
    """``{"samples": n}`` with n the leading size of the batch's first tensor (the default
    :meth:`PretrainingModule.throughput_units`)."""
    tensors = (
        batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    )
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            return {"samples": int(t.shape[0])}
    return {"samples": 1}


#: settings of the optimizer and schedule partials checked where the module is built: name -> (check, bound)
_BOUNDS = {"lr": (lambda v: v > 0, "positive"), "warmup_steps": (lambda v: v >= 0, ">= 0")}


def _checked_factory(factory: Any, key: str, optional: bool) -> Callable[..., Any] | None:
    """``factory`` if it is callable (or None where ``optional``), else a ConfigError naming ``module.<key>``
    and the folder of its choices, conf/module/<key>/."""
    folder = f"conf/module/{key}"
    if factory is None and optional:
        return None
    if callable(factory):
        keywords = getattr(factory, "keywords", None) or {}
        for name, (valid, bound) in _BOUNDS.items():
            value = keywords.get(name)
            if isinstance(value, (int, float)) and not valid(value):
                raise ConfigError(f"module.{key}.{name}={value} must be {bound}.")
        return factory
    if isinstance(factory, str):
        raise ConfigError(
            f"module.{key}={factory!r} is not a config; choose the file {folder}/{factory}.yaml with "
            f"module/{key}={factory} (a slash, not a dot)."
        )
    keys = sorted(factory) if hasattr(factory, "keys") else repr(factory)
    # module/scheduler=none under an experiment that sets module.scheduler.warmup_steps leaves that key alone
    off = (
        "; for no schedule under an experiment that sets some of it, module.scheduler=null"
        if optional
        else ""
    )
    raise ConfigError(
        f"module.{key} has no _target_ (it holds {keys}): choose a file of {folder}/ with "
        f"module/{key}=<file>{off}."
    )


class PretrainingModule(L.LightningModule):
    """Base of the experiments' pre-training modules; subclasses set ``self.model`` and ``self.aggregator`` in
    ``__init__``.

    Args:
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``): called with the parameter
            groups (and ``fused=True`` on a GPU where it takes ``fused`` and neither ``fused`` nor ``foreach``
            is set).
        scheduler: ``(optimizer, total_steps=, constant_groups=) -> LRScheduler`` stepped every optimizer step,
            e.g. a partial of :func:`utils.optim.warmup_decay_schedule`; ``total_steps`` is the trainer's step
            count (0 without a limit), ``constant_groups`` the balancer groups with their own learning rate,
            which keep it. None: no schedule.
    """

    aggregator: LossAggregation
    #: substrings of parameter names that get no weight decay (vectors and scalars never do)
    no_decay: tuple[str, ...] = ()
    #: the module's evaluation of its upstream tasks on held-back data (results.json ``upstream_eval``), or None
    upstream_eval: dict[str, Any] | None = None
    #: whether ``prepare_for_finetune`` needs the prepared datamodule (the runner sets the data up only then)
    prepares_from_data: bool = False
    #: the balancer inputs (:class:`~pretrain.balancers.StepInputs` fields) ``training_step`` passes to the
    #: aggregator beyond the losses and counts it always gives; a balancer that requires another fails when the module is built
    provides: frozenset[str] = frozenset()

    def __init__(self, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.make_optimizer = _checked_factory(optimizer, "optimizer", optional=False)
        self.make_scheduler = _checked_factory(scheduler, "scheduler", optional=True)

    def configure_callbacks(self):
        # the loss aggregation: reduces, balances, logs and checkpoints the task losses
        return [self.aggregator]

    def prepare_for_finetune(self, datamodule) -> None:
        """Before a checkpoint is loaded into a fresh module (stage=finetune, resume): take from the prepared
        ``datamodule`` what the module's shapes depend on. Nothing by default."""

    def export_pretrained(self, out_dir: Path) -> None:
        """Write the pre-trained encoder (and what loading it needs) into ``out_dir``."""
        raise NotImplementedError(f"{type(self).__name__} does not export its encoder")

    def throughput_units(self, batch: Any) -> dict[str, int]:
        """What a training batch holds, for the throughput callback: ``{"samples": n, "tokens": m, ...}``; by
        default the leading size of the batch's first tensor counts as samples."""
        return default_units(batch)

    # -- optimisation ------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The model's non-empty parameter groups: weight decay (the optimizer's) on matrices, 0 on vectors and
        on the names containing a string of ``no_decay``."""
        groups = decay_groups(self.model.named_parameters(), None, no_decay=self.no_decay)
        return [g for g in groups if g["params"]]

    def _fused(self) -> dict[str, bool]:
        """``{"fused": True}`` where the parameters are on a GPU and the optimizer has a fused kernel that the
        config does not choose for it (``fused`` or ``foreach`` set); else nothing (torch's default)."""
        keywords = getattr(self.make_optimizer, "keywords", None) or {}
        if self.device.type != "cuda" or "fused" in keywords or "foreach" in keywords:
            return {}
        try:
            takes = "fused" in inspect.signature(self.make_optimizer).parameters
        except (TypeError, ValueError):  # a callable without a signature
            return {}
        return {"fused": True} if takes else {}

    def configure_optimizers(self):
        model = self.parameter_groups()
        balancer = self.aggregator.balancer_param_groups()
        # balancer groups with their own lr keep it (read before the optimizer fills in every group's lr)
        constant = [len(model) + i for i, g in enumerate(balancer) if "lr" in g]
        optimizer = self.make_optimizer(model + balancer, **self._fused())
        if self.make_scheduler is None:
            return optimizer
        scheduler = self.make_scheduler(
            optimizer, total_steps=estimated_steps(self), constant_groups=constant
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
