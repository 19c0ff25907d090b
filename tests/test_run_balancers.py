"""Every balancer config, run end to end on the convex experiment as a user runs it: the weights it applied, read
back from the run's CSV log, are the ones its equation gives for the logged losses."""

import math

import pytest
from oracles import (
    assert_uniform_then_moving,
    dwa_weights,
    minimax_weights,
    rlw_weights,
    softmax,
    uncertainty_weights,
)


def _check_dwa(L, W):  # window=1: uniform for two windows, then softmax(r / 2), r = L(k-1) / L(k-2)
    for w, want in zip(W, dwa_weights(L, window=1, temperature=2.0)):
        assert w == pytest.approx(want, rel=1e-3)
    assert W[0] == W[1] == pytest.approx([0.25] * 4)
    for k in range(2, len(W)):
        r = [a / b for a, b in zip(L[k - 1], L[k - 2])]
        slowest = max(range(4), key=lambda t: r[t])  # the task whose loss fell least
        assert W[k][slowest] == max(W[k])


def _check_uncertainty(L, W):  # w_k = exp(-s_k) / T, s_{k+1} = s_k - lr (1 - exp(-s_k) L_k) / T, lr 0.05
    for w, want in zip(W, uncertainty_weights(L, lr=0.05)):
        assert w == pytest.approx(want, rel=1e-3)
    total = [sum(col) for col in zip(*L[:-1])]  # larger losses so far, larger s_t, smaller weight
    assert sorted(range(4), key=lambda t: W[-1][t]) == sorted(range(4), key=lambda t: -total[t])


def _check_groupdro(L, W):  # softmax of eta * cumulative losses, eta 0.01
    total = [0.0] * 4
    for k in range(len(W)):
        total = [a + b for a, b in zip(total, L[k])]
        assert W[k] == pytest.approx(softmax([0.01 * x for x in total]), rel=1e-3)
    assert max(range(4), key=lambda t: W[-1][t]) == max(range(4), key=lambda t: total[t])


def _check_stch(L, W):  # warmup=2: nadir z = mean of steps 0, 1; then w ~ softmax(log(L/z)/mu) / L, mu 0.1
    assert W[0] == W[1] == pytest.approx([0.25] * 4)
    z = [(a + b) / 2 for a, b in zip(L[0], L[1])]
    for k in range(2, len(W)):
        g = [p / v for p, v in zip(softmax([math.log(v / zt) / 0.1 for v, zt in zip(L[k], z)]), L[k])]
        assert W[k] == pytest.approx([x / sum(g) for x in g], rel=1e-3)


def _check_moves_off_uniform(L, W):  # gradient-based weights: the run is not `none`
    assert any(w != pytest.approx([0.25] * 4, abs=1e-3) for w in W)


def _check_none(L, W):
    assert all(w == pytest.approx([0.25] * 4) for w in W)


def _check_minimax(L, W):  # alpha 1, constant: w = softmax(L), the larger loss the larger weight
    for losses, w, want in zip(L, W, minimax_weights(L, alpha=1.0)):
        assert w == pytest.approx(want, rel=1e-3, abs=1e-12)
        assert max(range(4), key=lambda t: w[t]) == max(range(4), key=lambda t: losses[t])


def _check_gradnorm(L, W):  # p = 0 at the first step, then moved by GradNorm's update
    assert_uniform_then_moving(W, tol=1e-3)


def _check_excessmtl(L, W):  # q uniform at step 0 (every ratio E_t / E_t(0) is 1), then moved by eta r
    assert W[0] == pytest.approx([0.25] * 4)
    _check_moves_off_uniform(L, W[1:])


def _check_famo(L, W):  # w ~ softmax(xi) / L; xi: Adam (lr 0.025, decay 1e-3) on J^T (log L(k-1) - log L(k))
    xi, m, v = [0.0] * 4, [0.0] * 4, [0.0] * 4
    for k in range(len(W)):
        if k > 0:
            z = softmax(xi)
            d = [math.log(a) - math.log(b) for a, b in zip(L[k - 1], L[k])]
            zd = sum(p * x for p, x in zip(z, d))
            for t in range(4):
                g = z[t] * (d[t] - zd) + 1e-3 * xi[t]
                m[t], v[t] = 0.9 * m[t] + 0.1 * g, 0.999 * v[t] + 0.001 * g * g
                xi[t] -= 0.025 * (m[t] / (1 - 0.9**k)) / (math.sqrt(v[t] / (1 - 0.999**k)) + 1e-8)
        q = [p / x for p, x in zip(softmax(xi), L[k])]
        assert W[k] == pytest.approx([x / sum(q) for x in q], rel=1e-3)
    assert xi != [0.0] * 4


