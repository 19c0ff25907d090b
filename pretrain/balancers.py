"""Task balancers: the T per-task losses of a step in, task weights and one scalar to back-propagate out.

Pure PyTorch: no Lightning, no model code. Every balancer is a small ``nn.Module`` so that its state
(learnable parameters *and* running statistics, kept as buffers) rides in ``state_dict()`` and a resumed
run continues exactly.

Conventions shared by every method (see ``BALANCERS.md``):

* The weights ``w`` sum to 1, so ``none`` is the mean of the T losses (eq. 4) and a sweep compares
  balancers, not effective learning rates. (Uncertainty's effective weights ``exp(-s_t)/T`` sum to 1 only
  at initialisation; that is the method.)
* The scalar to back-propagate is ``sum_t w_t L_t`` (plus the balancer's own term: Uncertainty's
  regulariser, GradNorm's weight-update loss, both of which only reach the balancer's own parameters).
* Weights are computed from **detached, fp32** losses: a grad-scaler's factor never reaches a softmax.
* A task can be absent from a step (``present[t]`` false: no target of that task in the batch). It adds
  no gradient; its weight is computed from its last known loss; a task never seen yet is left out of
  the softmax. Nothing becomes NaN.

Usage::

    balancer = Minimax(num_tasks=3, alpha=1.0)
    out = balancer(torch.stack([l_rgb, l_depth, l_sem]))
    out.loss.backward()           # sum_t w_t L_t
    out.weights                   # tensor of T weights (detached)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from utils.errors import ConfigError

__all__ = [
    "Balancer",
    "BalanceOutput",
    "NoBalancing",
    "Vanilla",
    "NormalisedBalancer",
    "Minimax",
    "Uncertainty",
    "GradNorm",
    "DWA",
    "GroupDRO",
    "STCH",
    "GradientAggregator",
    "ExcessMTL",
    "FAMO",
    "DBMTL",
    "RLW",
    "GLS",
]


class BalanceOutput(NamedTuple):
    loss: Tensor
    """The scalar to back-propagate."""
    weights: Tensor
    """The T task weights applied this step (detached)."""


def _identity(t: Tensor) -> Tensor:
    return t


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the entries where ``mask`` is true; exactly 0 elsewhere (uniform if none is)."""
    if not bool(mask.any()):
        return torch.full_like(logits, 1.0 / logits.numel())
    return torch.softmax(logits.masked_fill(~mask, -math.inf), dim=0)


