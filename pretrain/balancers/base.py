"""The base class of every balancer (:class:`Balancer`, its output, the shared conventions of
``pretrain.balancers``) and the loss-value balancers of the paper: ``none``, ``vanilla``, ``minimax``,
``groupdro`` (with :class:`NormalisedBalancer`, their optional normalisation of the losses)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from utils.errors import ConfigError


class BalanceOutput(NamedTuple):
    loss: Tensor
    """The scalar to back-propagate."""
    weights: Tensor
    """The T task weights applied this step (detached)."""


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """What a balancer is given at one step besides the detached losses (:meth:`Balancer.compute_weights`,
    :meth:`Balancer.objective`). A balancer names the fields it needs in ``requires``; the loss-aggregation
    callback fills those and leaves the other optional fields None."""

    losses: Tensor
    """``(T,)`` the task losses, differentiable; 0 where the task is absent."""
    present: Tensor
    """``(T,)`` bool: the task has at least one target in the step."""
    counts: Tensor | None = None
    """``(T,)`` each task's number of targets in the step, summed over ranks (``vanilla``)."""
    shared_params: Sequence[Tensor] | None = None
    """The parameters of the last shared layer (``shared_params`` mode, GradNorm's exact form)."""
    features: Tensor | None = None
    """The shared representation the task heads read (``features`` mode): the balancer takes each task's
    gradient w.r.t. it by a batched backward of the T losses."""
    feature_grads: Tensor | None = None
    """``(T, ..., D)``: row t the gradient of ``losses[t]`` w.r.t. the rank's shared representation, computed
    by the caller (the loss-aggregation callback, in one backward); ``features`` mode uses these instead of
    ``features``."""


#: the names a balancer's ``requires`` (and a pre-training module's ``provides``) may hold
STEP_INPUTS = frozenset(f.name for f in dataclasses.fields(StepInputs))


def step_input_names(names: Iterable[str], owner: str) -> frozenset[str]:
    """``names`` as a frozenset, checked to be fields of :class:`StepInputs`; ``owner`` (e.g.
    ``"Vanilla.requires"``) is named in the TypeError otherwise."""
    unknown = sorted({names} if isinstance(names, str) else set(names) - STEP_INPUTS)
    if unknown:
        raise TypeError(
            f"{owner} must be a set of StepInputs fields ({', '.join(sorted(STEP_INPUTS))}), "
            f"not {', '.join(map(repr, unknown))}."
        )
    return frozenset(names)


