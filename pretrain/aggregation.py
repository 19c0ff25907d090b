"""The one loss-aggregation callback every pre-training LightningModule uses.

A Lightning ``Callback`` cannot replace the loss ``training_step`` returns, so the module calls it::

    class MyPretraining(LightningModule):
        def __init__(self, model, balancer, aggregation):
            self.aggregator = LossAggregation.build(balancer, task_names=["rgb", "depth"], **aggregation)

        def configure_callbacks(self):
            return [self.aggregator]

        def training_step(self, batch, i):
            losses = {"rgb": (sum_rgb, n_rgb), "depth": (sum_depth, n_depth)}   # one forward pass
            return self.aggregator(self, losses, shared_params=[...], features=h)

The callback

* reduces the per-task losses across data-parallel ranks as sums and counts, so a task's loss is its
  global mean and every rank computes identical weights;
* hands them to the balancer (``pretrain.balancers``) and returns the scalar to back-propagate;
* logs every task's loss and weight, the worst task's loss and the weights' entropy each step;
* keeps in every checkpoint the balancer's state, the last ``window`` steps' losses and weights (the final
  losses and weights of results.json) and the running sum of the weights' entropy: nothing that grows with the
  step count (the per-step history is the loggers': ``csv/metrics.csv`` feeds the sweep's figures);
* handles tasks absent from a batch (count 0: no gradient, weight from the last known loss);
* stops with an error naming the task and step when a loss is NaN/inf (or skips the step, by config);
* gives a balancer that needs per-task gradients w.r.t. the shared representation (``features`` mode) all
  T of them from one backward through the task heads, when the module says how the heads read it:
  :class:`~pretrain.feature_gradients.FeatureRows` (each row of the representation read by one task:
  PoS-BERT) or :class:`~pretrain.feature_gradients.FeatureCopies` (each head reads its own detached copy:
  MM-MAE's decoders); ``pretrain/feature_gradients.py`` says how.

  Given a plain tensor as ``features``, the balancer takes the T gradients itself by a batched backward
  (one per task through the heads: exact, and what the two layouts above are tested against).

Each call takes named steps: :meth:`LossAggregation._reduce` (sums and counts across ranks),
:meth:`~LossAggregation._check_finite`, :meth:`~LossAggregation._balance` (the balancer, given the feature
gradients), :meth:`~LossAggregation._apply` (the scalar to back-propagate) and
:meth:`~LossAggregation._record` (logs, the window, the trace).

What a module's steps pass is declared by its class attribute ``provides`` (the
:class:`~pretrain.balancers.StepInputs` fields beyond :data:`ALWAYS_GIVEN`: ``shared_params``, ``features``,
``feature_grads`` where ``features`` is a FeatureRows or FeatureCopies); building the module (which hands it to
:meth:`LossAggregation.build`) or else the callback's setup fails, naming what to change, when the balancer
``requires`` a field the module does not provide (:meth:`LossAggregation.check_inputs`). A module without
``provides`` is not checked: a required input it does not pass fails at the first step.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from pretrain.balancers import BalanceOutput, Balancer, NormalisedBalancer
from pretrain.balancers.base import step_input_names
from pretrain.balancers.gradient_based import GRADIENT_MODES
from pretrain.feature_gradients import (
    FeatureCopies,
    FeatureRows,
    Reached,
    copy_gradients,
    copy_params,
    row_gradients,
    send_gradients,
)
from utils.errors import ConfigError, NonFiniteLossError
from utils.trainer import trainer_of

log = logging.getLogger(__name__)

LossValue = Tensor | tuple[Tensor, Tensor | int | float]

#: the :class:`~pretrain.balancers.StepInputs` fields the aggregation gives a balancer whatever the module passes
ALWAYS_GIVEN = frozenset({"losses", "present", "counts"})
#: the fields that come from the module's ``features`` (``feature_grads``: from FeatureRows or FeatureCopies)
_FEATURE_INPUTS = frozenset({"features", "feature_grads"})


@dataclass(frozen=True)
class ReducedLosses:
    """One step's task losses reduced across the data-parallel ranks. Index i of every vector is task
    ``names[i]``: the balanced tasks in order, then the extra tasks present in the step's loss dict."""

    names: list[str]
    sums: list[Tensor]  # this rank's loss sum of each task, in the model's graph
    local_sum: Tensor  # (N,) the sums, stacked
    local_count: Tensor  # (N,) fp32: this rank's count of each task
    count: Tensor  # (N,) fp32: the global count (all ranks)
    mean: Tensor  # (N,) fp32: the global mean loss, 0 where the task is absent (count 0)
    present: Tensor  # (N,) bool: count > 0
    scale: Tensor  # (N,) fp32: world / count (0 where absent), the factor of this rank's sum in the scalar


