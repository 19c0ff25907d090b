"""Section 5 of the paper as tests: Proposition 5.1, Remark 5.2 and Theorem 3.1."""

import math

import pytest
import torch
from conftest import run_pipeline

from data.convex import make_tasks
from pretrain.balancers import Minimax, NoBalancing


@pytest.mark.parametrize("seed", [0, 1])
def test_proposition_5_1_minimax_has_lower_worst_case_downstream_initial_risk(tmp_path, seed):
    """Through the whole Hydra/Lightning/callback path: pre-train with `none` and with `minimax`, then
    compare the worst-case (over the downstream tasks lambda) initial risk."""
    common = [
        "experiment=convex",
        "logger=none",
        f"seed={seed}",
        "trainer.max_steps=600",
        "downstream.repeats=4",
    ]
    avg = run_pipeline([*common, "balancer=none"], tmp_path / "none")
    mmx = run_pipeline([*common, "balancer=minimax", "balancer.alpha=2.0"], tmp_path / "minimax")
    worst_avg = avg["summary"]["by_metric"]["initial_risk"]["worst"]
    worst_mmx = mmx["summary"]["by_metric"]["initial_risk"]["worst"]
    assert worst_mmx < worst_avg
    # the worst downstream task is a vertex: its initial risk is the worst upstream risk
    assert worst_mmx == pytest.approx(mmx["pretrained"]["worst_upstream_risk"], rel=1e-4)
    # and the average of the upstream risks is what `none` minimises
    assert sum(avg["pretrained"]["upstream_risks"]) < sum(mmx["pretrained"]["upstream_risks"])
    assert (tmp_path / "minimax" / "results.json").exists()


def algorithm_1(tasks, balancer, steps: int, lr: float, theta0: torch.Tensor, loss_fn=None, tail: int = 0):
    """Algorithm 1 with exact expected risks; returns the average of the iterates theta_0..theta_{K-1}
    (of the last ``tail`` iterates if ``tail`` > 0)."""
    theta = theta0.clone().requires_grad_(True)
    avg = torch.zeros_like(theta0)
    n_avg = tail or steps
    for k in range(steps):
        if k >= steps - n_avg:
            avg += theta.detach() / n_avg
        losses = loss_fn(theta) if loss_fn else tasks.risks(theta)
        (grad,) = torch.autograd.grad(balancer(losses).loss, theta)
        with torch.no_grad():
            theta -= lr * grad
    return avg


def test_remark_5_2_ratio_of_worst_case_risks_grows_linearly_in_T():
    ratios = {}
    for T in (2, 4, 8, 16):
        tasks = make_tasks("remark52", num_tasks=T, dim=1, sigma=0.0)
        theta0 = torch.zeros(1, dtype=torch.float64)
        tasks = type(tasks)(B=tasks.B.double(), c=tasks.c.double(), sigma=0.0)
        avg = algorithm_1(tasks, NoBalancing(T), 3000, 0.5, theta0)
        mmx = algorithm_1(tasks, Minimax(T, alpha=50.0, schedule="sqrt"), 3000, 0.1, theta0, tail=1000)
        worst_avg, worst_mmx = float(tasks.risks(avg).max()), float(tasks.risks(mmx).max())
        ratios[T] = worst_avg / worst_mmx
        assert worst_avg == pytest.approx(1 / 8, rel=0.02)
        assert worst_mmx == pytest.approx(1 / (2 * (math.sqrt(T - 1) + 1) ** 2), rel=0.05)
        assert ratios[T] == pytest.approx((math.sqrt(T - 1) + 1) ** 2 / 4, rel=0.05)
        assert ratios[T] >= 0.95 * T / 4  # at least linear in T
    assert ratios[16] / ratios[4] > 2.5


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_theorem_3_1_averaged_iterate_gap_is_within_2_R0_Lprime_over_sqrt_K(num_tasks):
    """Convex 1-Lipschitz tasks l_t = |theta - c_t| with c_t on a circle of radius rho around p: the
    minimax optimum is p with value rho. eta = R0/(L' sqrt K), alpha_k = alpha_0 sqrt(k+1) with alpha_0
    large enough for the theorem's condition at every k < K."""
    rho, R0, lip = 1.0, 2.0, 1.0
    p = torch.tensor([0.5, -0.3], dtype=torch.float64)
    angles = torch.arange(num_tasks, dtype=torch.float64) * 2 * math.pi / num_tasks + 0.3
    centres = p + rho * torch.stack([angles.cos(), angles.sin()], dim=1)
    theta0 = p + R0 * torch.tensor([0.6, 0.8], dtype=torch.float64)
    bound_B = 2 * (R0 + rho)

    def loss_fn(theta):
        return (theta - centres).norm(dim=1)

    for K in (100, 400, 1600):
        alpha0 = 4 / (R0 * lip) * math.log(4 * num_tasks * bound_B * math.sqrt(K) / (R0 * lip))
        eta = R0 / (lip * math.sqrt(K))
        avg = algorithm_1(None, Minimax(num_tasks, alpha=alpha0, schedule="sqrt"), K, eta, theta0, loss_fn)
        gap = float(loss_fn(avg).max()) - rho
        assert 0 <= gap <= 2 * R0 * lip / math.sqrt(K)


def test_convex_run_reports_excess_risk_curves_against_N(tmp_path):
    res = run_pipeline(["experiment=convex", "logger=none", "debug=smoke"], tmp_path)
    curves = res["summary"]["by_metric"]
    sizes = [8, 32, 128, 512]
    worst = [curves[f"excess_risk@N={n}"]["worst"] for n in sizes]
    average = [curves[f"excess_risk@N={n}"]["average"] for n in sizes]
    assert all(w >= a for w, a in zip(worst, average))
    assert worst[0] > worst[-1]  # more samples, less excess risk
    assert set(res["downstream"]) == {
        "vertex0",
        "vertex1",
        "vertex2",
        "vertex3",
        "mix0",
        "mix1",
        "mix2",
        "mix3",
    }
    assert res["summary"]["higher_is_better"] is False