class Balancer(nn.Module):
    """Base class. Subclasses implement :meth:`compute_weights` (and, rarely, :meth:`objective`).

    ``requires`` names what a subclass needs beyond the losses: ``"shared_params"`` (the parameters
    of the last shared layer), ``"features"`` (the shared representation the task heads read) or
    ``"counts"`` (each task's number of targets in the step).
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
            features: the shared representation (``features`` mode); the balancer takes each task's
                gradient w.r.t. it by a batched backward of the T losses (one per task: exact, costly).
            counts: shape ``(T,)``, each task's number of targets in the step, summed over ranks
                (``vanilla``); ignored by the other balancers.
            feature_grads: shape ``(T, ..., D)``, row t the gradient of ``losses[t]`` w.r.t. the rank's shared
                representation (D wide), already computed by the caller (the loss-aggregation callback takes
                all T in one backward); ``features`` mode then uses these instead of ``features``.
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
        ctx = {
            "losses": losses,
            "present": present,
            "shared_params": shared_params,
            "features": features,
            "counts": counts,
            "feature_grads": feature_grads,
        }
        weights = self.compute_weights(imputed, known, ctx).detach()
        loss = self.objective(losses, weights, present, ctx)
        if self.training:
            self.step += 1
        return BalanceOutput(loss=loss, weights=weights)

    def compute_weights(self, values: Tensor, known: Tensor, ctx: dict) -> Tensor:
        """Weights from the detached fp32 losses ``values`` (absent tasks imputed); ``known`` marks
        tasks with a loss seen at least once."""
        raise NotImplementedError

    def objective(self, losses: Tensor, weights: Tensor, present: Tensor, ctx: dict) -> Tensor:
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

    def compute_weights(self, values, known, ctx):
        return torch.full_like(values, 1.0 / self.num_tasks)


class Vanilla(Balancer):
    """``vanilla``: plain BERT, the paper's Table 1 baseline: every target (masked token) counts equally.

    ``w_t = n_t / sum_s n_s`` with ``n_t`` the task's number of targets in the step (summed over ranks), so
    ``sum_t w_t L_t = sum_t S_t / sum_t n_t`` (``S_t`` the task's loss sum): the mean loss over all targets
    of the balanced tasks. Not eq. (4)'s average of the task losses, which is ``none``.
    """

    requires = frozenset({"counts"})

    def compute_weights(self, values, known, ctx):
        if ctx["counts"] is None:
            raise ValueError("vanilla weighs the tasks by their target counts: pass counts=(T,) tensor")
        n = torch.where(ctx["present"], ctx["counts"].to(values).clamp(min=0), torch.zeros_like(values))
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
      ``reference`` of ``upstream_eval``); an experiment without one fails at the first step, saying so.
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

    def normalised(self, values: Tensor, ctx: dict) -> Tensor:
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
            add = ctx["present"] & (self.initial_count < self.normalize_steps)
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

    def compute_weights(self, values, known, ctx):
        values = self.normalised(values, ctx)
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


class Uncertainty(Balancer):
    """``uncertainty``: homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learnable ``s_t = log sigma_t^2`` (initially ``init_log_var``); objective, in the regression form
    that LibMTL, torchjd and Nash-MTL use for every task, scaled by ``1/T`` to keep our convention:
    ``(1/T) * sum_t (exp(-s_t) L_t + s_t)``. Effective weights ``exp(-s_t)/T`` (reported). At the optimum
    ``exp(s_t) = L_t``, so the objective behaves like ``(1/T) sum_t log L_t`` and may go negative.
    The ``s_t`` go to the optimizer with the model, without weight decay.
    """

    def __init__(self, num_tasks: int, init_log_var: float = 0.0, lr: float | None = None) -> None:
        super().__init__(num_tasks)
        self.log_var = nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))
        self.param_lr = lr

    def compute_weights(self, values, known, ctx):
        return torch.exp(-self.log_var.detach()) / self.num_tasks

    def objective(self, losses, weights, present, ctx):
        s = self.log_var.to(losses.dtype)
        terms = torch.exp(-s) * losses + s
        return torch.where(present, terms, torch.zeros_like(terms)).sum() / self.num_tasks


def _per_task_grads(losses: Tensor, present: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """Rows ``grad_inputs L_t`` (flattened, concatenated) for the present tasks; zeros for the others.

    One batched backward (``is_grads_batched``) through the part of the graph between the losses and
    ``inputs``; falls back to a loop of T backward passes where an op has no batching rule.
    """
    idx = present.nonzero().flatten()
    total = sum(p.numel() for p in inputs)
    out = losses.new_zeros((losses.numel(), total), dtype=torch.float32)
    if idx.numel() == 0:
        return out
    picked = losses[idx]
    eye = torch.eye(idx.numel(), dtype=picked.dtype, device=picked.device)
    try:
        grads = torch.autograd.grad(
            picked,
            list(inputs),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        rows = torch.cat(
            [
                (g if g is not None else torch.zeros(idx.numel(), *p.shape, device=p.device)).reshape(
                    idx.numel(), -1
                )
                for g, p in zip(grads, inputs)
            ],
            dim=1,
        )
    except RuntimeError:
        rows = []
        for i in range(idx.numel()):
            gs = torch.autograd.grad(picked[i], list(inputs), retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, inputs)]
                )
            )
        rows = torch.stack(rows)
    out[idx] = rows.float()
    return out


GRADIENT_MODES = ("shared_params", "features")


def _gradient_inputs(ctx: dict, mode: str) -> list[Tensor]:
    """The tensors per-task gradients are taken with respect to, for ``mode`` (see :class:`GradientAggregator`)."""
    inputs = ctx[mode]
    if inputs is None or (isinstance(inputs, (list, tuple)) and not inputs):
        raise ConfigError(
            f"balancer.mode={mode!r} needs the training module to pass `{mode}` to the "
            "loss aggregation; this experiment does not."
        )
    if isinstance(inputs, Tensor):
        return [inputs]
    return [p for p in inputs if p.requires_grad]


def _jacobian(ctx: dict, mode: str) -> Tensor:
    """``(T, P)`` fp32 rank-local per-task gradients ``grad L_t`` (zeros for absent tasks).

    ``features`` mode: the caller's ``feature_grads`` (flattened) when it passed them, else a batched backward
    of the T losses to ``features``; ``shared_params`` mode: a batched backward to those parameters.
    """
    grads = ctx["feature_grads"] if mode == "features" else None
    if grads is None:
        return _per_task_grads(ctx["losses"], ctx["present"], _gradient_inputs(ctx, mode)).detach()
    num_tasks = ctx["losses"].numel()
    if grads.shape[0] != num_tasks:
        raise ValueError(
            f"feature_grads: expected {num_tasks} rows (one per task), got shape {tuple(grads.shape)}"
        )
    jac = grads.detach().reshape(num_tasks, -1).float()
    return torch.where(ctx["present"][:, None], jac, torch.zeros_like(jac))


def _feature_width(ctx: dict) -> int:
    """D, the width of the shared representation (its last dimension)."""
    grads = ctx["feature_grads"]
    return (grads if grads is not None else _gradient_inputs(ctx, "features")[0]).shape[-1]


def _gramian(balancer: Balancer, jac: Tensor, mode: str) -> Tensor:
    """The ``T x T`` Gramian ``J J^T`` of the rank-local Jacobian ``jac``, reduced over data-parallel ranks.

    ``features``: each rank holds the gradients of its local losses (``world x`` its share of the global mean,
    see ``pretrain.aggregation``) w.r.t. its own rows of the representation, so the Gramian of the global
    losses is the sum of the ranks' Gramians over ``world^2``: their mean over ``world``. ``shared_params``: the
    mean of the ranks' Gramians (not the Gramian of their mean gradient).
    """
    gramian = balancer.reduce(jac @ jac.T)
    return gramian / balancer.world_size if mode == "features" else gramian


def _task_gradients(balancer: Balancer, ctx: dict, mode: str) -> Tensor:
    """``(T, P)`` fp32 per-task gradients ``grad L_t`` (zeros for absent tasks), averaged over data-parallel
    ranks, for the balancers that keep per-coordinate statistics of them across steps (ExcessMTL, DB-MTL).

    ``shared_params``: w.r.t. the parameters of the last shared layer (P = their size). ``features``: w.r.t. the
    shared representation, summed over every leading (batch, position) dimension, so P is the representation's
    width and the rows are comparable across batches (LibMTL's treatment of representation gradients).
    """
    grads = _jacobian(ctx, mode)
    if mode == "features":
        grads = grads.reshape(grads.shape[0], -1, _feature_width(ctx)).sum(dim=1)
    return balancer.reduce(grads)


def _check_mode(mode: str) -> str:
    if mode not in GRADIENT_MODES:
        raise ConfigError(f"balancer.mode must be 'features' or 'shared_params', got {mode!r}.")
    return mode


class GradNorm(Balancer):
    """``gradnorm``: gradient normalisation (Chen et al., ICML 2018), asymmetry ``alpha = 1.5``.

    Learnable logits ``p`` with ``w = softmax(p)`` (so the weights are renormalised to sum to 1, our
    convention; the paper's sum-to-T is the same up to the factor T). ``G_t = w_t ||grad L_t||``,
    ``Gbar = mean_t G_t``, ``r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0))`` with ``L_t(0)`` the task's first
    seen loss; ``p`` follows the gradient of ``sum_t |G_t - stopgrad(Gbar * r_t^alpha)|`` (added to the
    scalar; it reaches only ``p``). The model gets ``sum_t stopgrad(w_t) L_t``.

    ``mode`` says what ``grad L_t`` is taken with respect to:

    * ``features`` (default): the shared representation ``h`` the task heads read. An approximation of the
      paper's norms: the gradient on the layer ``W`` that produces ``h`` is ``(dh/dW)^T grad_h L_t``, with the
      same ``dh/dW`` for every task, so the norms differ from the paper's by a task-independent linear map
      (MGDA-UB's argument, Sener & Koltun 2018). The loss-aggregation callback computes all T gradients in
      one backward through the task heads, so GradNorm costs about what ``none`` costs.
    * ``shared_params``: the parameters ``W`` of the **last shared layer**, the paper's choice (exact
      GradNorm): one batched backward of the T losses through every task head to ``W``.

    Rank-local gradients are reduced over data-parallel ranks before the norms, so the norms are those of
    the global losses' gradients.
    """

    def __init__(
        self, num_tasks: int, asymmetry: float = 1.5, lr: float | None = 0.025, mode: str = "features"
    ) -> None:
        super().__init__(num_tasks)
        if not float(asymmetry) >= 0:
            raise ConfigError(f"balancer.asymmetry must be >= 0, got {asymmetry}.")
        if lr is not None and not float(lr) > 0:
            raise ConfigError(f"balancer.lr must be > 0 (or null for the optimizer's), got {lr}.")
        self.mode = _check_mode(mode)
        self.requires = frozenset({self.mode})
        self.asymmetry = float(asymmetry)
        self.param_lr = None if lr is None else float(lr)
        self.logits = nn.Parameter(torch.zeros(self.num_tasks))
        self.register_buffer("initial_loss", torch.ones(self.num_tasks))
        self.register_buffer("initial_seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    def compute_weights(self, values, known, ctx):
        if self.training:
            with torch.no_grad():
                first = ctx["present"] & ~self.initial_seen
                self.initial_loss.copy_(torch.where(first, values.clamp(min=1e-12), self.initial_loss))
                self.initial_seen |= ctx["present"]
        return torch.softmax(self.logits.detach(), dim=0)

    def objective(self, losses, weights, present, ctx):
        loss = (weights.to(losses.dtype) * losses).sum()
        if not self.training or not losses.requires_grad or not bool(present.any()):
            return loss
        jac = _jacobian(ctx, self.mode)
        if self.mode == "features":  # each rank holds its own rows of h: reduce the squared norms
            norms = _gramian(self, jac, self.mode).diagonal().clamp(min=0).sqrt()
        else:  # the same W on every rank: average the gradients (DDP's average), then the norms
            norms = self.reduce(jac).norm(dim=1)
        w = torch.softmax(self.logits, dim=0)
        g = w * norms
        with torch.no_grad():
            ratio = losses.detach().float() / self.initial_loss
            ratio = ratio / ratio[present].mean()
            target = g[present].mean() * ratio.pow(self.asymmetry)
        update = torch.where(present, (g - target).abs(), torch.zeros_like(g)).sum()
        return loss + update.to(loss.dtype)


class DWA(Balancer):
    """``dwa``: dynamic weight average (Liu, Johns & Davison, CVPR 2019), temperature 2.

    From the epoch-mean **unweighted** losses ``Lbar_t(e)``: ``r_t = Lbar_t(e-1) / Lbar_t(e-2)``,
    ``w = softmax(r / temperature)`` (sums to 1; the paper's sum-to-T up to the factor T); uniform for
    the first two epochs. An "epoch" is a training epoch (the callback reports it through
    :meth:`set_epoch`; call :meth:`end_epoch` yourself outside Lightning) or, if ``window`` is set,
    every ``window`` steps, for runs of few long epochs (``conf/balancer/dwa.yaml`` sets 100: with
    PoS-BERT's 716-step epochs DWA would otherwise be ``none`` for the first 1432 steps).
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int | None = None) -> None:
        super().__init__(num_tasks)
        if not float(temperature) > 0:
            raise ConfigError(f"balancer.temperature must be > 0, got {temperature}.")
        if window is not None and int(window) < 1:
            raise ConfigError(f"balancer.window must be a positive number of steps or null, got {window}.")
        self.temperature = float(temperature)
        self.window = None if window is None else int(window)
        self.register_buffer("epoch_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("history", torch.ones(2, self.num_tasks, dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        if self.window is None and self.training and int(epoch) > int(self.epoch):
            self.end_epoch()
            self.epoch.fill_(int(epoch))

    def compute_weights(self, values, known, ctx):
        if int(self.epochs_done) < 2:
            weights = torch.full_like(values, 1.0 / self.num_tasks)
        else:
            ratio = (self.history[1] / self.history[0].clamp(min=1e-12)).float()
            weights = torch.softmax(ratio / self.temperature, dim=0)
        if self.training:
            present = ctx["present"]
            self.epoch_sum += torch.where(present, values.double(), torch.zeros_like(self.epoch_sum))
            self.epoch_count += present.double()
            if self.window is not None and (self.k + 1) % self.window == 0:
                self.end_epoch()
        return weights

    def end_epoch(self) -> None:
        if not bool((self.epoch_count > 0).any()):
            return
        mean = torch.where(
            self.epoch_count > 0, self.epoch_sum / self.epoch_count.clamp(min=1), self.history[1]
        )
        if int(self.epochs_done) == 0:  # no earlier epoch: a task absent all epoch has ratio 1
            mean = torch.where(self.epoch_count > 0, mean, mean[self.epoch_count > 0].mean())
        self.history.copy_(torch.stack([self.history[1], mean]))
        self.epochs_done += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()


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

    def compute_weights(self, values, known, ctx):
        values = self.normalised(values, ctx)
        log_q = self.log_q + self.eta * torch.where(known, values, torch.zeros_like(values))
        log_q = log_q - torch.logsumexp(log_q, dim=0)
        if self.training:
            self.log_q.copy_(log_q)
        return log_q.exp()


class STCH(Balancer):
    """``stch``: smooth Tchebycheff scalarisation (Lin et al., ICML 2024), via ``torchjd.scalarization.STCH``.

    After ``warmup`` steps of equal weights, the nadir ``z_t`` is the task's mean loss over the warm-up;
    then the objective is ``mu * log sum_t exp(log(L_t / z_t) / mu)`` (unit preferences, reference 0).
    We apply its gradient as weights ``w_t proportional to d STCH / d L_t``, renormalised to sum to 1:
    the direction of the method with our convention's scale. ``mu -> 0`` approaches the max of the
    normalised log-losses; ``mu = 1`` is a normalised linear scalarisation.
    """

    def __init__(self, num_tasks: int, mu: float = 0.1, warmup: int = 50) -> None:
        super().__init__(num_tasks)
        if not float(mu) > 0:
            raise ConfigError(f"balancer.mu must be > 0, got {mu}.")
        if int(warmup) < 1:
            raise ConfigError(f"balancer.warmup must be >= 1 step, got {warmup}.")
        from torchjd.scalarization import STCH as _TorchJDSTCH

        self.mu, self.warmup = float(mu), int(warmup)
        self.scalarizer = _TorchJDSTCH(mu=self.mu, weights=torch.ones(self.num_tasks))
        self.register_buffer("nadir_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(self.num_tasks, dtype=torch.float64))

    def compute_weights(self, values, known, ctx):
        if self.k < self.warmup:
            if self.training:
                present = ctx["present"]
                self.nadir_sum += torch.where(present, values.double(), torch.zeros_like(self.nadir_sum))
                self.nadir_count += present.double()
            return torch.full_like(values, 1.0 / self.num_tasks)
        nadir = (self.nadir_sum / self.nadir_count.clamp(min=1)).float().clamp(min=1e-8)
        nadir = torch.where(self.nadir_count > 0, nadir, values.clamp(min=1e-8))
        self.scalarizer.weights = torch.ones_like(values)
        with torch.enable_grad():
            x = values.clamp(min=1e-8).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.scalarizer(torch.log(x / nadir)), x)
        grad = torch.where(known, grad, torch.zeros_like(grad))
        return grad / grad.sum().clamp(min=1e-12)


class GradientAggregator(Balancer):
    """Gradient aggregators from ``torchjd``: ``mgda``, ``pcgrad``, ``upgrad`` (or any ``*Weighting``).

    The T x T Gramian ``G = J J^T`` of the per-task gradients is taken with respect to

    * ``features`` mode (default, MGDA-UB style): the shared representation ``h`` the task heads read. An
      approximation of the exact method, whose Jacobian is w.r.t. the shared parameters: their per-task
      gradients are ``(dh/dtheta)^T grad_h L_t`` with the same ``dh/dtheta`` for every task, and the Gramian
      of the ``grad_h L_t`` stands in for theirs (Sener & Koltun 2018). The loss-aggregation callback takes
      all T gradients w.r.t. ``h`` in one backward through the task heads (``feature_grads``), so the method
      costs about what ``none`` costs; given only ``features``, the balancer takes them by a batched backward;
    * ``shared_params`` mode: the parameters of the last shared layer (exact on that layer): one batched
      backward of the T losses through every task head to it.

    The weights come from torchjd's ``UPGradWeighting`` / ``MGDAWeighting`` / ``PCGradWeighting`` on that
    Gramian, renormalised to sum to 1 (our convention; the direction is torchjd's). The model then gets
    the gradient of ``sum_t w_t L_t``, whose shared-parameter gradient is ``J^T w``. Gramians are reduced
    over data-parallel ranks before the weighting, so every rank applies identical weights.
    """

    def __init__(self, num_tasks: int, method: str = "upgrad", mode: str = "features") -> None:
        super().__init__(num_tasks)
        from torchjd import aggregation

        weightings = {
            "upgrad": aggregation.UPGradWeighting,
            "mgda": aggregation.MGDAWeighting,
            "pcgrad": aggregation.PCGradWeighting,
            "dualproj": aggregation.DualProjWeighting,
            "imtlg": aggregation.IMTLGWeighting,
            "cagrad": lambda: aggregation.CAGradWeighting(c=0.5),
        }
        if method not in weightings:
            raise ConfigError(f"balancer.method must be one of {sorted(weightings)}, got {method!r}.")
        self.method, self.mode = method, _check_mode(mode)
        self.requires = frozenset({mode})
        self.weighting = weightings[method]()

    def compute_weights(self, values, known, ctx):
        losses, present = ctx["losses"], ctx["present"]
        if not self.training or not losses.requires_grad:
            return torch.full_like(values, 1.0 / self.num_tasks)
        gramian = _gramian(self, _jacobian(ctx, self.mode), self.mode)
        idx = present.nonzero().flatten()
        weights = torch.zeros_like(values)
        if idx.numel() == 0:
            return weights
        sub = gramian[idx][:, idx].double()
        w = self.weighting(sub).float()
        weights[idx] = w / w.sum().clamp(min=1e-12) if float(w.sum()) > 0 else 1.0 / idx.numel()
        return weights


_EPS = 1e-8


class ExcessMTL(Balancer):
    """``excessmtl``: task weights from estimated excess risks (He et al., ICML 2024, "Robust Multi-Task
    Learning with Excess Risks").

    Each task's excess risk ``L_t(theta) - L_t(theta*)`` is estimated from a second-order Taylor expansion at
    ``theta``, ``(1/2) g_t^T H_t^{-1} g_t`` with ``g_t = grad L_t`` and the diagonal AdaGrad-style curvature
    ``H_t = diag(sqrt(S_t + 1e-7))``, ``S_t`` the sum of the task's squared gradients ``g_t (.) g_t`` over
    its steps, this one included. The estimate is divided by the task's first one (the paper's scale
    normalisation: tasks of different loss scales become comparable, and the 1/2 cancels):
    ``r_t = E_t / E_t(0)``. The weights follow exponentiated gradient ascent on ``r``:
    ``q <- q * exp(eta * r)``, ``q <- q / sum(q)``, updated before use, ``q`` initially uniform (the first
    step's ratios are all 1, so its weights stay uniform, as in the official code, which sets the baseline
    there without updating). The model gets ``sum_t q_t L_t`` (weights summing to 1; the official code's
    sum to T).

    Args:
        robust_step_size: ``eta``, the step of the exponentiated-gradient update (LibMTL's default 0.01).
        mode: ``shared_params`` (default): ``g_t`` w.r.t. the last shared layer's parameters (the official
            code takes them w.r.t. all shared parameters, T backward passes); ``features``: w.r.t. the shared
            representation, summed over the batch (LibMTL's representation-gradient variant).

    Cost: ``shared_params``, one batched backward of the T losses through every task head to that layer;
    ``features``, about none under the loss-aggregation callback (all T gradients in one backward, see
    :class:`GradientAggregator`); and a ``T x P`` buffer of squared-gradient sums. Absent tasks: no
    gradient, their last ratio stands in for the update; a task not seen yet counts with ratio 1 (every
    task's ratio at its first step: not trained at all), so a rare task is not down-weighted for being absent. Gradients are averaged over data-parallel ranks before the statistics.
    """

    lazy_buffers = ("sq_grad_sum",)

    def __init__(self, num_tasks: int, robust_step_size: float = 0.01, mode: str = "shared_params") -> None:
        super().__init__(num_tasks)
        if not float(robust_step_size) > 0:
            raise ConfigError(f"balancer.robust_step_size must be > 0, got {robust_step_size}.")
        self.eta, self.mode = float(robust_step_size), _check_mode(mode)
        self.requires = frozenset({self.mode})
        self.register_buffer("log_q", torch.full((self.num_tasks,), -math.log(self.num_tasks)))
        self.register_buffer("sq_grad_sum", torch.zeros(self.num_tasks, 0))
        self.register_buffer("initial_excess", torch.ones(self.num_tasks))
        self.register_buffer("last_ratio", torch.ones(self.num_tasks))
        self.register_buffer("excess_seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    def excess_risks(self, grads: Tensor, present: Tensor) -> Tensor:
        """``E_t = g_t^T H_t^{-1} g_t`` after adding this step's squared gradients to ``S`` (training only)."""
        sq = grads.pow(2)
        if self.sq_grad_sum.shape != sq.shape:
            self.sq_grad_sum = torch.zeros_like(sq)
        total = self.sq_grad_sum + torch.where(present[:, None], sq, torch.zeros_like(sq))
        self.sq_grad_sum.copy_(total)
        return (sq / torch.sqrt(total + 1e-7)).sum(dim=1)

    def compute_weights(self, values, known, ctx):
        if not self.training or not ctx["losses"].requires_grad:
            return self.log_q.exp()
        present = ctx["present"]
        excess = self.excess_risks(_task_gradients(self, ctx, self.mode), present)
        first = present & ~self.excess_seen
        self.initial_excess.copy_(torch.where(first, excess, self.initial_excess))
        self.excess_seen |= present
        ratio = torch.where(present, excess / self.initial_excess.clamp(min=1e-12), self.last_ratio)
        self.last_ratio.copy_(ratio)
        log_q = self.log_q + self.eta * ratio
        self.log_q.copy_(log_q - torch.logsumexp(log_q, dim=0))
        return self.log_q.exp()


class FAMO(Balancer):
    """``famo``: fast adaptive multitask optimization (Liu et al., NeurIPS 2023), from loss values only.

    Logits ``xi`` (initially 0), ``z = softmax(xi)``; FAMO back-propagates
    ``sum_t (z_t / c) log(L_t - L_t^min)`` with ``c = sum_s z_s / (L_s - L_s^min)`` held constant, whose
    gradient is ``sum_t w_t grad L_t`` with ``w_t = (z_t / D_t) / sum_s (z_s / D_s)``,
    ``D_t = max(L_t - L_t^min, 0) + 1e-8`` (the minimum-loss clamp). We apply those ``w`` (they sum to 1):
    the same gradient, our convention's scalar ``sum_t w_t L_t``.

    The logits move against the gradient of the softmax in the direction of the tasks' log-loss decrease,
    ``delta_t = log D_t(before) - log D_t(after)``: ``xi <- Adam(xi, J_softmax(xi)^T delta + gamma xi)``
    (the official code's Adam with weight decay ``gamma``), so tasks whose loss fell less gain weight.
    **Variant:** FAMO takes "after" on the same batch after the optimizer step (one extra forward pass);
    a balancer only sees each step's losses, so ``delta`` here is the change between consecutive steps
    (this step's batch against the previous step's). At step k the logits are updated with
    ``delta(k-1 -> k)`` before the weights of step k are computed, the order of FAMO's loop. It needs no
    extra forward pass, and carries the minibatch noise of two different batches.

    Args:
        lr: Adam's learning rate for ``xi`` (FAMO's 0.025).
        weight_decay: ``gamma``, the logits' decay (0.001, LibMTL's FAMO default).
        min_loss: ``L^min``, the lower bound of each loss (one number or T; FAMO's default 0).

    Absent tasks: a task's ``delta`` is measured only when it is present at both steps; a task without one
    takes the ``z``-weighted mean of the measured ``delta``, which leaves its logit in place (apart from the
    decay) and makes the update FAMO's restricted to the measured tasks. Weights of absent tasks use their
    last loss; a never-seen task gets weight 0. All state (logits, Adam's moments) is in buffers.
    """

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_loss: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__(num_tasks)
        if not float(lr) > 0:
            raise ConfigError(f"balancer.lr must be > 0, got {lr}.")
        if not float(weight_decay) >= 0:
            raise ConfigError(f"balancer.weight_decay must be >= 0, got {weight_decay}.")
        try:
            floor = (
                [float(min_loss)] * self.num_tasks
                if isinstance(min_loss, (int, float))
                else list(map(float, min_loss))
            )
            if len(floor) != self.num_tasks:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"balancer.min_loss must be one number or {self.num_tasks} numbers, got {min_loss!r}."
            ) from None
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.betas, self.adam_eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as in the official code
        self.register_buffer("min_loss", torch.tensor(floor))
        self.register_buffer("logits", torch.zeros(self.num_tasks))
        self.register_buffer("adam_m", torch.zeros(self.num_tasks))
        self.register_buffer("adam_v", torch.zeros(self.num_tasks))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_log_d", torch.zeros(self.num_tasks))
        self.register_buffer("prev_present", torch.zeros(self.num_tasks, dtype=torch.bool))

    def _adam_step(self, grad: Tensor) -> None:
        b1, b2 = self.betas
        grad = grad + self.weight_decay * self.logits
        self.adam_steps += 1
        n = int(self.adam_steps)
        self.adam_m.mul_(b1).add_((1 - b1) * grad)
        self.adam_v.mul_(b2).add_((1 - b2) * grad * grad)
        denom = (self.adam_v / (1 - b2**n)).sqrt() + self.adam_eps
        self.logits.sub_(self.lr * (self.adam_m / (1 - b1**n)) / denom)

    def compute_weights(self, values, known, ctx):
        present = ctx["present"]
        log_d = torch.log((values - self.min_loss).clamp(min=0) + _EPS)
        if self.training:
            measured = present & self.prev_present
            if bool(measured.any()):
                z = torch.softmax(self.logits, dim=0)
                delta = self.prev_log_d - log_d
                mean = (z * delta)[measured].sum() / z[measured].sum()
                delta = torch.where(measured, delta, mean)
                self._adam_step(z * (delta - (z * delta).sum()))  # J_softmax^T delta
            self.prev_log_d.copy_(torch.where(present, log_d, self.prev_log_d))
            self.prev_present.copy_(present)
        z = torch.softmax(self.logits, dim=0)
        w = torch.where(known, z / log_d.exp(), torch.zeros_like(z))
        if not bool(known.any()):
            return torch.full_like(values, 1.0 / self.num_tasks)
        return w / w.sum()


class DBMTL(Balancer):
    """``dbmtl``: dual-balancing multi-task learning (Lin et al. 2023, "Dual-Balancing Multi-Task Learning").

    *Loss-scale balancing:* every task loss enters as ``log(L_t + 1e-8)``. *Gradient-magnitude balancing:*
    an exponential moving average of each task's gradient of its log-loss,
    ``ghat_t <- beta_k ghat_t + (1 - beta_k) grad log L_t`` with ``beta_k = beta / k^beta_sigma`` (``k`` the
    task's count of steps; ``ghat`` starts at 0), and scales ``alpha_t = max_s ||ghat_s|| / ||ghat_t||`` that
    give every task the largest norm. DB-MTL updates the shared parameters with ``sum_t alpha_t ghat_t``.

    **Variant (one backward):** we back-propagate ``sum_t alpha_t log L_t``, i.e. weights
    ``w_t proportional to alpha_t / (L_t + 1e-8)``, renormalised to sum to 1 (our convention; the max-norm
    scale of ``alpha`` cancels): the moving average sets the magnitudes, the current batch the direction
    (DB-MTL applies the averaged gradients themselves, which needs the full per-task gradients of every
    shared parameter), and the task heads get the same weights as the shared layers.

    Args:
        beta: EMA factor of the gradients (LibMTL's default 0.9).
        beta_sigma: decay exponent of ``beta`` over steps (LibMTL's default 0: constant ``beta``).
        mode: ``shared_params`` (default; the gradients of the last shared layer's parameters) or
            ``features`` (of the shared representation, summed over the batch).

    Cost: as :class:`ExcessMTL` (``shared_params``: a batched backward through every task head; ``features``:
    about none under the loss-aggregation callback), and a ``T x P`` buffer. Absent tasks keep
    their average; a task with none yet gets weight 0. Gradients are averaged over data-parallel ranks.
    """

    lazy_buffers = ("grad_ema",)

    def __init__(
        self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, mode: str = "shared_params"
    ) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= float(beta) < 1.0:
            raise ConfigError(f"balancer.beta must be in [0, 1), got {beta}.")
        if not float(beta_sigma) >= 0:
            raise ConfigError(f"balancer.beta_sigma must be >= 0, got {beta_sigma}.")
        self.beta, self.beta_sigma, self.mode = float(beta), float(beta_sigma), _check_mode(mode)
        self.requires = frozenset({self.mode})
        self.register_buffer("grad_ema", torch.zeros(self.num_tasks, 0))
        self.register_buffer("grad_steps", torch.zeros(self.num_tasks, dtype=torch.long))

    def compute_weights(self, values, known, ctx):
        present = ctx["present"]
        if self.training and ctx["losses"].requires_grad:
            scale = values.clamp(min=0) + _EPS
            grads = _task_gradients(self, ctx, self.mode) / scale[:, None]  # grad log(L_t + eps)
            if self.grad_ema.shape != grads.shape:
                self.grad_ema = torch.zeros_like(grads)
            steps = self.grad_steps + present.long()
            beta = self.beta / steps.clamp(min=1).float().pow(self.beta_sigma)
            ema = beta[:, None] * self.grad_ema + (1 - beta[:, None]) * grads
            self.grad_ema.copy_(torch.where(present[:, None], ema, self.grad_ema))
            self.grad_steps.copy_(steps)
        has = self.grad_steps > 0
        if not bool(has.any()):
            return torch.full_like(values, 1.0 / self.num_tasks)
        norms = self.grad_ema.norm(dim=1)
        alpha = norms[has].max() / (norms + _EPS)
        w = torch.where(has, alpha / (values.clamp(min=0) + _EPS), torch.zeros_like(values))
        return w / w.sum()


class RLW(Balancer):
    """``rlw``: random loss weighting (Lin et al., TMLR 2022, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning").

    Fresh random weights every training step: ``w = softmax(lambda)``, ``lambda ~ N(0, I)`` (``normal``, the
    default of LibMTL and torchjd) or ``w ~ Dirichlet(concentration)`` (``dirichlet``; drawn as normalised
    ``Gamma(concentration, 1)`` variables; already on the simplex, so not softmaxed as in LibMTL). The draws
    come from a CPU ``torch.Generator`` seeded with ``seed`` whose state is a buffer, so a resumed run draws
    what the uninterrupted one would, every data-parallel rank draws the same weights, and CPU and GPU runs
    agree. Outside training (``eval()``) the weights are their expectation ``1/T`` and nothing is drawn.
    Absent tasks get their draw (the sequence does not depend on which tasks are present) and no gradient.
    """

    def __init__(
        self, num_tasks: int, distribution: str = "normal", concentration: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(num_tasks)
        if distribution not in ("normal", "dirichlet"):
            raise ConfigError(f"balancer.distribution must be 'normal' or 'dirichlet', got {distribution!r}.")
        if not float(concentration) > 0:
            raise ConfigError(f"balancer.concentration must be > 0, got {concentration}.")
        self.distribution, self.concentration = distribution, float(concentration)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
        self.register_buffer("rng_state", generator.get_state())

    def compute_weights(self, values, known, ctx):
        if not self.training:
            return torch.full_like(values, 1.0 / self.num_tasks)
        generator = torch.Generator(device="cpu")
        generator.set_state(self.rng_state.cpu())
        if self.distribution == "normal":
            w = torch.softmax(torch.randn(self.num_tasks, generator=generator), dim=0)
        else:
            gamma = torch._standard_gamma(
                torch.full((self.num_tasks,), self.concentration), generator=generator
            )
            w = gamma / gamma.sum()
        self.rng_state.copy_(generator.get_state())
        return w.to(values)


class GLS(Balancer):
    """``gls``: geometric loss strategy (Chennupati et al., CVPR Workshops 2019, MultiNet++).

    GLS minimises the geometric mean ``G = (prod_t L_t)^(1/T)``, whose gradient is
    ``sum_t (G / (T L_t)) grad L_t``: weights proportional to ``1 / L_t``. We apply that direction with
    our convention's scale, ``w_t = (1 / L_t) / sum_s (1 / L_s)`` (as for ``stch``); the scalar
    ``sum_t w_t L_t`` is then the harmonic mean ``H`` of the losses, and GLS's own gradient is ``G / H >= 1``
    times ours (equal when the losses are equal). The direction is also that of the mean log-loss
    ``(1/T) sum_t log L_t`` (DB-MTL's loss-scale balancing). Absent tasks use their last loss; a task never
    seen gets weight 0; losses are clamped at 1e-8.
    """

    def compute_weights(self, values, known, ctx):
        if not bool(known.any()):
            return torch.full_like(values, 1.0 / self.num_tasks)
        inverse = torch.where(known, 1.0 / values.clamp(min=_EPS), torch.zeros_like(values))
        return inverse / inverse.sum()