class LossAggregation(Callback):
    """Bridge between a pre-training LightningModule and a :class:`~pretrain.balancers.Balancer`.

    Args:
        balancer: the balancer over ``task_names`` (in that order).
        task_names: the tasks the balancer weighs.
        extra_tasks: further losses added to the scalar and logged, but not balanced (e.g. PoS-BERT's
            ``other`` group or NSP when so configured).
        extra_weights: an extra task's fixed weight in the scalar (task -> weight; 1 where not given).
        on_nonfinite: ``raise`` (default) stops with the task and step named; ``skip`` skips the
            optimizer step with a warning.
        window: how many of the last steps' reduced losses and weights are kept (and checkpointed) for
            :meth:`final_losses` and :meth:`weight_summary`; the per-step history is what the loggers get.
        trace_dir: when set, every rank appends one JSON line per step to ``<trace_dir>/rank<r>.jsonl``:
            its local loss sums and counts, the global means it used and the task weights it applied (to
            check a distributed run: every rank must show the same means and weights).
    """

    def __init__(
        self,
        balancer: Balancer,
        task_names: Sequence[str],
        extra_tasks: Sequence[str] = (),
        extra_weights: Mapping[str, float] | None = None,
        on_nonfinite: str = "raise",
        window: int = 20,
        trace_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.extra_tasks = [t for t in extra_tasks if t not in self.task_names]
        self.extra_weights = {t: float(w) for t, w in (extra_weights or {}).items()}
        stray = sorted(set(self.extra_weights) - set(self.extra_tasks))
        if stray:
            raise ConfigError(f"aggregation: extra_weights for tasks that are not extra tasks: {stray}.")
        if len(set(self.task_names)) != len(self.task_names):
            raise ConfigError(f"aggregation: task names must be unique, got {self.task_names}.")
        if balancer.num_tasks != len(self.task_names):
            raise ConfigError(
                f"aggregation: the balancer weighs {balancer.num_tasks} tasks but the experiment has "
                f"{len(self.task_names)} ({', '.join(self.task_names)})."
            )
        if on_nonfinite not in ("raise", "skip"):
            raise ConfigError(f"aggregation.on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
        if int(window) < 1:
            raise ConfigError(f"aggregation.window must be >= 1, got {window}.")
        step_input_names(balancer.requires, f"{type(balancer).__name__}.requires")
        if isinstance(balancer, NormalisedBalancer) and balancer.reference_from is not None:
            balancer.set_reference(reference_losses(balancer.reference_from, self.task_names))
        self.balancer = balancer
        self.on_nonfinite = on_nonfinite
        self.window = int(window)
        self.trace_dir = Path(trace_dir) if trace_dir else None
        self._trace_file: Path | None = None
        #: the last ``window`` steps: ``{"step", "loss": {task: mean or None}, "weight": {task: w}}``
        self.recent: deque[dict[str, Any]] = deque(maxlen=self.window)
        self._entropy_sum = 0.0  # the weights' entropy summed over every step taken (mean_entropy)
        self._entropy_steps = 0
        self._calls = 0

    def default_reference(self, values: dict[str, float], what: str) -> bool:
        """Give a ``normalize=reference`` balancer that has neither ``reference`` nor ``reference_from`` the
        experiment's default reference losses (by task name); ``what`` names them in the log. Returns whether
        they were taken."""
        b = self.balancer
        if not (isinstance(b, NormalisedBalancer) and b.normalize == "reference" and not b._has_reference):
            return False
        missing = [t for t in self.task_names if t not in values]
        if missing:
            raise ConfigError(
                f"balancer.normalize=reference: {what} has no value for task(s) {', '.join(missing)}; "
                "set balancer.reference or balancer.reference_from."
            )
        b.set_reference([values[t] for t in self.task_names], key=what)
        log.info(
            "balancer.normalize=reference uses %s: %s",
            what,
            {t: round(values[t], 3) for t in self.task_names},
        )
        return True

    @classmethod
    def build(
        cls,
        balancer: Any,
        task_names: Sequence[str],
        provides: Iterable[str] | None = None,
        module: str = "",
        **options: Any,
    ) -> LossAggregation:
        """``balancer`` is a Balancer or a callable ``num_tasks -> Balancer`` (Hydra ``_partial_``). With
        ``provides`` (the step inputs the training module ``module`` passes, its class attribute), a balancer that
        requires another fails here, when the module is built (:meth:`check_inputs`)."""
        if not isinstance(balancer, Balancer):
            balancer = balancer(num_tasks=len(task_names))
        aggregation = cls(balancer, task_names, **options)
        if provides is not None:
            aggregation.check_inputs(provides, module or "the pre-training module")
        return aggregation

    @property
    def state_key(self) -> str:
        return "LossAggregation"

    @property
    def needs_feature_gradients(self) -> bool:
        """Whether the balancer uses per-task gradients w.r.t. the shared representation (``features``
        mode) and not those of the shared parameters: a module whose task heads can read per-task copies of it
        (:class:`FeatureCopies`, which cut the task losses off the shared parameters) builds them only then."""
        requires = self.balancer.requires
        return bool(requires & _FEATURE_INPUTS) and "shared_params" not in requires

    def check_inputs(self, provides: Iterable[str], module: str) -> None:
        """Raise a ConfigError naming the balancer, the inputs it ``requires`` beyond :data:`ALWAYS_GIVEN` and
        ``provides`` (what the training module ``module``, a class name, passes) and what to change."""
        given = ALWAYS_GIVEN | step_input_names(provides, f"{module}.provides")
        missing = sorted(self.balancer.requires - given)
        if not missing:
            return
        mode = getattr(self.balancer, "mode", None)
        other = [m for m in GRADIENT_MODES if m != mode and m in given]
        fix = (
            f"set balancer.mode={other[0]}"
            if mode in GRADIENT_MODES and other
            else "choose a balancer that needs only the losses (e.g. balancer=minimax)"
        )
        raise ConfigError(
            f"balancer {type(self.balancer).__name__} needs the step input {' and '.join(missing)}, which "
            f"{module} does not pass to the loss aggregation (the step gives {', '.join(sorted(given))}); "
            f"{fix}, or use a pre-training module that passes {'them' if len(missing) > 1 else 'it'}."
        )

    # -- optimizer ---------------------------------------------------------------------------------
    def balancer_param_groups(self) -> list[dict[str, Any]]:
        """The balancer's learnable parameters as optimizer param groups (no weight decay)."""
        params = [p for p in self.balancer.parameters() if p.requires_grad]
        if not params:
            return []
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        if self.balancer.param_lr is not None:
            group["lr"] = self.balancer.param_lr
        return [group]

    # -- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        provides = getattr(pl_module, "provides", None)
        if provides is not None:
            self.check_inputs(provides, type(pl_module).__name__)
        self.balancer.to(pl_module.device)
        strategy = trainer.strategy
        kind = type(strategy).__name__
        if self.balancer.requires & {"shared_params", *_FEATURE_INPUTS} and (
            "FSDP" in kind or "DeepSpeed" in kind
        ):
            raise ConfigError(
                f"balancer {type(self.balancer).__name__} needs per-task gradients of unsharded shared "
                f"parameters and cannot run under {kind}; use trainer=ddp."
            )
        if self.trace_dir is not None:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            self._trace_file = self.trace_dir / f"rank{trainer.global_rank}.jsonl"
        if trainer.world_size > 1:
            self.balancer.reduce = lambda t: strategy.reduce(t, reduce_op="mean")
            self.balancer.world_size = trainer.world_size
            # ddp_spawn hands every process tensors in shared memory: make the balancer's state
            # process-local, or each rank would apply its (identical) update to the same storage.
            with torch.no_grad():
                for t in [*self.balancer.parameters(), *self.balancer.buffers()]:
                    t.data = t.data.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "balancer": self.balancer.state_dict(),
            "recent": list(self.recent),
            "entropy_sum": self._entropy_sum,
            "entropy_steps": self._entropy_steps,
            "task_names": list(self.task_names),
            "calls": self._calls,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("task_names")
        if saved is not None and list(saved) != self.task_names:
            raise ConfigError(
                f"checkpoint: its tasks {list(saved)} differ from this experiment's {self.task_names}; "
                "it belongs to another experiment."
            )
        self.balancer.load_state_dict(state_dict["balancer"])
        recent = state_dict.get("recent")
        if recent is None:  # a checkpoint from before the bounded window: every step's losses and weights
            recent = list(state_dict.get("history", []))
            self._entropy_sum = sum(weight_entropy([h["weight"][t] for t in self.task_names]) for h in recent)
            self._entropy_steps = len(recent)
        else:
            self._entropy_sum = float(state_dict.get("entropy_sum", 0.0))
            self._entropy_steps = int(state_dict.get("entropy_steps", 0))
        self.recent = deque(recent, maxlen=self.window)
        self._calls = int(state_dict.get("calls", 0))

    # -- the call a training_step makes ------------------------------------------------------------
    def __call__(
        self,
        module,
        losses: Mapping[str, LossValue],
        shared_params: Sequence[Tensor] | None = None,
        features: Tensor | FeatureRows | FeatureCopies | None = None,
    ) -> Tensor | None:
        """The scalar to back-propagate for this step's ``losses`` (task -> loss or (sum, count)); None when
        the step is skipped. ``shared_params``: the last shared layer's parameters; ``features``: the shared
        representation, as a tensor, :class:`FeatureRows` or :class:`FeatureCopies` (see the module
        docstring). ``module``: the training LightningModule (or None outside one)."""
        trainer = trainer_of(module)
        reduced = self._reduce(trainer, losses)
        step = int(trainer.global_step) if trainer is not None else self._calls
        if not self._check_finite(reduced, step):
            self._calls += 1
            return None
        if trainer is not None:
            self.balancer.set_epoch(trainer.current_epoch)
        balanced, out, copied = self._balance(module, reduced, shared_params, features)
        loss = self._apply(reduced, balanced, out.loss, copied, features)
        self._record(module, trainer, step, reduced, out.weights, loss)
        self._calls += 1
        return loss.to(reduced.local_sum.device)

    def _reduce(self, trainer, losses: Mapping[str, LossValue]) -> ReducedLosses:
        """This rank's ``losses`` as sums and counts, summed across the data-parallel ranks of ``trainer``
        (None: one process): every task's global mean loss and count."""
        names = self.task_names + [t for t in self.extra_tasks if t in losses]
        missing = [t for t in self.task_names if t not in losses]
        unknown = [t for t in losses if t not in self.task_names and t not in self.extra_tasks]
        if missing or unknown:
            raise KeyError(f"loss dict: missing tasks {missing}, unknown tasks {unknown}")
        sums, counts = _sums_and_counts([losses[name] for name in names])
        local_sum = torch.stack(sums)
        local_count = torch.stack(counts)
        world = trainer.world_size if trainer is not None else 1
        stats = torch.stack([local_sum.detach().float(), local_count.float()])
        if world > 1:
            stats = trainer.strategy.reduce(stats, reduce_op="sum")
        global_sum, count = stats[0], stats[1]
        present = count > 0
        mean = torch.where(present, global_sum / count.clamp(min=1), torch.zeros_like(global_sum))
        # A rank's sum times world / global count back-propagates, averaged by DDP over ranks, the gradient
        # of the global mean.
        scale = torch.where(present, world / count.clamp(min=1), torch.zeros_like(count))
        return ReducedLosses(names, sums, local_sum, local_count, count, mean, present, scale)

    def _check_finite(self, reduced: ReducedLosses, step: int) -> bool:
        """Whether every present task's global mean loss is finite. If not, raise
        :class:`~utils.errors.NonFiniteLossError` naming the tasks and the step, or, with
        ``on_nonfinite=skip``, warn and return False (the step is skipped)."""
        finite = torch.isfinite(reduced.mean).tolist()
        bad = [n for n, ok, p in zip(reduced.names, finite, reduced.present.tolist()) if p and not ok]
        if not bad:
            return True
        values = {n: float(reduced.mean[reduced.names.index(n)]) for n in bad}
        msg = ", ".join(f"task '{n}' loss is {v}" for n, v in values.items()) + f" at step {step}"
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(f"{msg} (set aggregation.on_nonfinite=skip to skip such steps instead).")
        rank_zero_warn(f"{msg}; skipping this step (aggregation.on_nonfinite=skip).")
        return False

    def _balance(
        self, module, reduced: ReducedLosses, shared_params, features
    ) -> tuple[Tensor, BalanceOutput, tuple[Tensor, Reached] | None]:
        """The balancer's output on the balanced tasks; the loss vector of every task it was given (values
        the global means, gradients those of :meth:`_reduce`'s scale; with :class:`FeatureCopies`, a leaf cut
        from the model's graph); and, with :class:`FeatureCopies`, the losses' gradients at the copies and
        parameters (:func:`~pretrain.feature_gradients.copy_gradients`)."""
        local = reduced.local_sum * reduced.scale.to(reduced.local_sum.dtype)
        local = local + (reduced.mean.to(local.dtype) - local).detach()
        local = torch.where(reduced.present, local, torch.zeros_like(local))
        k = len(self.task_names)
        requires = self.balancer.requires
        wants_grads = bool(requires & _FEATURE_INPUTS)
        feature_grads, copied, balanced = None, None, local
        if isinstance(features, FeatureCopies):
            if "shared_params" in requires:
                raise ConfigError(
                    f"balancer {type(self.balancer).__name__} needs gradients of shared parameters, which the "
                    "task losses do not reach when the heads read copies of the features; use balancer.mode=features."
                )
            copied = copy_gradients(features, reduced.sums, reduced.scale, copy_params(features, module))
            feature_grads = copied[0][:k]
            balanced = local.detach().requires_grad_()  # the scalar's dS/dL_t, taken in _apply
        elif isinstance(features, FeatureRows) and wants_grads:
            feature_grads = row_gradients(features, local[:k])
        out = self.balancer(
            balanced[:k],
            reduced.present[:k],
            shared_params=shared_params if "shared_params" in requires else None,
            features=features if "features" in requires and isinstance(features, Tensor) else None,
            counts=reduced.count[:k] if "counts" in requires else None,
            feature_grads=feature_grads if wants_grads else None,
        )
        return balanced, out, copied

    def _apply(
        self,
        reduced: ReducedLosses,
        balanced: Tensor,
        balanced_loss: Tensor,
        copied: tuple[Tensor, Reached] | None,
        features,
    ) -> Tensor:
        """The scalar to back-propagate: the balancer's ``balanced_loss`` plus the extra tasks' losses (from
        ``balanced``) at their fixed weights; with :class:`FeatureCopies` (``copied``), plus the zero-valued
        term whose backward sends the copies' and heads' gradients into the model."""
        k = len(self.task_names)
        extra = balanced[k:]
        if self.extra_weights:
            fixed = [self.extra_weights.get(n, 1.0) for n in reduced.names[k:]]
            extra = extra * torch.tensor(fixed, dtype=extra.dtype, device=extra.device)
        loss = balanced_loss + extra.sum()
        if copied is not None:
            sent = send_gradients(loss, balanced, reduced.scale, features.shared, *copied)
            loss = loss + sent.to(loss.dtype)
        return loss

    def _record(
        self, module, trainer, step: int, reduced: ReducedLosses, weights: Tensor, loss: Tensor
    ) -> None:
        """Log the step's values (with a trainer), keep its losses and weights in the window, add its weights'
        entropy to the running sum, and append its trace line (``trace_dir``)."""
        weights = weights.float().cpu()
        mean, present = reduced.mean.cpu(), reduced.present.cpu()
        logged = self._logged(reduced.names, mean, present, weights, loss)
        if trainer is not None:
            module.log_dict(logged, on_step=True, on_epoch=False, batch_size=1, sync_dist=False)
        self.recent.append(
            {
                "step": step,
                "loss": {n: (float(mean[i]) if present[i] else None) for i, n in enumerate(reduced.names)},
                "weight": {n: float(weights[i]) for i, n in enumerate(self.task_names)},
            }
        )
        self._entropy_sum += logged["train/weight_entropy"]
        self._entropy_steps += 1
        if self._trace_file is not None:
            self._trace(trainer, step, reduced, mean, weights)

    def _logged(
        self, names: list[str], mean: Tensor, present: Tensor, weights: Tensor, loss: Tensor
    ) -> dict[str, float]:
        """What the loggers get each step: every present task's global mean loss, every balanced task's
        weight, the worst and the mean present balanced loss, the weights' entropy and the total loss."""
        logged: dict[str, float] = {}
        for i, name in enumerate(names):
            if present[i]:
                logged[f"train/loss/{name}"] = float(mean[i])
        for i, name in enumerate(self.task_names):
            logged[f"train/weight/{name}"] = float(weights[i])
        k = len(self.task_names)
        balanced_present = present[:k]
        if bool(balanced_present.any()):
            worst = mean[:k].masked_fill(~balanced_present, -math.inf)
            logged["train/loss_worst"] = float(worst.max())
            logged["train/loss_mean"] = float(mean[:k][balanced_present].mean())
        logged["train/weight_entropy"] = weight_entropy(weights.tolist())
        logged["train/loss_total"] = float(loss.detach())
        return logged

    def _trace(self, trainer, step: int, reduced: ReducedLosses, mean: Tensor, weights: Tensor) -> None:
        """Append the step's line to this rank's trace file: its local sums and counts, the global means and
        the weights it applied."""
        names = reduced.names
        record = {
            "step": step,
            "rank": int(trainer.global_rank) if trainer is not None else 0,
            "local_sum": {n: float(v) for n, v in zip(names, reduced.local_sum.detach().float().cpu())},
            "local_count": {n: float(v) for n, v in zip(names, reduced.local_count.cpu())},
            "loss": {n: float(mean[i]) for i, n in enumerate(names)},
            "weight": {n: float(weights[i]) for i, n in enumerate(self.task_names)},
        }
        with self._trace_file.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def final_losses(self) -> dict[str, float]:
        """Each task's mean reduced loss over the last ``window`` steps (its final loss; steps where the task
        was absent do not count)."""
        result: dict[str, float] = {}
        names = self.task_names + self.extra_tasks
        for name in names:
            values = [h["loss"].get(name) for h in self.recent]
            values = [v for v in values if v is not None]
            if values:
                result[name] = sum(values) / len(values)
        return result

    def weight_summary(self) -> dict:
        """How the run weighed its tasks: ``final`` (each task's mean weight over the last ``window`` steps),
        ``mean_entropy`` (the weights' entropy in nats averaged over every step taken; ``log T`` is uniform, 0
        one task) and ``max_entropy`` (``log T``); empty before the first step."""
        if not self.recent or not self._entropy_steps:
            return {}
        n = len(self.recent)
        return {
            "final": {t: sum(h["weight"][t] for h in self.recent) / n for t in self.task_names},
            "mean_entropy": self._entropy_sum / self._entropy_steps,
            "max_entropy": math.log(len(self.task_names)),
        }


def _sums_and_counts(values: Sequence[LossValue]) -> tuple[list[Tensor], list[Tensor]]:
    """Each loss value as a 0-d sum and a 0-d fp32 count (a plain loss counts 1)."""
    sums, counts = [], []
    for value in values:
        if isinstance(value, tuple):
            s, c = value
        else:
            s, c = value, 1.0
        sums.append(s.reshape(()))
        counts.append(torch.as_tensor(c, dtype=torch.float32, device=s.device).reshape(()))
    return sums, counts


def weight_entropy(weights: Sequence[float]) -> float:
    """Entropy of task weights in nats (``log T``: uniform; 0: all weight on one task)."""
    return -sum(v * math.log(v) for v in weights if v > 0)


def reference_losses(run_dir: str | Path, task_names: Sequence[str]) -> list[float]:
    """``balancer.reference_from``: the final losses (``results.json``'s ``upstream``) of a finished run,
    in the order of ``task_names``. ``run_dir`` is the run's directory (or its results.json)."""
    path = Path(run_dir)
    path = path if path.is_file() else path / "results.json"
    try:
        upstream = json.loads(path.read_text())["upstream"]
        if not isinstance(upstream, dict):
            raise TypeError
    except FileNotFoundError:
        raise ConfigError(
            f"balancer.reference_from: {path} does not exist (give the directory of a finished run)."
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"balancer.reference_from: {path} is not a results.json with an 'upstream' dict of final task losses."
        ) from None
    missing = [t for t in task_names if not isinstance(upstream.get(t), (int, float))]
    if missing:
        raise ConfigError(
            f"balancer.reference_from: {path} has no final loss for task(s) {', '.join(missing)} in its "
            f"'upstream' (it has {', '.join(upstream) or 'none'})."
        )
    return [float(upstream[t]) for t in task_names]
