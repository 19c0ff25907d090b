"""Downstream adaptation in the convex setting (section 5): for each downstream task ``lambda``, ERM by
gradient descent on N samples, started from the pre-trained parameter.

Each task reports its initial excess risk ``R_lambda(theta_0) - min R_lambda`` and its excess risk after
adaptation with N samples (``excess_risk@N``), averaged over ``repeats`` draws of the samples. The
primary metric is ``excess_risk`` at ``primary_n`` samples (lower is better); the summary in
results.json gives the worst case and the average over tasks of every metric, i.e. the curves of
worst-case and average downstream excess risk against N.

Each task also reports its empirical sample complexity ``sample_complexity`` = ``N_lambda(theta_0, eps,
delta)`` of Theorem 5.4: the smallest N of ``sample_sizes`` from which on (at that N and every larger one)
the excess risk is at most ``eps`` for at least a fraction ``1 - delta`` of the ``repeats`` draws. When no N
of the grid qualifies it is recorded as twice the largest N (a lower bound; ``sample_complexity_censored``
is then 1). The summary's worst case of it is the worst-case sample complexity ``max_lambda N_lambda``
over the downstream tasks. Every further value of ``eps_extra`` adds ``sample_complexity@eps=<value>`` from the
same draws (how the sample complexity depends on the choice of eps).
"""

from __future__ import annotations

from pathlib import Path

import torch

from data.convex import RegressionTasks
from finetune.protocol import DownstreamSuite
from utils.errors import ConfigError