def _check_rlw(L, W):  # w_k = softmax of the k-th N(0, I) draw of a generator seeded with the run's seed (0)
    for w, want in zip(W, rlw_weights(seed=0, num_tasks=4, steps=len(W))):
        assert w == pytest.approx(want, rel=1e-4)


def _check_gls(L, W):  # w ~ 1 / L: the direction of the geometric mean's gradient
    for losses, w in zip(L, W):
        inverse = [1 / x for x in losses]
        assert w == pytest.approx([x / sum(inverse) for x in inverse], rel=1e-4)


BALANCER_CHECKS = {
    "none": ([], _check_none),
    "vanilla": ([], _check_none),  # every convex task has one target per sample: equal counts, equal weights
    "minimax": ([], _check_minimax),
    "uncertainty": (["module.optimizer.lr=0.05"], _check_uncertainty),
    "gradnorm": ([], _check_gradnorm),
    "dwa": (["balancer.window=1"], _check_dwa),
    "groupdro": ([], _check_groupdro),
    "stch": (["balancer.warmup=2"], _check_stch),
    # theta_0 = 0 sits among the task optima, so the task gradients conflict (with the default theta_0 far
    # from all of them they do not, and pcgrad / upgrad reduce to `none`)
    "mgda": (["model.init_scale=0.0"], _check_moves_off_uniform),
    "pcgrad": (["model.init_scale=0.0"], _check_moves_off_uniform),
    "upgrad": (["model.init_scale=0.0"], _check_moves_off_uniform),
    # eta 1: with the default 0.01 the weights barely move in 4 steps
    "excessmtl": (["balancer.robust_step_size=1.0"], _check_excessmtl),
    "famo": ([], _check_famo),
    "dbmtl": ([], _check_moves_off_uniform),
    "rlw": ([], _check_rlw),
    "gls": ([], _check_gls),
}


@pytest.mark.parametrize(  # whole pipelines: all but minimax's are `slow` (the quick loop keeps one)
    "balancer", [pytest.param(b, marks=() if b == "minimax" else pytest.mark.slow) for b in BALANCER_CHECKS]
)
def test_every_balancer_config_runs_the_convex_experiment(tmp_path, balancer):
    """Every balancer config runs the convex experiment end to end, and the weights it applied (the run's
    csv/metrics.csv, as the sweep's figures read it) are the ones its equation gives for the logged task losses;
    results.json's final losses and weights are their means over the run's 4 steps (window 20)."""
    from helpers import run_pipeline

    from runner.figures import read_history

    extra, check = BALANCER_CHECKS[balancer]
    res = run_pipeline(
        ["experiment=convex", "debug=smoke", "logger=csv", f"balancer={balancer}", *extra], tmp_path
    )
    assert res["balancer"] == balancer
    assert len(res["downstream"]) == 8
    h = read_history(tmp_path)
    assert h["step"] == [0, 1, 2, 3]
    L = [[h[f"loss/task{t}"][k] for t in range(4)] for k in range(4)]
    W = [[h[f"weight/task{t}"][k] for t in range(4)] for k in range(4)]
    for t in range(4):
        assert res["upstream"][f"task{t}"] == pytest.approx(sum(h[f"loss/task{t}"]) / 4, rel=1e-5)
        assert res["weights"]["final"][f"task{t}"] == pytest.approx(sum(h[f"weight/task{t}"]) / 4, rel=1e-5)
    assert L[0] != pytest.approx([L[0][0]] * 4, rel=0.05)  # unequal losses: the methods differ
    if balancer != "uncertainty":  # uncertainty's effective weights exp(-s)/T need not sum to 1
        assert all(sum(w) == pytest.approx(1.0, rel=1e-4) and min(w) >= 0 for w in W)
    check(L, W)
