"""Every balancer against an independently written reference of its paper's update (LibMTL's formulas where it
has the method), on identical losses and gradients: the weights (normalised to sum to 1, our convention), the
scalar or its gradient, and the state after a few steps for the stateful methods.

The references below are written from the methods' equations, in a different form from the project's code
where one exists (autograd of the paper's objective instead of its closed-form gradient, ``torch.optim.Adam``
instead of FAMO's hand-written step, per-task ``autograd.grad`` calls instead of one batched backward,
scipy's QP solver for the min-norm and dual-cone problems). Each comparison prints its largest difference.

Not compared here: ``GradientAggregator``'s other torchjd methods (dualproj, imtlg, cagrad: no config file
selects them), RLW's ``dirichlet`` draws (``torch.distributions.Dirichlet`` takes no generator), and the
options beyond the papers (minimax's ``ema``, ``floor`` and ``normalize``; the absent-task rules), which
test_balancers.py checks against hand-worked numbers.
"""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pretrain.balancers import (
    DBMTL,
    DWA,
    FAMO,
    GLS,
    RLW,
    STCH,
    ExcessMTL,
    GradientAggregator,
    GradNorm,
    GroupDRO,
    Minimax,
    NoBalancing,
    Uncertainty,
    Vanilla,
)
from utils.errors import ConfigError

T = 3


def assert_near(name: str, ours, ref, tol: float) -> None:
    ours = torch.as_tensor(ours).detach().double()
    ref = torch.as_tensor(ref).detach().double()
    diff = float((ours - ref).abs().max())
    print(f"{name}: max |project - reference| = {diff:.1e}")
    assert diff <= tol, f"{name}: {ours.tolist()} vs reference {ref.tolist()}"


def loss_sequence(steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.5 + 2 * torch.rand(T, generator=g) for _ in range(steps)]


def grad_wrt_losses(balancer, losses: torch.Tensor) -> torch.Tensor:
    """The gradient the balancer's scalar sends to each task loss (its applied weights)."""
    x = losses.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(balancer(x).loss, x)
    return g


# -- loss-value balancers ------------------------------------------------------------------------------------
def test_none_and_vanilla_are_the_task_mean_and_the_mean_over_all_targets():
    g = torch.Generator().manual_seed(1)
    per_target = [torch.rand(n, generator=g) * 3 for n in (5, 1, 12)]  # per-target losses of each task
    losses = torch.stack([p.mean() for p in per_target])
    counts = torch.tensor([float(p.numel()) for p in per_target])
    assert_near("none", NoBalancing(T)(losses).loss, losses.sum() / T, 1e-7)
    out = Vanilla(T)(losses, counts=counts)
    assert_near(
        "vanilla", out.loss, torch.cat(per_target).mean(), 1e-6
    )  # BERT's mean over every masked token


@pytest.mark.parametrize("schedule", ["constant", "sqrt"])
def test_minimax_is_the_gradient_of_the_smooth_max(schedule):
    """eq. (7): the applied weights are the gradient of (1/alpha_k) logsumexp(alpha_k L), alpha_k = alpha
    (constant) or alpha sqrt(k+1) (Theorem 3.1), over several steps."""
    alpha, b = 1.7, Minimax(T, alpha=1.7, schedule=schedule)
    for k, losses in enumerate(loss_sequence(4)):
        a = alpha * (k + 1) ** 0.5 if schedule == "sqrt" else alpha
        x = losses.double().requires_grad_(True)
        (ref,) = torch.autograd.grad(torch.logsumexp(a * x, 0) / a, x)
        assert_near(f"minimax[{schedule}] step {k}", grad_wrt_losses(b, losses), ref, 1e-6)


def test_groupdro_is_online_exponentiated_gradient_on_the_losses():
    """Sagawa et al. 2020, Algorithm 1: q <- q exp(eta L), q <- q / sum q, updated before use; q(0) uniform."""
    eta, b, q = 0.3, GroupDRO(T, eta=0.3), np.full(T, 1 / T)
    for k, losses in enumerate(loss_sequence(5)):
        q = q * np.exp(eta * losses.double().numpy())
        q = q / q.sum()
        assert_near(f"groupdro step {k}", b(losses).weights, q, 1e-6)


