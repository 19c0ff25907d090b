"""Properties every balancer config has (every conf/balancer/*.yaml but random_init, which is no balancer),
built as a run builds it: the config's ``_target_`` with ``_partial_``, called with ``num_tasks``.

On a small shared-bottom model (shared layer ``W``, representation ``h``, one head per task) over a few steps,
some with a task absent (no targets: its loss is NaN and ``present`` false):

* the weights are finite, non-negative and sum to 1;
* the weights are permutation-equivariant: the tasks listed in another order get the same weights, reordered;
* an absent task adds no gradient: its head gets none, and nothing becomes NaN;
* a balancer loaded from another's ``state_dict()`` gives the same next weights, and (where it keeps state the
  weights depend on) a fresh one does not.

Weights against each method's equations: test_balancers.py and test_robust_balancers.py."""

from functools import cache

import pytest
import torch
from helpers import CONF_DIR, compose_config
from hydra.utils import instantiate

T = 4  # tasks
BALANCERS = sorted(p.stem for p in (CONF_DIR / "balancer").glob("*.yaml") if p.stem != "random_init")

#: config keys that make a balancer's state decide the weights within the few steps of these tests
#: (the defaults wait 100 steps (dwa) or 50 (stch) with uniform weights)
SHORT = {"dwa": ["balancer.window=2"], "stch": ["balancer.warmup=2"]}
#: the experiment gives normalize=reference its reference losses; here equal ones (permutation-invariant)
REFERENCE = [0.5] * T
#: balancers whose weights, with every task present, depend on the current step alone (losses, counts, gradients)
STATELESS = {"none", "vanilla", "gls", "minimax", "minimax_ref", "mgda", "pcgrad", "upgrad"}
#: exceptions to permutation-equivariance, with the reason
NOT_EQUIVARIANT = {
    "rlw": "draws random weights, whatever the losses: equivariant only in distribution",
    "pcgrad": "projects the task gradients in a random order (torch.randperm): equivariant only in distribution",
}
#: exceptions to weights summing to 1, with the reason
NOT_SUMMING_TO_ONE = {
    "uncertainty": "its effective weights exp(-s_t)/T sum to 1 only at initialisation (the method)",
}


@cache
def factory(name: str):
    """The balancer config's partial (``_target_`` with ``_partial_``), composed as a run composes it."""
    import tempfile
    from pathlib import Path

    cfg = compose_config(
        ["experiment=convex", f"balancer={name}", *SHORT.get(name, [])], Path(tempfile.gettempdir())
    )
    return instantiate(cfg.balancer)


def make(name: str):
    balancer = factory(name)(num_tasks=T)
    if getattr(balancer, "normalize", None) == "reference":
        balancer.set_reference(REFERENCE)
    return balancer


class SharedBottom:
    """``h = tanh(x W)`` shared, task t's loss the mean squared error of ``h v_t`` on the examples with a target
    for t (every example has one for task 0, every second for task 1, ...: the tasks share examples, so their
    gradients conflict); batch k is drawn from a generator seeded with k, so every balancer and every replay
    sees the same batches."""

    def __init__(self, seed: int = 0, dim: int = 6, width: int = 5):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.W = torch.randn(dim, width, generator=g).requires_grad_(True)
        self.heads = [torch.randn(width, generator=g).requires_grad_(True) for _ in range(T)]
        self.scale = torch.tensor([0.6, 0.8, 1.0, 0.3])  # unequal losses: the methods differ

    def batch(self, k: int, absent: tuple[int, ...] = ()):
        """(losses, present, counts, features) of batch k; an absent task has no targets (loss NaN)."""
        g = torch.Generator().manual_seed(1000 + k)
        x = torch.randn(16, self.dim, generator=g)
        y = torch.randn(16, T, generator=g)
        has = torch.stack([torch.arange(16) % (t + 1) == 0 for t in range(T)], dim=1)  # 16, 8, 6, 4 targets
        has[:, list(absent)] = False
        h = torch.tanh(x @ self.W)
        losses = torch.stack(
            [self.scale[t] * ((h[has[:, t]] @ self.heads[t] - y[has[:, t], t]) ** 2).mean() for t in range(T)]
        )
        counts = has.sum(0).float()
        return losses, counts > 0, counts, h


