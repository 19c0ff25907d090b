"""Baselines whose weights come from the loss values alone: ``uncertainty``, ``dwa``, ``stch``, ``famo``,
``rlw``, ``gls`` (conventions: ``pretrain.balancers``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pretrain.balancers.base import _EPS, Balancer
from utils.errors import ConfigError


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

    def compute_weights(self, values, known, inputs):
        return torch.exp(-self.log_var.detach()) / self.num_tasks

    def objective(self, losses, weights, present, inputs):
        s = self.log_var.to(losses.dtype)
        terms = torch.exp(-s) * losses + s
        return torch.where(present, terms, torch.zeros_like(terms)).sum() / self.num_tasks


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

    def compute_weights(self, values, known, inputs):
        if int(self.epochs_done) < 2:
            weights = torch.full_like(values, 1.0 / self.num_tasks)
        else:
            ratio = (self.history[1] / self.history[0].clamp(min=1e-12)).float()
            weights = torch.softmax(ratio / self.temperature, dim=0)
        if self.training:
            present = inputs.present
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

    def compute_weights(self, values, known, inputs):
        if self.k < self.warmup:
            if self.training:
                present = inputs.present
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

    def compute_weights(self, values, known, inputs):
        present = inputs.present
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

    def compute_weights(self, values, known, inputs):
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

    def compute_weights(self, values, known, inputs):
        if not bool(known.any()):
            return torch.full_like(values, 1.0 / self.num_tasks)
        inverse = torch.where(known, 1.0 / values.clamp(min=_EPS), torch.zeros_like(values))
        return inverse / inverse.sum()