def test_uncertainty_is_kendalls_regression_loss_scaled_by_2_over_t():
    """LibMTL / Kendall et al.: sum_t L_t / (2 exp(s_t)) + s_t / 2. Ours is (2/T) times it: the same weights
    after normalisation, the same minimiser in s, gradients (2/T) times LibMTL's."""
    b = Uncertainty(T)
    s = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        b.log_var.copy_(s)
    losses = loss_sequence(1)[0]
    out = b(losses)
    out.loss.backward()
    ref = (losses.double() / (2 * s.exp()) + s / 2).sum()
    ref.backward()
    assert_near("uncertainty scalar", out.loss, 2 / T * ref, 1e-6)
    assert_near("uncertainty grad s", b.log_var.grad, 2 / T * s.grad, 1e-6)
    w_ref = 1 / (2 * s.detach().exp())
    assert_near("uncertainty weights", out.weights / out.weights.sum(), w_ref / w_ref.sum(), 1e-6)


def test_dwa_weights_follow_the_ratio_of_the_last_two_epoch_means():
    """Liu et al. 2019 / LibMTL: w = softmax(Lbar(e-1) / Lbar(e-2) / temperature), uniform for the first two
    epochs; an "epoch" here is a window of 3 steps."""
    window, temp, b = 3, 2.0, DWA(T, temperature=2.0, window=3)
    seq = loss_sequence(4 * window, seed=2)
    means = [torch.stack(seq[e * window : (e + 1) * window]).double().mean(0) for e in range(4)]
    for k, losses in enumerate(seq):
        e = k // window
        ref = torch.full((T,), 1 / T) if e < 2 else torch.softmax(means[e - 1] / means[e - 2] / temp, 0)
        assert_near(f"dwa step {k}", b(losses).weights, ref, 1e-6)


def test_stch_is_the_gradient_of_the_smooth_tchebycheff_of_the_nadir_normalised_log_losses():
    """Lin et al. 2024: mu log sum_t exp(log(L_t / z_t) / mu), z the mean losses of the warm-up (equal weights)."""
    mu, warmup, b = 0.3, 2, STCH(T, mu=0.3, warmup=2)
    seq = loss_sequence(5, seed=3)
    nadir = torch.stack(seq[:warmup]).double().mean(0)
    for k, losses in enumerate(seq):
        if k < warmup:
            ref = torch.full((T,), 1 / T)
        else:
            x = losses.double().requires_grad_(True)
            (ref,) = torch.autograd.grad(mu * torch.logsumexp(torch.log(x / nadir) / mu, 0), x)
            ref = ref / ref.sum()
        assert_near(f"stch step {k}", b(losses).weights, ref, 1e-6)


def test_gls_is_the_direction_of_the_geometric_mean():
    losses = loss_sequence(1, seed=4)[0]
    x = losses.double().requires_grad_(True)
    (ref,) = torch.autograd.grad(x.prod() ** (1 / T), x)
    assert_near("gls", GLS(T)(losses).weights, ref / ref.sum(), 1e-6)


def test_famo_matches_the_official_update_with_torch_adam():
    """Liu et al. 2023 (official code): loss sum_t (z_t / c) log(L_t - L_min), z = softmax(xi), c = sum z / D;
    xi.grad = J_softmax(xi)^T delta, delta the decrease of log(L - L_min + 1e-8), Adam(lr, weight_decay).
    The delta is taken between consecutive steps (our variant), before the weights of the step."""
    lr, decay, floor = 0.1, 0.01, torch.tensor([0.1, 0.0, 0.2])
    b = FAMO(T, lr=lr, weight_decay=decay, min_loss=floor.tolist())
    xi = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([xi], lr=lr, weight_decay=decay)
    prev = None
    for k, losses in enumerate(loss_sequence(6, seed=5)):
        log_d = torch.log(losses.double() - floor + 1e-8)
        if prev is not None:
            z = torch.softmax(xi, 0)
            (xi.grad,) = torch.autograd.grad(z, xi, grad_outputs=prev - log_d)
            adam.step()
        prev = log_d
        x = losses.double().requires_grad_(True)
        z = torch.softmax(xi.detach(), 0)
        d = x - floor + 1e-8
        (ref,) = torch.autograd.grad((z / (z / d).sum().detach() * torch.log(d)).sum(), x)
        assert_near(f"famo step {k}", grad_wrt_losses(b, losses), ref, 2e-6)
    assert_near("famo logits after 6 steps", b.logits, xi.detach(), 2e-6)


