"""ExcessMTL, FAMO, DB-MTL, RLW and GLS: their weights on a few steps against numbers worked out by hand from
each paper's update, exact resume, and tasks absent from a step. (Their bad config values and direction
scenarios run with every other balancer in test_balancers.py; the properties every balancer config has,
state_dict round trip included, in test_balancer_properties.py.)"""

import math

import pytest
import torch
from oracles import normalise, softmax

from pretrain.balancers import DBMTL, FAMO, GLS, RLW, ExcessMTL


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def linear_losses(rows, offsets=None):
    """Losses L_t = g_t . W (+ c_t) at W = 1, so grad_W L_t = g_t exactly: (W, losses)."""
    W = torch.ones(len(rows[0]), requires_grad=True)
    G = torch.tensor(rows, dtype=torch.float32)
    losses = G @ W
    if offsets is not None:
        losses = losses + torch.tensor(offsets, dtype=torch.float32)
    return W, losses


# -- ExcessMTL -------------------------------------------------------------------------------------------


def test_excessmtl_weights_follow_the_exponentiated_excess_risk_ratios():
    """E_t = sum_i g_ti^2 / sqrt(S_ti) with S the running sum of squared gradients (this step's included);
    r_t = E_t / E_t(step 1); log q accumulates eta * r (eta = 1 here), q = softmax."""
    b = ExcessMTL(2, robust_step_size=1.0)
    # step 1: g = [2, 1] and [0, 1]: S = [4, 1], [0, 1]; E = 4/2 + 1/1 = 3 and 1; ratios 1: uniform
    W, losses = linear_losses([[2.0, 1.0], [0.0, 1.0]])
    out = b(losses, shared_params=[W])
    assert out.weights.tolist() == pytest.approx([0.5, 0.5])
    out.loss.backward()
    assert W.grad.tolist() == pytest.approx([1.0, 1.0])  # sum_t q_t g_t
    # step 2: g = [1, 1] and [0, 1]: S = [5, 2], [0, 2]; E = 1/sqrt5 + 1/sqrt2 and 1/sqrt2
    W, losses = linear_losses([[1.0, 1.0], [0.0, 1.0]])
    r = [(1 / math.sqrt(5) + 1 / math.sqrt(2)) / 3, 1 / math.sqrt(2)]
    log_q = [1 + r[0], 1 + r[1]]
    assert b(losses, shared_params=[W]).weights.tolist() == pytest.approx(softmax(log_q), rel=1e-6)
    # step 3: task 1 absent: task 0 has g = [2, 0]: S = [9, 2], E = 4/3; task 1 reuses its last ratio
    W, losses = linear_losses([[2.0, 0.0], [0.0, 0.0]])
    out = b(losses, present=torch.tensor([True, False]), shared_params=[W])
    log_q = [log_q[0] + (4 / 3) / 3, log_q[1] + r[1]]
    assert out.weights.tolist() == pytest.approx(softmax(log_q), rel=1e-6)
    torch.testing.assert_close(b.sq_grad_sum, torch.tensor([[9.0, 2.0], [0.0, 2.0]]))  # absent: none added


def test_excessmtl_features_mode_sums_the_representation_gradients_over_the_batch():
    """mode=features: g_t = sum over the batch of grad_h L_t (a width-2 vector here)."""
    h = torch.ones(3, 2, requires_grad=True)  # batch of 3, width 2
    losses = torch.stack([(h[:, 0] * 2).sum(), h[:, 1].sum()])  # g = [6, 0] and [0, 3]
    b = ExcessMTL(2, robust_step_size=1.0, mode="features")
    assert b.requires == frozenset({"features"})
    b(losses, features=h)
    torch.testing.assert_close(b.sq_grad_sum, torch.tensor([[36.0, 0.0], [0.0, 9.0]]))
    assert b.initial_excess.tolist() == pytest.approx([6.0, 3.0])  # E = g^2 / |g|