def step(balancer, model: SharedBottom, k: int, absent=(), order=None, lr: float = 0.1):
    """One training step's balancing: the balancer's weights for batch k (tasks listed in ``order``), its own
    parameters (uncertainty, gradnorm) moved by SGD as the optimizer would; returns (weights, scalar)."""
    losses, present, counts, h = model.batch(k, absent)
    order = torch.arange(T) if order is None else order
    out = balancer(losses[order], present[order], shared_params=[model.W], features=h, counts=counts[order])
    params = [p for p in balancer.parameters() if p.requires_grad]
    if params:
        grads = torch.autograd.grad(out.loss, params, retain_graph=True, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= lr * g
    return out.weights, out.loss


SCHEDULE = [(), (), (2,), (), (0, 3), (), ()]  # the absent tasks of each step


@pytest.mark.parametrize("name", BALANCERS)
def test_weights_are_finite_non_negative_and_sum_to_one(name):
    torch.manual_seed(0)
    balancer, model = make(name), SharedBottom()
    for k, absent in enumerate(SCHEDULE):
        w, loss = step(balancer, model, k, absent)
        assert w.shape == (T,) and torch.isfinite(w).all() and bool((w >= 0).all()), (k, w)
        assert torch.isfinite(loss), k
        if name not in NOT_SUMMING_TO_ONE or k == 0:
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-5), (k, w)


@pytest.mark.parametrize("name", BALANCERS)
def test_weights_are_permutation_equivariant(name):
    if name in NOT_EQUIVARIANT:
        pytest.skip(NOT_EQUIVARIANT[name])
    perm = torch.tensor([2, 0, 3, 1])
    torch.manual_seed(0)
    a, b, model = make(name), make(name), SharedBottom()
    for k, absent in enumerate(SCHEDULE[:4]):
        w, _ = step(a, model, k, absent)
        w_perm, _ = step(b, model, k, absent, order=perm)
        torch.testing.assert_close(w_perm, w[perm], rtol=1e-4, atol=1e-6, msg=f"step {k}")


@pytest.mark.parametrize("name", BALANCERS)
def test_an_absent_task_gets_no_gradient(name):
    """Task 1 absent at the first step (never seen) and again at the fourth (seen before): its head gets no
    gradient, and the shared layer's gradient and the scalar stay finite."""
    torch.manual_seed(0)
    balancer, model = make(name), SharedBottom()
    for k, absent in enumerate([(1,), (), (), (1,)]):
        _, loss = step(balancer, model, k, absent)
        head = model.heads[1]
        head_grad, shared_grad = torch.autograd.grad(loss, [head, model.W], allow_unused=True)
        assert torch.isfinite(loss), k
        assert shared_grad is not None and torch.isfinite(shared_grad).all(), k
        if absent:
            assert head_grad is None or bool((head_grad == 0).all()), (k, head_grad)
        else:
            assert head_grad is not None and bool((head_grad != 0).any()), k  # present: it does get one


@pytest.mark.parametrize("name", BALANCERS)
def test_state_dict_round_trip_gives_the_same_next_weights(name):
    torch.manual_seed(0)
    a, model = make(name), SharedBottom()
    for k, absent in enumerate(SCHEDULE[:5]):
        step(a, model, k, absent)
    b = make(name)
    b.load_state_dict(a.state_dict())
    rng = torch.get_rng_state()  # pcgrad's random order: both draw the same
    for k in range(5, 8):
        torch.set_rng_state(rng)
        w_a, _ = step(a, model, k)
        torch.set_rng_state(rng)
        w_b, _ = step(b, model, k)
        torch.testing.assert_close(w_b, w_a, msg=f"step {k}")
    if name not in STATELESS:
        torch.set_rng_state(rng)
        w_fresh, _ = step(make(name), model, 8)
        torch.set_rng_state(rng)
        w_a, _ = step(a, model, 8)
        assert not torch.allclose(w_fresh, w_a), "the state does not matter: the test would not see it lost"