def test_rlw_draws_a_softmax_of_standard_normals_from_its_seed():
    """Lin et al. 2022 / LibMTL: w = softmax(lambda), lambda ~ N(0, I), fresh every step (seeded generator).
    (``distribution=dirichlet`` is not compared here: torch.distributions.Dirichlet takes no generator.)"""
    b, g = RLW(T, seed=7), torch.Generator().manual_seed(7)
    for k, losses in enumerate(loss_sequence(3)):
        assert_near(f"rlw step {k}", b(losses).weights, torch.softmax(torch.randn(T, generator=g), 0), 1e-7)


# -- gradient-based balancers --------------------------------------------------------------------------------
def tiny_problem(seed: int, rows: tuple[int, ...] = (6,)):
    """A shared layer ``W`` (5 x 4) with output ``h = tanh(x W^T)`` (``rows`` x 5) and T regression heads of
    different scales: returns W, h and the T losses (differentiable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*rows, 4, generator=g)
    w = torch.randn(5, 4, generator=g).requires_grad_(True)
    h = torch.tanh(x @ w.T)
    heads = torch.randn(T, 5, generator=g) * torch.tensor([0.5, 1.0, 2.0])[:, None]
    y = torch.randn(T, *rows, generator=g)
    return w, h, torch.stack([((h @ heads[t] - y[t]) ** 2).mean() for t in range(T)])


def per_task_grads(losses: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """(T, *wrt.shape) float64: one autograd.grad call per task (LibMTL's loop, not our batched backward)."""
    return torch.stack([torch.autograd.grad(v, wrt, retain_graph=True)[0] for v in losses]).double()


def gradnorm_update_grad(p, norms, losses, initial, asymmetry):
    """LibMTL's GradNorm: loss_scale = T softmax(p), G_t = ||loss_scale_t grad L_t||, r_t = (L_t / L_t(0)) /
    mean_s(...); the gradient of sum_t |G_t - stopgrad(mean(G) r_t^alpha)| w.r.t. p (T times ours)."""
    p = p.detach().requires_grad_(True)
    g = T * torch.softmax(p, 0) * norms
    ratio = losses / initial
    target = (g.mean() * (ratio / ratio.mean()) ** asymmetry).detach()
    (grad,) = torch.autograd.grad((g - target).abs().sum(), p)
    return grad


def test_gradnorm_shared_params_follows_libmtls_update_over_several_steps():
    """Chen et al. 2018 on the last shared layer: the logits' gradient is 1/T of LibMTL's (its weights sum to T),
    so SGD with lr on ours and lr/T on LibMTL's follow the same logits; the model gets sum_t w_t grad L_t.
    L_t(0) is the first step's loss (LibMTL: the first epoch's mean)."""
    lr, b = 0.5, GradNorm(T, asymmetry=1.5, lr=None, mode="shared_params")
    p_ref, initial = torch.zeros(T, dtype=torch.float64), None
    for k in range(4):
        w, _, losses = tiny_problem(seed=10 + k)
        grads = per_task_grads(losses, w).reshape(T, -1)
        values = losses.detach().double()
        initial = values if initial is None else initial
        ref = gradnorm_update_grad(p_ref, grads.norm(dim=1), values, initial, 1.5)
        b.logits.grad = None
        out = b(losses, shared_params=[w])
        out.loss.backward()
        assert_near(f"gradnorm[shared_params] step {k} weights", out.weights, torch.softmax(p_ref, 0), 1e-6)
        assert_near(f"gradnorm[shared_params] step {k} logits grad", T * b.logits.grad, ref, 1e-5)
        model_grad = (torch.softmax(p_ref, 0)[:, None] * grads).sum(0)
        assert_near(f"gradnorm[shared_params] step {k} model grad", w.grad.flatten(), model_grad, 1e-5)
        with torch.no_grad():
            b.logits -= lr * b.logits.grad
        p_ref = p_ref - lr / T * ref
    assert_near("gradnorm[shared_params] logits after 4 steps", b.logits, p_ref, 1e-5)


@pytest.mark.parametrize("feature_norm", ["rows", "batch_sum"])
def test_gradnorm_feature_norms_are_the_frobenius_norm_or_the_norm_of_the_batch_sum(feature_norm):
    """mode=features on a (2, 3, D) representation: rows = ||grad_h L_t||_F over the 6 rows; batch_sum =
    ||sum over the rows of grad_h L_t|| (LibMTL's rep_grad GradNorm). The two differ on this case."""
    b = GradNorm(T, asymmetry=1.5, lr=None, mode="features", feature_norm=feature_norm)
    with torch.no_grad():
        b.logits.copy_(torch.tensor([0.2, -0.4, 0.1]))
    _, h, losses = tiny_problem(seed=20, rows=(2, 3))
    b(losses.detach(), features=h)  # first step: L_t(0); the update below sees ratios L / L(0) != 1
    _, h, losses = tiny_problem(seed=21, rows=(2, 3))
    grads = per_task_grads(losses, h)
    frobenius, summed = grads.flatten(1).norm(dim=1), grads.reshape(T, -1, 5).sum(1).norm(dim=1)
    b.logits.grad = None
    b(losses, features=h).loss.backward()
    values, initial = losses.detach().double(), b.initial_loss.double()
    refs = {
        name: gradnorm_update_grad(b.logits.detach().double(), norms, values, initial, 1.5)
        for name, norms in (("rows", frobenius), ("batch_sum", summed))
    }
    assert float((refs["rows"] - refs["batch_sum"]).abs().max()) > 0.1  # the choice matters here
    assert_near(
        f"gradnorm[features, {feature_norm}] logits grad", T * b.logits.grad, refs[feature_norm], 1e-5
    )


def min_norm_weights(gramian: torch.Tensor) -> torch.Tensor:
    """The exact MGDA weights, argmin_w w^T G w over the simplex, by scipy's SLSQP (G scaled to a unit max)."""
    g = (gramian / gramian.diagonal().max()).numpy()
    n = len(g)
    res = minimize(lambda w: w @ g @ w, np.full(n, 1 / n), jac=lambda w: 2 * g @ w, method="SLSQP",
                   bounds=[(0, 1)] * n, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                   options={"ftol": 1e-16, "maxiter": 1000})  # fmt: skip
    return torch.from_numpy(res.x)


def correlated_jacobian(seed: int, tasks: int = 9, size: int = 2000) -> torch.Tensor:
    """(tasks, size) gradients sharing one component, of different scales: MGDA picks a few tasks."""
    g = torch.Generator().manual_seed(seed)
    shared, noise = torch.randn(size, generator=g), 0.3 + 2 * torch.rand(1, generator=g)
    scales = 0.2 + 2 * torch.rand(tasks, generator=g)
    return scales[:, None] * (shared + noise * torch.randn(tasks, size, generator=g))


def test_mgda_two_tasks_is_the_closed_form_min_norm_point():
    """Sener & Koltun 2018: for two gradients, w_1 = clamp((g_2 - g_1) . g_2 / ||g_1 - g_2||^2, 0, 1)."""
    b = GradientAggregator(2, method="mgda", mode="shared_params")
    for seed in range(3):
        w, _, losses = tiny_problem(seed=30 + seed)
        g1, g2 = per_task_grads(losses[:2], w).flatten(1)
        w1 = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1)
        assert_near(f"mgda T=2 case {seed}", b(losses[:2], shared_params=[w]).weights, [w1, 1 - w1], 1e-6)