def test_excessmtl_task_never_seen_counts_as_untrained_and_nothing_is_nan():
    b = ExcessMTL(3, robust_step_size=1.0)
    present = torch.tensor([True, True, False])
    for rows in ([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [[0.5, 0.0], [0.0, 2.0], [0.0, 0.0]]):
        W, losses = linear_losses(rows)
        losses = torch.where(present, losses, torch.tensor(float("nan")))
        out = b(losses, present=present, shared_params=[W])
        out.loss.backward()
        assert torch.isfinite(out.weights).all() and torch.isfinite(W.grad).all()
    # step 2: r = [(0.25 / sqrt(1.25)) / 1, (4 / sqrt 8) / 2]; task 2 never seen counts with ratio 1
    r = [0.25 / math.sqrt(1.25), 2 / math.sqrt(8)]
    assert out.weights.tolist() == pytest.approx(softmax([1 + r[0], 1 + r[1], 2.0]), rel=1e-6)


# -- FAMO ------------------------------------------------------------------------------------------------


def _adam(grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """The Adam steps of torch.optim.Adam on a logit that starts at 0, written out (grads include decay)."""
    m = v = x = 0.0
    for n, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        x -= lr * (m / (1 - betas[0] ** n)) / (math.sqrt(v / (1 - betas[1] ** n)) + eps)
    return x


def test_famo_weights_and_logit_updates_by_hand():
    """w = (z / L) / sum(z / L), z = softmax(xi); before step k, xi takes an Adam step (lr 0.1, decay 1e-3) on
    the softmax Jacobian applied to delta = log L(k-1) - log L(k); for 2 tasks that gradient is
    z0 z1 (delta0 - delta1) [1, -1]."""
    b = FAMO(2, lr=0.1, weight_decay=1e-3)
    assert b(t(1.0, 2.0)).weights.tolist() == pytest.approx([2 / 3, 1 / 3])  # z uniform: w ~ 1/L
    # step 1: delta = [log 2, log 1.25]; grad = 0.25 (log 2 - log 1.25) [1, -1] = 0.25 log 1.6 [1, -1]
    a = 0.25 * math.log(1.6)
    xi = _adam([a], 0.1)  # ~ -0.1: the task whose loss fell faster loses logit
    assert b.logits.tolist() == pytest.approx([0.0, 0.0])
    w = b(t(0.5, 1.6)).weights
    assert b.logits.tolist() == pytest.approx([xi, -xi], rel=1e-6)
    z = softmax([xi, -xi])
    assert w.tolist() == pytest.approx(normalise([z[0] / 0.5, z[1] / 1.6]), rel=1e-6)
    # step 2: delta = [log 1.25, log 1.6]; decay adds 1e-3 * xi
    c = z[0] * z[1] * math.log(1.25 / 1.6)
    xi2 = [_adam([a, c + 1e-3 * xi], 0.1), _adam([-a, -c - 1e-3 * xi], 0.1)]
    w = b(t(0.4, 1.0)).weights
    assert b.logits.tolist() == pytest.approx(xi2, rel=1e-5)
    z = softmax(xi2)
    assert w.tolist() == pytest.approx(normalise([z[0] / 0.4, z[1] / 1.0]), rel=1e-5)
    assert w[1] > normalise([1 / 0.4, 1 / 1.0])[1]  # the slower task gained weight beyond 1/L


def test_famo_gradient_is_torchjd_famo_with_consecutive_step_losses():
    """Our w_t equals d(torchjd's FAMO scalar)/dL_t, when its update() gets the next step's losses."""
    from torchjd.scalarization import FAMO as TorchJDFAMO

    torch.manual_seed(0)
    steps = torch.rand(6, 3) * 2 + 0.1
    ours, ref = FAMO(3, lr=0.2, weight_decay=1e-3, min_loss=0.05), None
    ref = TorchJDFAMO(3, min_losses=torch.full((3,), 0.05), lr=0.2, weight_decay=1e-3)
    for k, losses in enumerate(steps):
        if k > 0:
            ref.update(losses)
        x = losses.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(ref(x), x)
        torch.testing.assert_close(ours(losses).weights, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours.logits, torch.zeros(3))


def test_famo_absent_task_keeps_its_logit_and_a_task_never_seen_gets_no_weight():
    b = FAMO(3, lr=0.1, weight_decay=0.0)
    first = b(t(1.0, 2.0, float("nan")), present=torch.tensor([True, True, False]))
    assert first.weights.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])  # never seen: weight 0
    b(t(1.0, 2.0, 3.0))  # every task seen; deltas 0 for the two measured, none for task 2: logits stay 0
    assert b.logits.tolist() == [0.0, 0.0, 0.0]
    # task 1 absent: tasks 0 (delta log 2) and 2 (delta 0) measured; task 1 takes their z-weighted mean
    # (log 2) / 2, so the gradient is (1/3) [log 2 / 2, 0, -log 2 / 2]: task 1's logit stays
    out = b(t(0.5, float("nan"), 3.0), present=torch.tensor([True, False, True]))
    assert b.logits[1] == 0 and b.logits[0] < 0 < b.logits[2]
    assert float(b.logits[0]) == pytest.approx(-float(b.logits[2]))
    z = softmax(b.logits.tolist())
    assert out.weights.tolist() == pytest.approx(normalise([z[0] / 0.5, z[1] / 2.0, z[2] / 3.0]), rel=1e-5)
    assert torch.isfinite(out.loss)


