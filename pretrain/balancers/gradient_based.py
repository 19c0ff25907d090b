"""Balancers that need per-task gradients: ``gradnorm``, the ``torchjd`` aggregators (``mgda``, ``pcgrad``,
``upgrad``, ...), ``excessmtl``, ``dbmtl``; and the helpers that take those gradients w.r.t. the shared
parameters or the shared representation (conventions: ``pretrain.balancers``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pretrain.balancers.base import _EPS, Balancer, StepInputs
from utils.errors import ConfigError


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
FEATURE_NORMS = ("rows", "batch_sum")


def _gradient_inputs(inputs: StepInputs, mode: str) -> list[Tensor]:
    """The tensors per-task gradients are taken with respect to, for ``mode`` (see :class:`GradientAggregator`):
    ``inputs.shared_params`` or ``inputs.features``."""
    wrt = inputs.features if mode == "features" else inputs.shared_params
    if wrt is None or (isinstance(wrt, (list, tuple)) and not wrt):
        raise ConfigError(
            f"balancer.mode={mode!r} needs the training module to pass `{mode}` to the "
            "loss aggregation; this experiment does not."
        )
    if isinstance(wrt, Tensor):
        return [wrt]
    return [p for p in wrt if p.requires_grad]


def _jacobian(inputs: StepInputs, mode: str) -> Tensor:
    """``(T, P)`` fp32 rank-local per-task gradients ``grad L_t`` (zeros for absent tasks).

    ``features`` mode: the caller's ``feature_grads`` (flattened) when it passed them, else a batched backward
    of the T losses to ``features``; ``shared_params`` mode: a batched backward to those parameters.
    """
    grads = inputs.feature_grads if mode == "features" else None
    if grads is None:
        return _per_task_grads(inputs.losses, inputs.present, _gradient_inputs(inputs, mode)).detach()
    num_tasks = inputs.losses.numel()
    if grads.shape[0] != num_tasks:
        raise ValueError(
            f"feature_grads: expected {num_tasks} rows (one per task), got shape {tuple(grads.shape)}"
        )
    jac = grads.detach().reshape(num_tasks, -1).float()
    return torch.where(inputs.present[:, None], jac, torch.zeros_like(jac))


def _feature_width(inputs: StepInputs) -> int:
    """D, the width of the shared representation (its last dimension)."""
    grads = inputs.feature_grads
    return (grads if grads is not None else _gradient_inputs(inputs, "features")[0]).shape[-1]


def _gramian(balancer: Balancer, jac: Tensor, mode: str) -> Tensor:
    """The ``T x T`` Gramian ``J J^T`` of the rank-local Jacobian ``jac``, reduced over data-parallel ranks.

    ``features``: each rank holds the gradients of its local losses (``world x`` its share of the global mean,
    see ``pretrain.aggregation``) w.r.t. its own rows of the representation, so the Gramian of the global
    losses is the sum of the ranks' Gramians over ``world^2``: their mean over ``world``. ``shared_params``: the
    mean of the ranks' Gramians (not the Gramian of their mean gradient).
    """
    gramian = balancer.reduce(jac @ jac.T)
    return gramian / balancer.world_size if mode == "features" else gramian


def _task_gradients(balancer: Balancer, inputs: StepInputs, mode: str) -> Tensor:
    """``(T, P)`` fp32 per-task gradients ``grad L_t`` (zeros for absent tasks), averaged over data-parallel
    ranks, for the balancers that keep per-coordinate statistics of them across steps (ExcessMTL, DB-MTL).

    ``shared_params``: w.r.t. the parameters of the last shared layer (P = their size). ``features``: w.r.t. the
    shared representation, summed over every leading (batch, position) dimension, so P is the representation's
    width and the rows are comparable across batches (LibMTL's treatment of representation gradients).
    """
    grads = _jacobian(inputs, mode)
    if mode == "features":
        grads = grads.reshape(grads.shape[0], -1, _feature_width(inputs)).sum(dim=1)
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

    ``feature_norm`` (``features`` mode only) says which norm of the ``(N, D)`` matrix ``g_t = grad_h L_t`` is
    ``||grad L_t||``, ``N`` the rows of ``h`` (every leading batch/position dimension flattened):

    * ``rows`` (default): the Frobenius norm over the rows, ``sqrt(sum_n ||g_t[n]||^2)``, the norm of the
      whole gradient w.r.t. ``h`` (the diagonal of the Gramian :class:`GradientAggregator` uses). It is the
      paper's norm ``||grad_W L_t||`` when the inputs of the rows to ``W`` are orthonormal; gradients of
      different rows never cancel.
    * ``batch_sum``: the norm of the gradient summed over the rows, ``||sum_n g_t[n]||`` (LibMTL's GradNorm
      with ``rep_grad``, which sums over the batch dimension; on a ``(B, L, D)`` representation LibMTL keeps
      the ``L`` positions apart, we sum them too, as :class:`ExcessMTL` / :class:`DBMTL` do). It is the
      paper's norm when every row's input to ``W`` is the same unit vector; rows pulling ``h`` in opposite
      directions cancel.

    ``rows`` stays the default: it is what earlier runs used and it keeps GradNorm's norms consistent with
    the aggregators' Gramian. Rank-local gradients are reduced over data-parallel ranks before the norms, so
    the norms are those of the global losses' gradients.
    """

    def __init__(
        self,
        num_tasks: int,
        asymmetry: float = 1.5,
        lr: float | None = 0.025,
        mode: str = "features",
        feature_norm: str = "rows",
    ) -> None:
        super().__init__(num_tasks)
        if feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"balancer.feature_norm must be 'rows' or 'batch_sum', got {feature_norm!r}.")
        if feature_norm != "rows" and mode != "features":
            raise ConfigError(
                f"balancer.feature_norm={feature_norm!r} applies to balancer.mode=features only; with "
                f"mode={mode!r} leave it at 'rows'."
            )
        if not float(asymmetry) >= 0:
            raise ConfigError(f"balancer.asymmetry must be >= 0, got {asymmetry}.")
        if lr is not None and not float(lr) > 0:
            raise ConfigError(f"balancer.lr must be > 0 (or null for the optimizer's), got {lr}.")
        self.mode, self.feature_norm = _check_mode(mode), feature_norm
        self.requires = frozenset({self.mode})
        self.asymmetry = float(asymmetry)
        self.param_lr = None if lr is None else float(lr)
        self.logits = nn.Parameter(torch.zeros(self.num_tasks))
        self.register_buffer("initial_loss", torch.ones(self.num_tasks))
        self.register_buffer("initial_seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    def compute_weights(self, values, known, inputs):
        if self.training:
            with torch.no_grad():
                first = inputs.present & ~self.initial_seen
                self.initial_loss.copy_(torch.where(first, values.clamp(min=1e-12), self.initial_loss))
                self.initial_seen |= inputs.present
        return torch.softmax(self.logits.detach(), dim=0)

    def objective(self, losses, weights, present, inputs):
        loss = (weights.to(losses.dtype) * losses).sum()
        if not self.training or not losses.requires_grad or not bool(present.any()):
            return loss
        if self.mode == "shared_params":  # the same W on every rank: average the gradients, then the norms
            norms = self.reduce(_jacobian(inputs, self.mode)).norm(dim=1)
        elif self.feature_norm == "rows":  # each rank holds its own rows of h: reduce the squared norms
            norms = _gramian(self, _jacobian(inputs, self.mode), self.mode).diagonal().clamp(min=0).sqrt()
        else:  # the rank-mean of the ranks' row sums is the row sum of the global gradient
            norms = _task_gradients(self, inputs, self.mode).norm(dim=1)
        w = torch.softmax(self.logits, dim=0)
        g = w * norms
        with torch.no_grad():
            ratio = losses.detach().float() / self.initial_loss
            ratio = ratio / ratio[present].mean()
            target = g[present].mean() * ratio.pow(self.asymmetry)
        update = torch.where(present, (g - target).abs(), torch.zeros_like(g)).sum()
        return loss + update.to(loss.dtype)


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

    The weights come from torchjd's ``UPGradWeighting`` / ``PCGradWeighting`` (MGDA: see below) on that
    Gramian, renormalised to sum to 1 (our convention; the direction is torchjd's). The model then gets
    the gradient of ``sum_t w_t L_t``, whose shared-parameter gradient is ``J^T w``. Gramians are reduced
    over data-parallel ranks before the weighting, so every rank applies identical weights. The weighting
    runs on the CPU in float64 (a T x T problem: one copy instead of a device sync per solver iteration).

    ``mgda``: the min-norm point ``argmin_w w^T G w = ||J^T w||^2`` over the simplex (``w >= 0``, ``sum w = 1``).
    ``solver`` (``mgda`` only):

    * ``qp`` (default): the exact solution of that quadratic programme, by quadprog's active-set solver
      (through qpsolvers, both installed with torchjd's ``quadprog-projector`` extra, which ``upgrad`` uses);
      on 9-task Gramians of 100k-dimensional gradients it is within ~2e-8 of scipy's SLSQP, in ~0.05 ms.
    * ``frank_wolfe``: torchjd's ``MGDAWeighting`` (Sener & Koltun 2018, Algorithm 2), which stops when its
      line-search step falls below ``epsilon`` or after ``max_iters`` iterations. Frank-Wolfe converges
      sublinearly: torchjd's defaults (``1e-3``, 100) leave the weights up to ~1e-2 off the exact solution;
      ``epsilon=1e-6``, ``max_iters=3000`` stay within ~3e-4 on such Gramians, at ~13x the mean time of a
      weight computation, Gramian included (the rare ill-conditioned case runs all 3000 iterations, ~0.3 s on a
      CPU); ``qp`` takes 0.76x the time of torchjd's default there. A vertex solution (``G_ii <= G_ij`` for
      every ``j``) is returned without iterating (torchjd's loop would run all ``max_iters`` there: its step
      is then 1, never small).
    """

    def __init__(
        self,
        num_tasks: int,
        method: str = "upgrad",
        mode: str = "features",
        solver: str | None = None,
        epsilon: float | None = None,
        max_iters: int | None = None,
    ) -> None:
        super().__init__(num_tasks)
        from torchjd import aggregation

        if method != "mgda" and (solver, epsilon, max_iters) != (None, None, None):
            raise ConfigError(
                f"balancer.solver, balancer.epsilon and balancer.max_iters set MGDA's solver; "
                f"balancer.method={method!r} takes none of them (leave them null)."
            )
        weightings = {
            "upgrad": aggregation.UPGradWeighting,
            "mgda": lambda: _mgda_weighting(solver, epsilon, max_iters),
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

    def compute_weights(self, values, known, inputs):
        losses, present = inputs.losses, inputs.present
        if not self.training or not losses.requires_grad:
            return torch.full_like(values, 1.0 / self.num_tasks)
        gramian = _gramian(self, _jacobian(inputs, self.mode), self.mode)
        idx = present.nonzero().flatten()
        weights = torch.zeros_like(values)
        if idx.numel() == 0:
            return weights
        sub = gramian[idx][:, idx].double().cpu()
        frank_wolfe = self.method == "mgda" and not isinstance(self.weighting, SimplexMinNorm)
        w = _min_norm_vertex(sub) if frank_wolfe else None
        w = (self.weighting(sub) if w is None else w).to(weights)
        weights[idx] = w / w.sum().clamp(min=1e-12) if float(w.sum()) > 0 else 1.0 / idx.numel()
        return weights


MGDA_SOLVERS = ("qp", "frank_wolfe")


def _mgda_weighting(solver: str | None, epsilon: float | None, max_iters: int | None) -> nn.Module:
    """MGDA's weighting for ``balancer.solver`` (see :class:`GradientAggregator`)."""
    solver = "qp" if solver is None else solver
    if solver not in MGDA_SOLVERS:
        raise ConfigError(f"balancer.solver must be 'qp' or 'frank_wolfe', got {solver!r}.")
    if solver == "qp":
        if (epsilon, max_iters) != (None, None):
            raise ConfigError(
                "balancer.epsilon and balancer.max_iters apply to balancer.solver=frank_wolfe only; "
                "solver=qp is exact (leave them null)."
            )
        return SimplexMinNorm()
    from torchjd.aggregation import MGDAWeighting

    for key, value in (("epsilon", epsilon), ("max_iters", max_iters)):
        if value is not None and not float(value) > 0:
            raise ConfigError(f"balancer.{key} must be > 0 (or null for torchjd's default), got {value}.")
    return MGDAWeighting(
        epsilon=1e-3 if epsilon is None else float(epsilon),
        max_iters=100 if max_iters is None else int(max_iters),
    )


class SimplexMinNorm(nn.Module):
    """MGDA's exact weights: ``argmin_w w^T G w`` subject to ``w >= 0``, ``sum_t w_t = 1``, for a PSD Gramian
    ``G``, by quadprog (via qpsolvers) on ``G`` scaled to a unit largest diagonal plus ``1e-10 I`` (the
    solver needs a positive-definite matrix; the shift moves the weights by ~1e-10). Uniform weights if
    every gradient is zero."""

    def forward(self, gramian: Tensor) -> Tensor:
        import numpy as np
        from qpsolvers import solve_qp

        num = gramian.shape[0]
        scale = float(gramian.diagonal().max())
        if not scale > 0:
            return torch.full((num,), 1.0 / num, dtype=gramian.dtype, device=gramian.device)
        matrix = (gramian / scale).detach().cpu().double().numpy() + 1e-10 * np.eye(num)
        w = solve_qp(
            matrix, np.zeros(num), A=np.ones((1, num)), b=np.ones(1), lb=np.zeros(num), solver="quadprog"
        )
        if w is None:
            raise ValueError(f"MGDA: quadprog found no min-norm weights for the Gramian {gramian.tolist()}.")
        return torch.from_numpy(w).to(gramian).clamp(min=0)


def _min_norm_vertex(gramian: Tensor) -> Tensor | None:
    """``e_i`` if the vertex ``e_i`` of the simplex minimises ``w^T G w`` there (the Frank-Wolfe gap
    ``G_ii - min_j G_ij`` is 0: ``G_ii <= G_ij`` for every ``j``), else None."""
    hits = (gramian >= gramian.diagonal()[:, None]).all(dim=1).nonzero().flatten()
    if hits.numel() == 0:
        return None
    return torch.nn.functional.one_hot(hits[0], gramian.shape[0]).to(gramian)


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

    def compute_weights(self, values, known, inputs):
        if not self.training or not inputs.losses.requires_grad:
            return self.log_q.exp()
        present = inputs.present
        excess = self.excess_risks(_task_gradients(self, inputs, self.mode), present)
        first = present & ~self.excess_seen
        self.initial_excess.copy_(torch.where(first, excess, self.initial_excess))
        self.excess_seen |= present
        ratio = torch.where(present, excess / self.initial_excess.clamp(min=1e-12), self.last_ratio)
        self.last_ratio.copy_(ratio)
        log_q = self.log_q + self.eta * ratio
        self.log_q.copy_(log_q - torch.logsumexp(log_q, dim=0))
        return self.log_q.exp()


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

    def compute_weights(self, values, known, inputs):
        present = inputs.present
        if self.training and inputs.losses.requires_grad:
            scale = values.clamp(min=0) + _EPS
            grads = _task_gradients(self, inputs, self.mode) / scale[:, None]  # grad log(L_t + eps)
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
