"""Downstream adaptation in the convex setting (section 5): for each downstream task ``lambda``, ERM by
gradient descent on N samples, started from the pre-trained parameter.

Each task reports its initial excess risk ``R_lambda(theta_0) - min R_lambda`` and its excess risk after
adaptation with N samples (``excess_risk@N``), averaged over ``repeats`` draws of the samples. The
primary metric is ``excess_risk`` at ``primary_n`` samples (lower is better); the summary in
results.json gives the worst case and the average over tasks of every metric, i.e. the curves of
worst-case and average downstream excess risk against N.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utils.errors import ConfigError


class ConvexDownstream:
    """Downstream tasks: the T simplex vertices (if ``include_vertices``) and ``num_random`` Dirichlet(1)
    mixtures ``lambda``, fixed by ``seed``.

    Args:
        sample_sizes: the N values of the curve.
        primary_n: N of the primary metric (must be in ``sample_sizes``).
        steps: gradient-descent steps of the downstream ERM (a fixed budget, so the start matters).
        step_size: GD step as a fraction of ``1 / L_lambda`` (``L_lambda`` the smoothness), in (0, 1].
        repeats: independent sample draws averaged per (task, N).
    """

    def __init__(
        self,
        sample_sizes: list[int] = (8, 32, 128, 512),
        primary_n: int = 32,
        steps: int = 10,
        step_size: float = 1.0,
        repeats: int = 20,
        num_random: int = 4,
        include_vertices: bool = True,
        seed: int = 0,
        smoke: bool = False,
    ) -> None:
        self.sample_sizes = [int(n) for n in sample_sizes]
        if int(primary_n) not in self.sample_sizes:
            raise ConfigError(
                f"downstream.primary_n={primary_n} must be one of downstream.sample_sizes {self.sample_sizes}."
            )
        if not 0 < float(step_size) <= 1:
            raise ConfigError(f"downstream.step_size must be in (0, 1], got {step_size}.")
        if int(steps) < 0 or int(repeats) < 1:
            raise ConfigError("downstream.steps must be >= 0 and downstream.repeats >= 1.")
        self.primary_n, self.steps, self.step_size = int(primary_n), int(steps), float(step_size)
        self.repeats = 2 if smoke else int(repeats)
        self.num_random, self.include_vertices, self.seed = int(num_random), bool(include_vertices), int(seed)

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
        """Excess risk after ``steps`` GD steps on the empirical risk of ``n`` samples, from ``theta0``."""
        A = torch.einsum("t,tij->ij", lam, tasks.A)
        smooth = float(torch.linalg.eigvalsh(A).max())
        _, best = tasks.mixture_optimum(lam)
        total = 0.0
        for _ in range(self.repeats):
            zbar = tasks.sigma * torch.randn(n, tasks.num_tasks, tasks.dim, generator=gen).mean(0)
            theta = theta0.clone()
            for _ in range(self.steps):
                r = tasks.residual(theta)  # (T, d)
                # grad of sum_t lam_t [0.5 |B_t(theta-c_t)|^2 + zbar_t^T B_t (theta - c_t)]
                grad = torch.einsum("t,tji,tj->i", lam, tasks.B, r + zbar)
                theta = theta - (self.step_size / smooth) * grad
            total += float((lam * tasks.risks(theta)).sum() - best)
        return total / self.repeats

    def run(self, pretrained, make_trainer, out_dir: Path) -> dict:
        tasks = pretrained.tasks
        theta0 = pretrained.pretrained_theta().double()
        tasks64 = type(tasks)(B=tasks.B.double(), c=tasks.c.double(), sigma=tasks.sigma)
        gen = torch.Generator().manual_seed(self.seed + 31)
        results = {}
        for name, lam in self.lambdas(tasks.num_tasks).items():
            lam = lam.double()
            _, best = tasks64.mixture_optimum(lam)
            metrics = {"initial_risk": float((lam * tasks64.risks(theta0)).sum() - best)}
            for n in self.sample_sizes:
                metrics[f"excess_risk@N={n}"] = self.erm_excess(tasks64, lam, theta0, n, gen)
            metrics["excess_risk"] = metrics[f"excess_risk@N={self.primary_n}"]
            results[name] = {"metrics": metrics, "primary": "excess_risk", "higher_is_better": False}
        upstream = tasks64.risks(theta0)
        self.extra_results = {
            "pretrained": {
                "upstream_risks": [float(x) for x in upstream],
                "worst_upstream_risk": float(upstream.max()),
            }
        }
        return results