class ConvexDownstream(DownstreamSuite):
    """Downstream tasks: the T simplex vertices (if ``include_vertices``) and ``num_random`` Dirichlet(1)
    mixtures ``lambda``, fixed by ``seed``.

    Args:
        sample_sizes: the N values of the curve (and the grid of the sample complexity).
        primary_n: N of the primary metric (must be in ``sample_sizes``).
        steps: gradient-descent steps of the downstream ERM (a fixed budget, so the start matters), or
            ``None``: gradient descent run to convergence, i.e. its limit in closed form, the minimiser of the
            empirical risk nearest theta_0 (the only one when the empirical risk is strongly convex).
        step_size: GD step as a fraction of ``1 / L`` (``L`` the smoothness of the empirical risk), in (0, 1].
        repeats: independent sample draws per (task, N): averaged for ``excess_risk@N``, counted for the
            sample complexity.
        eps, delta: the target excess risk and the failure probability of the sample complexity.
        eps_extra: further target excess risks, each reported as ``sample_complexity@eps=<value>``.
    """

    def __init__(
        self,
        sample_sizes: list[int] = (8, 32, 128, 512),
        primary_n: int = 32,
        steps: int | None = 10,
        step_size: float = 1.0,
        repeats: int = 20,
        num_random: int = 4,
        include_vertices: bool = True,
        eps: float = 0.5,
        delta: float = 0.1,
        eps_extra: list[float] = (),
        seed: int = 0,
    ) -> None:
        self.sample_sizes = [int(n) for n in sample_sizes]
        if self.sample_sizes != sorted(set(self.sample_sizes)) or self.sample_sizes[0] < 1:
            raise ConfigError(
                f"downstream.sample_sizes must be increasing positive integers, got {self.sample_sizes}."
            )
        if int(primary_n) not in self.sample_sizes:
            raise ConfigError(
                f"downstream.primary_n={primary_n} must be one of downstream.sample_sizes {self.sample_sizes}."
            )
        if not 0 < float(step_size) <= 1:
            raise ConfigError(f"downstream.step_size must be in (0, 1], got {step_size}.")
        if (steps is not None and int(steps) < 0) or int(repeats) < 1:
            raise ConfigError(
                "downstream.steps must be >= 0 (or null: to convergence) and downstream.repeats >= 1."
            )
        if not all(float(e) > 0 for e in [eps, *eps_extra]) or not 0 <= float(delta) < 1:
            raise ConfigError(
                f"downstream.eps must be > 0 and downstream.delta in [0, 1), got {eps}, {delta}."
            )
        self.primary_n, self.step_size = int(primary_n), float(step_size)
        self.steps = None if steps is None else int(steps)
        self.repeats = int(repeats)
        self.num_random, self.include_vertices, self.seed = int(num_random), bool(include_vertices), int(seed)
        self.eps, self.delta = float(eps), float(delta)
        self.eps_extra = [float(e) for e in eps_extra]

    def lambdas(self, num_tasks: int) -> dict[str, torch.Tensor]:
        out = {}
        if self.include_vertices:
            for t in range(num_tasks):
                out[f"vertex{t}"] = torch.eye(num_tasks)[t]
        g = torch.Generator().manual_seed(self.seed + 17)
        for i in range(self.num_random):
            e = -torch.log(torch.rand(num_tasks, generator=g))
            out[f"mix{i}"] = e / e.sum()
        if not out:
            raise ConfigError("downstream: no tasks (include_vertices=false and num_random=0).")
        return out

    def erm_excess(
        self, tasks, lam: torch.Tensor, theta0: torch.Tensor, n: int, gen: torch.Generator
    ) -> float:
        """Excess risk after the downstream ERM on ``n`` samples from ``theta0``, mean over the draws."""
        return _mean(self.erm_excess_draws(tasks, lam, theta0, n, gen))

    def erm_excess_draws(
        self, tasks, lam: torch.Tensor, theta0: torch.Tensor, n: int, gen: torch.Generator
    ) -> list[float]:
        """Excess risk after the downstream ERM on ``n`` samples from ``theta0``, one per draw."""
        _, best = tasks.mixture_optimum(lam)
        if isinstance(tasks, RegressionTasks):
            return [
                float((lam * tasks.risks(self._least_squares_erm(tasks, lam, theta0, n, gen))).sum() - best)
                for _ in range(self.repeats)
            ]
        A = torch.einsum("t,tij->ij", lam, tasks.A)
        smooth = float(torch.linalg.eigvalsh(A).max())
        out = []
        for _ in range(self.repeats):
            zbar = tasks.sigma * torch.randn(n, tasks.num_tasks, tasks.dim, generator=gen).mean(0)
            if self.steps is None:  # the unique minimiser: sum_t lam_t B_t^T (B_t (theta - c_t) + zbar_t) = 0
                b = torch.einsum(
                    "t,tji,tj->i", lam, tasks.B, torch.einsum("tij,tj->ti", tasks.B, tasks.c) - zbar
                )
                theta = torch.linalg.solve(A, b)
            else:
                theta = theta0.clone()
                for _ in range(self.steps):
                    r = tasks.residual(theta)  # (T, d)
                    # grad of sum_t lam_t [0.5 |B_t(theta-c_t)|^2 + zbar_t^T B_t (theta - c_t)]
                    grad = torch.einsum("t,tji,tj->i", lam, tasks.B, r + zbar)
                    theta = theta - (self.step_size / smooth) * grad
            out.append(float((lam * tasks.risks(theta)).sum() - best))
        return out

    def _least_squares_erm(self, tasks, lam, theta0, n: int, gen: torch.Generator) -> torch.Tensor:
        """GD on ``(1/2n) ||X theta - y||^2`` from ``theta0``. GD moves theta0 only within the row space of X,
        so its limit (``steps=None``) is ``theta0 + X^+ (y - X theta0)``: the minimiser nearest theta0 (eqs.
        11-12: it stays in a ball around the minimisers whose radius is set by theta0)."""
        z = torch.randn(n, tasks.dim + 1, generator=gen, dtype=theta0.dtype)
        X, y = tasks.least_squares(lam, z)
        if self.steps is None:
            return theta0 + torch.linalg.pinv(X) @ (y - X @ theta0)
        smooth = float(torch.linalg.eigvalsh(X.T @ X / n).max())
        theta = theta0.clone()
        for _ in range(self.steps):
            theta = theta - (self.step_size / smooth) * (X.T @ (X @ theta - y) / n)
        return theta

    def sample_complexity(self, draws: dict[int, list[float]], eps: float | None = None) -> tuple[int, bool]:
        """``N_lambda(theta_0, eps, delta)`` on the grid from the per-draw excess risks at each N: the smallest
        N from which on a fraction >= 1 - delta of the draws has excess risk <= eps; (that N, True), or
        (2 x the largest N, False) when none qualifies. ``eps``: default ``self.eps``."""
        eps = self.eps if eps is None else eps
        found = None
        for n in reversed(self.sample_sizes):
            ok = sum(x <= eps for x in draws[n]) >= (1 - self.delta) * len(draws[n]) - 1e-9
            if not ok:
                break
            found = n
        if found is None:
            return 2 * self.sample_sizes[-1], False
        return found, True

    def evaluate(self, tasks, theta0: torch.Tensor) -> dict:
        """Every downstream task's metrics from the pre-trained ``theta0`` (float64), as ``run`` reports them."""
        tasks64 = tasks.to(torch.float64)
        theta0 = theta0.double()
        gen = torch.Generator().manual_seed(self.seed + 31)
        results = {}
        for name, lam in self.lambdas(tasks.num_tasks).items():
            lam = lam.double()
            _, best = tasks64.mixture_optimum(lam)
            metrics = {"initial_risk": float((lam * tasks64.risks(theta0)).sum() - best)}
            draws = {}
            for n in self.sample_sizes:
                draws[n] = self.erm_excess_draws(tasks64, lam, theta0, n, gen)
                metrics[f"excess_risk@N={n}"] = _mean(draws[n])
            metrics["excess_risk"] = metrics[f"excess_risk@N={self.primary_n}"]
            n_eps, reached = self.sample_complexity(draws)
            metrics["sample_complexity"] = float(n_eps)
            metrics["sample_complexity_censored"] = 0.0 if reached else 1.0
            for eps in self.eps_extra:
                metrics[f"sample_complexity@eps={eps:g}"] = float(self.sample_complexity(draws, eps)[0])
            results[name] = {"metrics": metrics, "primary": "excess_risk", "higher_is_better": False}
        return results

    def run(self, pretrained, make_trainer, out_dir: Path) -> dict:
        tasks = pretrained.tasks
        theta0 = pretrained.pretrained_theta().double()
        results = self.evaluate(tasks, theta0)
        upstream = tasks.to(torch.float64).risks(theta0)
        self.extra_results = {
            "pretrained": {
                "upstream_risks": [float(x) for x in upstream],
                "worst_upstream_risk": float(upstream.max()),
            },
            "downstream_settings": {
                "steps": self.steps,
                "primary_n": self.primary_n,
                "sample_sizes": self.sample_sizes,
                "eps": self.eps,
                "eps_extra": self.eps_extra,
                "delta": self.delta,
                "draws": self.repeats,
                "censored_as": 2 * self.sample_sizes[-1],
            },
            # the by_metric columns the sweep report tabulates with paired intervals (runner/report.py)
            "report_metrics": [
                "initial_risk",
                "sample_complexity",
                *(f"sample_complexity@eps={eps:g}" for eps in self.eps_extra),
                *(f"excess_risk@N={n}" for n in self.sample_sizes),
            ],
        }
        return results


def _mean(values: list[float]) -> float:
    """Left-to-right sum over the count (not ``sum()``, whose compensated float sum since Python 3.12 would
    change the full-rank numbers in their last bits)."""
    total = 0.0
    for v in values:
        total += v
    return total / len(values)
