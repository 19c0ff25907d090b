"""The one learning-rate schedule and weight-decay split of every experiment (pre-training and adaptation).

* :func:`decay_groups`: two AdamW parameter groups, weight decay on matrices, none on vectors (biases, norms)
  and on the parameters whose name contains one of ``no_decay`` (positional / global tokens, LayerNorms).
* :func:`warmup_decay_schedule`: per optimizer step, linear warm-up ``(step + 1) / warmup`` to the base
  learning rate, then linear or cosine decay to ``min_lr_ratio`` times it at ``total_steps``:

      linear: max(r, 1 - (1 - r) * (step - warmup) / (total - warmup))
      cosine: r + (1 - r) * (1 + cos(pi * min(1, (step - warmup) / (total - warmup)))) / 2

  with a constant factor 1 after the warm-up when ``total_steps <= warmup`` (no known length: the trainer
  has no step limit, or there is no trainer). Groups listed in ``constant_groups`` keep their learning rate
  for the whole run. **The balancers' rule** (both pre-training experiments): a balancer parameter group with
  its own learning rate (``balancer.lr`` set, GradNorm's 0.025 by default) is constant, its value is the
  balancer's; one without (``balancer.lr: null``, "the optimizer's") follows the model's schedule.

Not transformers' ``get_wsd_schedule`` (warm-up, then linear/cosine decay to ``min_lr_ratio``): its warm-up
starts at ``min_lr_ratio`` instead of ``1 / warmup``, which would change every existing run's learning rates.

The callers hand the optimizer over: ``PretrainingModule.configure_optimizers`` (pretrain/base.py) builds the
configured optimizer over these groups and the schedule from a partial such as
``partial(warmup_decay_schedule, warmup_steps=50, min_lr_ratio=0.1, decay="linear")`` (conf/module/scheduler/),
finetune/ its AdamW; a learning-rate scheduler of Lightning steps it every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from utils.trainer import trainer_of

DECAYS = ("linear", "cosine")


def decay_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float | None,
    no_decay: Iterable[str] = (),
    **group: Any,
) -> list[dict[str, Any]]:
    """``[decay, no_decay]`` parameter groups of the trainable parameters in ``named_params``: weight decay
    ``weight_decay`` on those with two or more dimensions (None: the optimizer's own ``weight_decay``), 0 on
    vectors and scalars and on every parameter whose name contains a string of ``no_decay``; ``group`` (e.g.
    ``lr``) goes into both groups. Either group may be empty."""
    markers = tuple(no_decay)
    decay, other = [], []
    for name, p in named_params:
        if p.requires_grad:
            (other if p.ndim < 2 or any(m in name for m in markers) else decay).append(p)
    own = {} if weight_decay is None else {"weight_decay": float(weight_decay)}
    return [{"params": decay, **own, **group}, {"params": other, "weight_decay": 0.0, **group}]


def estimated_steps(module: Any) -> int:
    """The optimizer steps the module's trainer will take (``estimated_stepping_batches``), 0 without a
    trainer or without a limit."""
    trainer = trainer_of(module)
    if trainer is None:
        return 0
    total = trainer.estimated_stepping_batches
    return int(total) if total and total != float("inf") else 0


def warmup_decay_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    decay: str = "linear",
    constant_groups: Iterable[int] = (),
    clip_warmup: bool = False,
) -> LambdaLR:
    """A ``LambdaLR`` (step it once per optimizer step) multiplying each group's learning rate by the factor of
    the module docstring: linear warm-up over ``warmup_steps`` steps, then ``decay`` (``linear`` | ``cosine``)
    to ``min_lr_ratio`` at ``total_steps`` (and held there); the groups whose indices are in
    ``constant_groups`` keep a factor of 1. ``clip_warmup``: the warm-up lasts ``min(warmup_steps,
    total_steps)`` steps (a shorter run still reaches the peak; none when the length is unknown)."""
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} is not a schedule; choose among {', '.join(DECAYS)}.")
    total, floor = int(total_steps), float(min_lr_ratio)
    warmup = max(0, min(int(warmup_steps), total) if clip_warmup else int(warmup_steps))
    span = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        if decay == "linear":
            return max(floor, 1.0 - (1.0 - floor) * (step - warmup) / span)
        progress = min((step - warmup) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    constant = set(constant_groups)
    lambdas = [(lambda _step: 1.0) if i in constant else factor for i in range(len(optimizer.param_groups))]
    return LambdaLR(optimizer, lambdas)
