"""Reference formulas the test files check the balancers against (``from oracles import ...``).

Each is written out from the method's equation in plain Python, without the project's code: a reference that
called the code under test could not disagree with it. A step's losses are listed in task order, ``None`` for a
task absent from that step (no targets).
"""

import math
from collections.abc import Sequence

Losses = Sequence[float | None]


def softmax(xs: Sequence[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def normalise(xs: Sequence[float]) -> list[float]:
    return [x / sum(xs) for x in xs]


def minimax_weights(
    steps: Sequence[Losses], alpha: float = 1.0, ema: float | None = None
) -> list[list[float]]:
    """minimax: w = softmax(alpha m) over the tasks seen so far (0 for a task never seen), m a task's last known
    loss (an absent task's last loss stands in for its current one); with ``ema``, m <- ema m + (1 - ema) L,
    started by the task's first loss."""
    num = len(steps[0])
    last: list[float | None] = [None] * num
    m: list[float | None] = [None] * num
    out = []
    for losses in steps:
        last = [v if v is not None else u for v, u in zip(losses, last)]
        m = [
            None if v is None else (v if mm is None or ema is None else ema * mm + (1 - ema) * v)
            for v, mm in zip(last, m)
        ]
        known = [t for t in range(num) if m[t] is not None]
        weights = [0.0] * num
        for t, p in zip(known, softmax([alpha * m[t] for t in known])):
            weights[t] = p
        out.append(weights)
    return out


def dwa_window_means(steps: Sequence[Losses], window: int) -> list[list[float]]:
    """Each full window's mean of every task's (unweighted) losses; a task absent the whole window keeps its
    previous mean (in the first window it gets the mean of the other tasks' means)."""
    means: list[list[float]] = []
    for e in range(len(steps) // window):
        cols = [[v for v in col if v is not None] for col in zip(*steps[e * window : (e + 1) * window])]
        mean = {t: sum(c) / len(c) for t, c in enumerate(cols) if c}
        fill = [means[-1][t] if means else sum(mean.values()) / len(mean) for t in range(len(cols))]
        means.append([mean.get(t, fill[t]) for t in range(len(cols))])
    return means


def dwa_weights(steps: Sequence[Losses], window: int, temperature: float = 2.0) -> list[list[float]]:
    """dwa: uniform for the first two windows of ``window`` steps, then w = softmax(r / temperature) with
    r_t = Lbar_t(e-1) / Lbar_t(e-2), the window means of :func:`dwa_window_means`."""
    num = len(steps[0])
    means = dwa_window_means(steps, window)
    out = []
    for k in range(len(steps)):
        e = k // window
        if e < 2:
            out.append([1 / num] * num)
        else:
            out.append(softmax([a / b / temperature for a, b in zip(means[e - 1], means[e - 2])]))
    return out


def uncertainty_weights(steps: Sequence[Losses], lr: float) -> list[list[float]]:
    """uncertainty: w_t = exp(-s_t) / T with s = 0 at first; SGD (``lr``) on (1/T) sum_t (exp(-s_t) L_t + s_t)
    moves a present task's s_t by -lr (1 - exp(-s_t) L_t) / T after each step."""
    num = len(steps[0])
    s = [0.0] * num
    out = []
    for losses in steps:
        out.append([math.exp(-x) / num for x in s])
        s = [x if v is None else x - lr * (1 - math.exp(-x) * v) / num for x, v in zip(s, losses)]
    return out


def rlw_weights(seed: int, num_tasks: int, steps: int) -> list[list[float]]:
    """rlw (normal draws): step k's weights are the softmax of the k-th standard-normal draw of a torch
    generator seeded with ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [softmax(torch.randn(num_tasks, generator=g).tolist()) for _ in range(steps)]


def gradnorm_first_logit_grad(norms: Sequence[float]) -> list[float]:
    """gradnorm's gradient w.r.t. its logits p at the first step (p = 0, every training rate r_t = 1): of
    sum_s |G_s - mean(G)| with G_s = softmax(p)_s n_s and the target mean(G) held constant."""
    num = len(norms)
    w = [1 / num] * num
    g = [a * n for a, n in zip(w, norms)]
    target = sum(g) / num
    sign = [math.copysign(1.0, x - target) if x != target else 0.0 for x in g]
    total = sum(s * x for s, x in zip(sign, g))
    return [s * x - a * total for s, x, a in zip(sign, g, w)]


def assert_uniform_then_moving(weights: Sequence[Sequence[float]], tol: float) -> None:
    """Weights of a balancer whose logits start at 0 and are learnt (gradnorm, excessmtl's first step): uniform
    at the first step, farther than ``tol`` from uniform at every later one (not `none`)."""
    import pytest

    uniform = [1 / len(weights[0])] * len(weights[0])
    assert list(weights[0]) == pytest.approx(uniform)
    for k, w in enumerate(weights[1:], start=1):
        assert list(w) != pytest.approx(uniform, abs=tol), f"step {k}: still uniform"