# -- DB-MTL ----------------------------------------------------------------------------------------------


def test_dbmtl_weights_from_log_losses_and_the_average_gradient_norms():
    """grad log L_t = g_t / L_t; ghat <- beta ghat + (1 - beta) grad log L (ghat_0 = 0), beta = 0.5;
    alpha_t = max ||ghat|| / ||ghat_t||; w ~ alpha_t / L_t."""
    b = DBMTL(2, beta=0.5)
    # step 1: g = [2, 0], [0, 1]; L = [2, 1]; grad log L = e0, e1; ghat = 0.5 e0, 0.5 e1: alpha [1, 1]
    W, losses = linear_losses([[2.0, 0.0], [0.0, 1.0]])
    out = b(losses, shared_params=[W])
    assert out.weights.tolist() == pytest.approx([1 / 3, 2 / 3])
    out.loss.backward()
    assert W.grad.tolist() == pytest.approx([2 / 3, 2 / 3])  # sum_t w_t g_t
    # step 2: g = [2, 2], [0, 3]; L = [4, 3]; grad log L = [0.5, 0.5], [0, 1]
    # ghat = [0.5, 0.25], [0, 0.75]: norms sqrt(0.3125), 0.75
    W, losses = linear_losses([[2.0, 2.0], [0.0, 3.0]])
    alpha = [0.75 / math.sqrt(0.3125), 1.0]
    w = b(losses, shared_params=[W]).weights
    assert w.tolist() == pytest.approx(normalise([alpha[0] / 4, alpha[1] / 3]), rel=1e-5)
    # step 3: task 1 absent: its ghat and (last) loss 3 stand; task 0: g = [4, 0], L = 4: ghat = [0.75, 0.125]
    W, losses = linear_losses([[4.0, 0.0], [0.0, 0.0]])
    out = b(losses, present=torch.tensor([True, False]), shared_params=[W])
    n0 = math.sqrt(0.75**2 + 0.125**2)
    alpha = [1.0, n0 / 0.75]
    assert out.weights.tolist() == pytest.approx(normalise([alpha[0] / 4, alpha[1] / 3]), rel=1e-5)


def test_dbmtl_beta_decays_with_beta_sigma():
    """beta_k = beta / k^sigma: with beta 0.5 and sigma 1, 0.5 then 0.25."""
    b = DBMTL(2, beta=0.5, beta_sigma=1.0)
    W, losses = linear_losses([[2.0, 0.0], [0.0, 1.0]])
    b(losses, shared_params=[W])
    W, losses = linear_losses([[2.0, 2.0], [0.0, 3.0]])
    b(losses, shared_params=[W])
    expected = [[0.25 * 0.5 + 0.75 * 0.5, 0.75 * 0.5], [0.0, 0.25 * 0.5 + 0.75 * 1.0]]
    torch.testing.assert_close(b.grad_ema, torch.tensor(expected))


def test_dbmtl_resumes_exactly_from_its_state_dict():
    """The gradient averages (a T x P buffer sized at the first step) and step counts ride in state_dict():
    a fresh balancer loaded from it gives the next weights of the uninterrupted one; one without them does not
    (with beta_sigma > 0; test_balancer_properties.py runs the config's defaults)."""
    torch.manual_seed(0)
    steps = [torch.randn(3, 4) for _ in range(6)]

    def step(b, G):
        W = torch.ones(4, requires_grad=True)
        return b((G @ W) ** 2 + 0.5, shared_params=[W]).weights

    a = DBMTL(3, beta=0.5, beta_sigma=0.5)
    for G in steps[:4]:
        step(a, G)
    b = DBMTL(3, beta=0.5, beta_sigma=0.5)
    b.load_state_dict(a.state_dict())
    assert b.grad_ema.shape == (3, 4)
    for G in steps[4:]:
        torch.testing.assert_close(step(a, G), step(b, G))
    assert not torch.allclose(step(DBMTL(3, beta=0.5, beta_sigma=0.5), steps[0]), step(a, steps[0]))