def _identity(t: Tensor) -> Tensor:
    return t


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the entries where ``mask`` is true; exactly 0 elsewhere (uniform if none is)."""
    if not bool(mask.any()):
        return torch.full_like(logits, 1.0 / logits.numel())
    return torch.softmax(logits.masked_fill(~mask, -math.inf), dim=0)


class Balancer(nn.Module):
    """Base class. Subclasses implement :meth:`compute_weights` (and, rarely, :meth:`objective`).

    ``requires`` names the fields of :class:`StepInputs` a subclass needs beyond the losses and ``present``:
    ``"shared_params"`` (the parameters of the last shared layer), ``"features"`` (the shared representation
    the task heads read; its ``feature_grads`` come with it where the caller can compute them) or ``"counts"``
    (each task's number of targets in the step). A name that is no field fails when the class is created;
    the loss-aggregation callback checks that the training module provides every one (when the module builds it).
    ``reduce`` averages a tensor over data-parallel ranks and ``world_size`` is their number; the
    loss-aggregation callback sets both, and gradient-based methods apply them to the rank-local gradients
    they compute.
    """

    requires: frozenset[str] = frozenset()
    #: Learning rate for this balancer's own parameters (None: the optimizer's).
    param_lr: float | None = None
    #: Buffers whose shape is only known at the first step (per-task gradient statistics): a checkpoint's
    #: shape replaces the fresh module's before loading.
    lazy_buffers: tuple[str, ...] = ()

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if int(num_tasks) < 1:
            raise ConfigError(
                f"balancer: the experiment defines {num_tasks} tasks to balance; at least one is needed "
                "(check the experiment's task list)."
            )
        self.num_tasks = int(num_tasks)
        self.reduce: Callable[[Tensor], Tensor] = _identity
        self.world_size = 1
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_loss", torch.zeros(self.num_tasks))
        self.register_buffer("seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.requires = step_input_names(cls.requires, f"{cls.__name__}.requires")

    # -- the interface -------------------------------------------------------------------------
    def forward(
        self,
        losses: Tensor,
        present: Tensor | None = None,
        *,
        shared_params: Sequence[Tensor] | None = None,
        features: Tensor | None = None,
        counts: Tensor | None = None,
        feature_grads: Tensor | None = None,
    ) -> BalanceOutput:
        """Weigh the T losses of one step.

        Args:
            losses: shape ``(T,)``, differentiable. Entries of absent tasks are ignored (pass 0).
            present: shape ``(T,)`` bool; default all true.
            shared_params: parameters of the last shared layer (GradNorm; aggregators in
                ``shared_params`` mode).
            features, counts, feature_grads: see :class:`StepInputs`.
        """
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        if present is None:
            present = torch.ones(self.num_tasks, dtype=torch.bool, device=losses.device)
        present = present.to(device=losses.device, dtype=torch.bool)
        with torch.no_grad():
            value = losses.detach().float()
            if self.training:
                self.last_loss.copy_(torch.where(present, value, self.last_loss))
                self.seen |= present
            imputed = torch.where(present, value, self.last_loss)
            known = present | self.seen
        losses = torch.where(present, losses, torch.zeros_like(losses))
        inputs = StepInputs(
            losses=losses,
            present=present,
            counts=counts,
            shared_params=shared_params,
            features=features,
            feature_grads=feature_grads,
        )
        weights = self.compute_weights(imputed, known, inputs).detach()
        loss = self.objective(losses, weights, present, inputs)
        if self.training:
            self.step += 1
        return BalanceOutput(loss=loss, weights=weights)

    def compute_weights(self, values: Tensor, known: Tensor, inputs: StepInputs) -> Tensor:
        """Weights from the detached fp32 losses ``values`` (absent tasks imputed); ``known`` marks
        tasks with a loss seen at least once; ``inputs`` holds the fields named in ``requires``."""
        raise NotImplementedError

    def objective(self, losses: Tensor, weights: Tensor, present: Tensor, inputs: StepInputs) -> Tensor:
        """The scalar to back-propagate; ``sum_t w_t L_t`` unless the method adds its own term."""
        return (weights.to(losses.dtype) * losses).sum()

    def set_epoch(self, epoch: int) -> None:
        """Called by the loss-aggregation callback before every step with the training epoch, so
        epoch-based methods notice a new epoch even when a run resumed from a checkpoint."""

    @property
    def k(self) -> int:
        """Index of the current step (0 at the first call)."""
        return int(self.step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.lazy_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, getattr(self, name).new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NoBalancing(Balancer):
    """``none``: the average of the T losses, eq. (4): ``w_t = 1/T``."""

    def compute_weights(self, values, known, inputs):
        return torch.full_like(values, 1.0 / self.num_tasks)


class Vanilla(Balancer):
    """``vanilla``: plain BERT, the paper's Table 1 baseline: every target (masked token) counts equally.

    ``w_t = n_t / sum_s n_s`` with ``n_t`` the task's number of targets in the step (summed over ranks), so
    ``sum_t w_t L_t = sum_t S_t / sum_t n_t`` (``S_t`` the task's loss sum): the mean loss over all targets
    of the balanced tasks. Not eq. (4)'s average of the task losses, which is ``none``.
    """

    requires = frozenset({"counts"})

    def compute_weights(self, values, known, inputs):
        if inputs.counts is None:
            raise ValueError("vanilla weighs the tasks by their target counts: pass counts=(T,) tensor")
        n = torch.where(inputs.present, inputs.counts.to(values).clamp(min=0), torch.zeros_like(values))
        total = n.sum()
        return torch.where(
            total > 0, n / total.clamp(min=1e-12), torch.full_like(values, 1.0 / self.num_tasks)
        )


NORMALIZE = ("none", "reference", "initial")


class NormalisedBalancer(Balancer):
    """Base of the balancers whose weights come from the loss *values* (minimax, groupdro), which may be
    normalised first (beyond the paper, whose setting is ``normalize="none"``):

    * ``reference``: the excess loss ``L_t - ref_t`` over a reference model's loss, as in distributionally
      robust language modelling (Oren et al. 2019) and DoReMi (Xie et al. 2023; without its clipping at 0).
      ``ref`` is ``reference`` (T losses in task order) or comes from ``reference_from`` (a finished run's
      directory): the loss-aggregation callback, which knows the task names, reads that run's final losses
      and calls :meth:`set_reference`. With neither, the experiment supplies its default reference (PoS-BERT:
      the context-free cross-entropy of the corpus's word-piece frequencies on each group, the
      ``reference`` of ``upstream_eval``; MM-MAE: each modality's context-free loss); an experiment without one
      fails at the first step, saying so.
    * ``initial``: ``L_t / Lbar_t``, ``Lbar_t`` the task's mean loss over the first ``normalize_steps`` steps
      it was present in (GradNorm's ``L_t / L_t(0)``, averaged against minibatch noise). Within those steps
      ``Lbar_t`` is the mean so far (this step included): the first step sees ratios 1 (uniform weights)
      and the divisor settles without a jump at the window's end. ``Lbar`` rides in ``state_dict()``.

    Only the weights see the normalised values; the scalar stays ``sum_t w_t L_t`` on the raw losses.
    """

    def __init__(
        self,
        num_tasks: int,
        normalize: str = "none",
        reference: Sequence[float] | None = None,
        reference_from: str | None = None,
        normalize_steps: int = 50,
    ) -> None:
        super().__init__(num_tasks)
        if normalize not in NORMALIZE:
            raise ConfigError(f"balancer.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}.")
        if int(normalize_steps) < 1:
            raise ConfigError(f"balancer.normalize_steps must be >= 1 step, got {normalize_steps}.")
        self.normalize, self.normalize_steps = normalize, int(normalize_steps)
        self.reference_from: str | None = None
        self._has_reference = False
        if normalize == "reference":
            if reference is not None and reference_from is not None:
                raise ConfigError(
                    "balancer.normalize=reference takes one of balancer.reference (the T reference losses) and "
                    "balancer.reference_from (a finished run's directory), not both."
                )
            self.reference_from = None if reference_from is None else str(reference_from)
            self.register_buffer("reference", torch.zeros(self.num_tasks), persistent=False)
            if reference is not None:
                self.set_reference(reference, key="balancer.reference")
        elif normalize == "initial":
            self.register_buffer("initial_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
            self.register_buffer("initial_count", torch.zeros(self.num_tasks, dtype=torch.long))

    def set_reference(self, values: Sequence[float], key: str = "balancer.reference_from") -> None:
        """Set ``ref`` (T losses in task order); ``key`` names the config key they came from in errors."""
        try:
            ref = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a list of {self.num_tasks} numbers, got {values!r}.") from None
        if len(ref) != self.num_tasks or not all(math.isfinite(v) for v in ref):
            raise ConfigError(
                f"{key} must give {self.num_tasks} finite losses, one per balanced task, got {len(ref)}: {ref}."
            )
        self.reference.copy_(torch.tensor(ref))
        self._has_reference = True

    def normalised(self, values: Tensor, inputs: StepInputs) -> Tensor:
        """The detached losses the weights are computed from."""
        if self.normalize == "reference":
            if not self._has_reference:
                raise ConfigError(
                    "balancer.normalize=reference has no reference losses: this experiment supplies no default "
                    "reference, so set balancer.reference (T losses) or balancer.reference_from (a finished "
                    "run's directory); outside the loss-aggregation callback, call set_reference() first."
                )
            return values - self.reference
        if self.normalize == "initial":
            add = inputs.present & (self.initial_count < self.normalize_steps)
            total = self.initial_sum + torch.where(add, values.double(), torch.zeros_like(self.initial_sum))
            count = self.initial_count + add.long()
            if self.training:
                self.initial_sum.copy_(total)
                self.initial_count.copy_(count)
            mean = torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total))
            return values / mean.float().clamp(min=1e-12)
        return values


class Minimax(NormalisedBalancer):
    """``minimax``: softmax-weighted gradient descent, eq. (7) and Algorithm 1 of the paper.

    ``w_k = softmax(alpha_k * L)`` on the detached losses (or on their exponential moving average
    ``m <- ema * m + (1 - ema) * L`` against minibatch noise), then back-propagate ``sum_t w_t L_t``.
    The gradient equals that of ``(1/alpha) * logsumexp(alpha * L)``: smooth Tchebycheff with
    ``mu = 1/alpha``.

    Args:
        alpha: the softmax hyper-parameter; 1.0 is the paper's practical default (Remark 3.3);
            ``inf`` gives the hard max (subgradient method; ties share the weight); 0 gives ``none``.
        schedule: ``constant`` (``alpha_k = alpha``) or ``sqrt`` (Theorem 3.1:
            ``alpha_k = alpha * sqrt(k + 1)``).
        ema: smoothing of the losses used for the weights, in [0, 1); 0 uses the current losses.
        floor: weight floor ``c``: ``w <- (1 - c) w + c / T`` (DoReMi's smoothing), in [0, 1].
        normalize, reference, reference_from, normalize_steps: optional normalisation of the losses
            before the softmax (see :class:`NormalisedBalancer`); ``none`` is eq. (7) as published.
    """

    def __init__(
        self,
        num_tasks: int,
        alpha: float | str = 1.0,
        schedule: str = "constant",
        ema: float = 0.0,
        floor: float = 0.0,
        normalize: str = "none",
        reference: Sequence[float] | None = None,
        reference_from: str | None = None,
        normalize_steps: int = 50,
    ) -> None:
        super().__init__(num_tasks, normalize, reference, reference_from, normalize_steps)
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"balancer.alpha must be a number >= 0 or inf, got {alpha!r}.") from None
        if not alpha >= 0:
            raise ConfigError(f"balancer.alpha must be >= 0 (or inf), got {alpha}.")
        if schedule not in ("constant", "sqrt"):
            raise ConfigError(f"balancer.schedule must be 'constant' or 'sqrt', got {schedule!r}.")
        if not 0.0 <= float(ema) < 1.0:
            raise ConfigError(f"balancer.ema must be in [0, 1), got {ema}.")
        if not 0.0 <= float(floor) <= 1.0:
            raise ConfigError(f"balancer.floor must be in [0, 1], got {floor}.")
        self.alpha, self.schedule, self.ema, self.floor = alpha, schedule, float(ema), float(floor)
        self.register_buffer("ema_loss", torch.zeros(self.num_tasks))
        self.register_buffer("ema_seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    def alpha_at(self, k: int) -> float:
        return self.alpha * math.sqrt(k + 1) if self.schedule == "sqrt" else self.alpha

    def compute_weights(self, values, known, inputs):
        values = self.normalised(values, inputs)
        if self.ema > 0:
            with torch.no_grad():
                smoothed = torch.where(
                    self.ema_seen, self.ema * self.ema_loss + (1 - self.ema) * values, values
                )
                smoothed = torch.where(known, smoothed, self.ema_loss)
                if self.training:
                    self.ema_loss.copy_(smoothed)
                    self.ema_seen |= known
            values = smoothed
        alpha = self.alpha_at(self.k)
        if math.isinf(alpha):
            top = values.masked_fill(~known, -math.inf)
            hit = (top == top.max()) & known
            weights = hit.float() / hit.sum().clamp(min=1)
        else:
            weights = _masked_softmax(alpha * values, known)
        if self.floor > 0:
            weights = (1 - self.floor) * weights + self.floor / self.num_tasks
        return weights


class GroupDRO(NormalisedBalancer):
    """``groupdro``: online group DRO (Sagawa et al., ICLR 2020), the update DoReMi uses for mixtures.

    ``q <- q * exp(eta * L)``, ``q <- q / sum(q)``, updated before use, ``q`` initially uniform:
    a softmax of the *cumulative* losses (minimax uses the current ones). Absent tasks use their last
    loss (DoReMi's choice), so their weight does not decay for lack of data. ``normalize`` replaces ``L``
    by the excess loss ``L - ref`` (DoReMi's update) or by ``L / Lbar`` (see :class:`NormalisedBalancer`).
    """

    def __init__(
        self,
        num_tasks: int,
        eta: float = 0.01,
        normalize: str = "none",
        reference: Sequence[float] | None = None,
        reference_from: str | None = None,
        normalize_steps: int = 50,
    ) -> None:
        super().__init__(num_tasks, normalize, reference, reference_from, normalize_steps)
        if not float(eta) > 0:
            raise ConfigError(f"balancer.eta must be > 0, got {eta}.")
        self.eta = float(eta)
        self.register_buffer("log_q", torch.full((self.num_tasks,), -math.log(self.num_tasks)))

    def compute_weights(self, values, known, inputs):
        values = self.normalised(values, inputs)
        log_q = self.log_q + self.eta * torch.where(known, values, torch.zeros_like(values))
        log_q = log_q - torch.logsumexp(log_q, dim=0)
        if self.training:
            self.log_q.copy_(log_q)
        return log_q.exp()


_EPS = 1e-8