@pytest.mark.parametrize(
    "solver, kwargs, tol", [("qp", {}, 1e-5), ("frank_wolfe", {"epsilon": 1e-6, "max_iters": 3000}, 1e-3)]
)
def test_mgda_weights_are_the_exact_min_norm_solution(solver, kwargs, tol):
    """9 tasks: the weights against scipy's QP solution, for the exact solver and tightened Frank-Wolfe; torchjd's
    defaults (epsilon 1e-3, 100 iterations) are more than 1e-3 off on one of these cases."""
    b = GradientAggregator(9, method="mgda", solver=solver, **kwargs)
    loose = GradientAggregator(9, method="mgda", solver="frank_wolfe")
    losses, loose_errors = torch.ones(9, requires_grad=True), []
    for seed in range(6):
        jac = correlated_jacobian(seed)
        ref = min_norm_weights(jac.double() @ jac.double().T)
        assert_near(f"mgda[{solver}] case {seed}", b(losses, feature_grads=jac).weights, ref, tol)
        loose_errors.append(float((loose(losses, feature_grads=jac).weights - ref).abs().max()))
    assert max(loose_errors) > 2e-3  # the cases need more than torchjd's default tolerance


def pcgrad_weights(gramian: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1 in weight space: g_i^PC starts at g_i and, for j in orders[i], loses its
    component along g_j when g_i^PC . g_j < 0; the update is sum_i g_i^PC (returned as the weights of the g)."""
    total = torch.zeros(len(gramian), dtype=torch.float64)
    for i, order in enumerate(orders):
        v = torch.zeros(len(gramian), dtype=torch.float64)
        v[i] = 1
        for j in order:
            dot = gramian[j] @ v
            if dot < 0:
                v[j] -= dot / gramian[j, j]
        total += v
    return total


def aggregator_weights(method: str, jac: torch.Tensor) -> torch.Tensor:
    """The weights of ``GradientAggregator(method)`` for the per-task gradients ``jac`` (as feature gradients)."""
    b = GradientAggregator(len(jac), method=method)
    return b(torch.ones(len(jac), requires_grad=True), feature_grads=jac.float()).weights


def conflicting_jacobian() -> torch.Tensor:
    """(T, 20) per-task gradients of the tiny problem, task 1's made to conflict with task 0's."""
    w, _, losses = tiny_problem(seed=40)
    jac = per_task_grads(losses, w).flatten(1)
    jac[1] = -0.7 * jac[0] + 0.3 * jac[1]
    return jac


def test_pcgrad_projects_each_gradient_off_the_conflicting_ones():
    """Three tasks: ours equals Algorithm 1 for one of the projection orders (each task draws its own random
    order of the others), and differs from plain averaging on this case."""
    jac = conflicting_jacobian()
    gramian = jac @ jac.T
    torch.manual_seed(0)
    ours = aggregator_weights("pcgrad", jac).double()
    others = [[j for j in range(T) if j != i] for i in range(T)]
    candidates = []
    for orders in itertools.product(*[list(itertools.permutations(o)) for o in others]):
        v = pcgrad_weights(gramian, [list(o) for o in orders])
        candidates.append(v / v.sum())
    best = min(candidates, key=lambda c: float((ours - c).abs().max()))
    assert_near("pcgrad", ours, best, 1e-6)
    assert float((best - 1 / T).abs().max()) > 0.05


def test_upgrad_averages_the_projections_onto_the_dual_cone():
    """Quinton & Rey 2024: d = (1/T) sum_i pi(g_i), pi the projection onto {x : J x >= 0}, solved here in
    parameter space by scipy; the weights v with J^T v = d, normalised. torchjd's solver adds 1e-4 I to the
    trace-normalised Gramian, which moves the weights by 4.5e-3 here (with 1e-8 I they agree to 5e-7)."""
    jac = conflicting_jacobian()
    cone = {"type": "ineq", "fun": lambda x: jac.numpy() @ x, "jac": lambda x: jac.numpy()}
    projections = []
    for g in jac.numpy():
        res = minimize(lambda x, g=g: ((x - g) ** 2).sum(), g, jac=lambda x, g=g: 2 * (x - g), method="SLSQP",
                       constraints=[cone], options={"ftol": 1e-14, "maxiter": 500})  # fmt: skip
        projections.append(res.x)
    d = np.mean(projections, axis=0)
    v = np.linalg.lstsq(jac.numpy().T, d, rcond=None)[0]
    ours = aggregator_weights("upgrad", jac)
    assert_near("upgrad", ours, v / v.sum(), 6e-3)
    assert float(np.abs(v / v.sum() - 1 / T).max()) > 0.05  # not the mean


def test_excessmtl_follows_the_official_update_over_several_steps():
    """He et al. 2024 (LibMTL's ExcessMTL): S_t += g_t^2, E_t = g_t . (g_t / sqrt(S_t + 1e-7)); the first step
    keeps E_t(0) and the weights; later q <- q exp(eta E_t / E_t(0)), renormalised (LibMTL's sum to T)."""
    eta, b = 0.5, ExcessMTL(T, robust_step_size=0.5, mode="shared_params")
    q, sq_sum, initial = torch.ones(T, dtype=torch.float64), 0, None
    for k in range(4):
        w, _, losses = tiny_problem(seed=50 + k)
        grads = per_task_grads(losses, w).flatten(1)
        sq_sum = sq_sum + grads**2
        excess = (grads * grads / torch.sqrt(sq_sum + 1e-7)).sum(1)
        if initial is None:
            initial = excess
        else:
            q = q * torch.exp(excess / initial * eta)
            q = q / q.sum() * T
        assert_near(f"excessmtl step {k}", b(losses, shared_params=[w]).weights, q / T, 1e-6)
    assert_near(
        "excessmtl squared-gradient sums after 4 steps",
        b.sq_grad_sum / sq_sum.max(),
        sq_sum / sq_sum.max(),
        1e-6,
    )


def test_dbmtl_follows_libmtls_gradient_buffer_and_scales():
    """Lin et al. 2023 (LibMTL's DB_MTL): buffer <- g + (beta / k^beta_sigma) (buffer - g), g = grad log(L + 1e-8);
    alpha_t = max_s ||buffer_s|| / (||buffer_t|| + 1e-8); DB-MTL applies sum_t alpha_t buffer_t, our one-backward
    variant sum_t alpha_t grad log L_t: weights alpha_t / (L_t + 1e-8), normalised."""
    beta, sigma = 0.9, 0.5
    b = DBMTL(T, beta=beta, beta_sigma=sigma, mode="shared_params")
    buffer = torch.zeros(T, 20, dtype=torch.float64)
    for k in range(1, 5):
        w, _, losses = tiny_problem(seed=60 + k)
        g = per_task_grads(torch.log(losses + 1e-8), w).flatten(1)
        buffer = g + beta / k**sigma * (buffer - g)
        norms = buffer.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        ref = alpha / (losses.detach().double() + 1e-8)
        assert_near(f"dbmtl step {k}", b(losses, shared_params=[w]).weights, ref / ref.sum(), 1e-6)
    assert_near("dbmtl gradient average after 4 steps", b.grad_ema, buffer, 1e-6)


# -- the options compared above refuse meaningless combinations ----------------------------------------------
@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: GradNorm(T, mode="shared_params", feature_norm="batch_sum"), "balancer.feature_norm"),
        (lambda: GradNorm(T, feature_norm="batch"), "balancer.feature_norm"),
        (lambda: GradientAggregator(T, method="upgrad", solver="qp"), "balancer.solver"),
        (lambda: GradientAggregator(T, method="mgda", solver="exact"), "balancer.solver"),
        (lambda: GradientAggregator(T, method="mgda", epsilon=1e-6), "balancer.epsilon"),
        (
            lambda: GradientAggregator(T, method="mgda", solver="frank_wolfe", max_iters=0),
            "balancer.max_iters",
        ),
    ],
)
def test_feature_norm_and_mgda_solver_options_reject_values_that_would_be_ignored_or_invalid(make, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make()