def test_dbmtl_task_never_seen_gets_no_weight():
    b = DBMTL(3)
    W, losses = linear_losses([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    losses = torch.where(torch.tensor([True, True, False]), losses, torch.tensor(float("nan")))
    out = b(losses, present=torch.tensor([True, True, False]), shared_params=[W])
    # grad log L = e0, e1: equal norms, w ~ 1/L = [1, 1/2]
    assert out.weights.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    out.loss.backward()
    assert torch.isfinite(W.grad).all()


# -- RLW -------------------------------------------------------------------------------------------------


def test_rlw_normal_draws_are_softmax_of_standard_normals_from_the_seeded_generator():
    g = torch.Generator().manual_seed(7)
    expected = [torch.softmax(torch.randn(3, generator=g), dim=0) for _ in range(3)]
    b = RLW(3, seed=7)
    for e in expected:
        torch.testing.assert_close(b(t(1.0, 2.0, 3.0)).weights, e)
    assert not torch.allclose(expected[0], expected[1])


def test_rlw_dirichlet_draws_match_torch_dirichlet_sampler():
    g = torch.Generator().manual_seed(3)
    conc = torch.full((4,), 0.5)
    expected = [torch._sample_dirichlet(conc, generator=g) for _ in range(3)]
    b = RLW(4, distribution="dirichlet", concentration=0.5, seed=3)
    for e in expected:
        w = b(t(1.0, 1.0, 1.0, 1.0)).weights
        torch.testing.assert_close(w, e, rtol=1e-5, atol=1e-7)
        assert float(w.sum()) == pytest.approx(1.0)


def test_rlw_resume_draws_what_the_uninterrupted_run_draws_and_eval_draws_nothing():
    a = RLW(3, seed=1)
    for _ in range(4):
        a(t(1.0, 1.0, 1.0))
    b = RLW(3, seed=1)
    b.load_state_dict(a.state_dict())
    a.eval()
    assert a(t(1.0, 1.0, 1.0)).weights.tolist() == pytest.approx([1 / 3] * 3)  # no draw in eval
    a.train()
    for _ in range(3):
        torch.testing.assert_close(a(t(1.0, 1.0, 1.0)).weights, b(t(1.0, 1.0, 1.0)).weights)
    fresh = RLW(3, seed=1)
    assert not torch.allclose(fresh(t(1.0, 1.0, 1.0)).weights, a(t(1.0, 1.0, 1.0)).weights)


def test_rlw_absent_task_keeps_its_draw_and_gets_no_gradient():
    theta = torch.ones(3, requires_grad=True)
    present = torch.tensor([True, False, True])
    a, b = RLW(3, seed=5), RLW(3, seed=5)
    for _ in range(2):
        losses = torch.stack([theta[0], torch.tensor(float("nan")), 2 * theta[2]])
        out = a(losses, present=present)
        torch.testing.assert_close(out.weights, b(t(1.0, 1.0, 2.0)).weights)  # same sequence
    out.loss.backward()
    assert theta.grad[1] == 0 and torch.isfinite(theta.grad).all()


# -- GLS -------------------------------------------------------------------------------------------------


def test_gls_weights_are_inverse_losses_and_the_direction_of_the_geometric_mean():
    """L = [1, 2, 4]: w = [1, 1/2, 1/4] / (7/4) = [4, 2, 1] / 7; sum w L = 12/7 (the harmonic mean H);
    G = 8^(1/3) = 2 and grad G = (G / H) * grad(sum w L)."""
    from torchjd.scalarization import GeometricMean

    theta = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    out = GLS(3)(theta * theta / t(1.0, 2.0, 4.0))  # L = [1, 2, 4], grad L_t = 2 theta_t / c_t
    assert out.weights.tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert float(out.loss) == pytest.approx(12 / 7)
    (ours,) = torch.autograd.grad(out.loss, theta)
    (geo,) = torch.autograd.grad(GeometricMean()(theta * theta / t(1.0, 2.0, 4.0)), theta)
    torch.testing.assert_close(geo, ours * (2.0 / (12 / 7)))


def test_gls_absent_task_uses_its_last_loss_and_a_task_never_seen_gets_none():
    b = GLS(3)
    assert b(t(1.0, 0.0, 4.0), present=torch.tensor([True, False, True])).weights.tolist() == pytest.approx(
        [0.8, 0.0, 0.2]
    )
    b(t(1.0, 2.0, 4.0))
    w = b(t(2.0, float("nan"), 2.0), present=torch.tensor([True, False, True])).weights
    assert w.tolist() == pytest.approx(normalise([1 / 2, 1 / 2, 1 / 2]))  # task 1: its last loss 2
