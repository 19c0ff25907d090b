"""Each balancer's weights on given losses against values computed by hand from its formula."""

import math

import pytest
import torch
from oracles import gradnorm_first_logit_grad, softmax

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


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_none_is_the_average():
    out = NoBalancing(3)(t(1.0, 2.0, 6.0))
    assert out.weights.tolist() == pytest.approx([1 / 3] * 3)
    assert float(out.loss) == pytest.approx(3.0)


def test_minimax_weights_are_softmax_of_alpha_times_losses():
    out = Minimax(3, alpha=1.0)(t(1.0, 2.0, 3.0))
    expected = softmax([1.0, 2.0, 3.0])
    assert out.weights.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(sum(w * v for w, v in zip(expected, [1, 2, 3])), rel=1e-5)
    out = Minimax(3, alpha=2.5)(t(1.0, 2.0, 3.0))
    assert out.weights.tolist() == pytest.approx(softmax([2.5, 5.0, 7.5]), rel=1e-5)


def test_minimax_limits_uniform_and_argmax():
    losses = t(0.3, 1.7, 0.9)
    assert Minimax(3, alpha=1e-6)(losses).weights.tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert Minimax(3, alpha=0)(losses).weights.tolist() == pytest.approx([1 / 3] * 3)
    assert Minimax(3, alpha=200.0)(losses).weights.tolist() == pytest.approx([0, 1, 0], abs=1e-6)
    assert Minimax(3, alpha="inf")(losses).weights.tolist() == [0, 1, 0]
    assert Minimax(3, alpha=float("inf"))(t(2.0, 2.0, 1.0)).weights.tolist() == [0.5, 0.5, 0]


def test_minimax_sqrt_schedule_of_theorem_3_1():
    b = Minimax(2, alpha=0.5, schedule="sqrt")
    losses = t(1.0, 2.0)
    for k in range(4):
        w = b(losses).weights
        a = 0.5 * math.sqrt(k + 1)
        assert w.tolist() == pytest.approx(softmax([a * 1.0, a * 2.0]), rel=1e-5)


def test_minimax_ema_and_floor():
    b = Minimax(2, alpha=1.0, ema=0.5)
    assert b(t(1.0, 2.0)).weights.tolist() == pytest.approx(softmax([1.0, 2.0]), rel=1e-5)
    # m = 0.5 * [1, 2] + 0.5 * [3, 0] = [2, 1]
    assert b(t(3.0, 0.0)).weights.tolist() == pytest.approx(softmax([2.0, 1.0]), rel=1e-5)
    w = Minimax(2, alpha=1.0, floor=0.3)(t(1.0, 2.0)).weights
    assert w.tolist() == pytest.approx([0.7 * p + 0.15 for p in softmax([1.0, 2.0])], rel=1e-5)


def test_minimax_gradient_equals_torchjd_smooth_tchebycheff():
    """sum_t softmax(alpha L)_t grad L_t == grad of STCH(mu=1/alpha, unit preferences): minimax is the
    smooth Tchebycheff scalarisation."""
    from torchjd.scalarization import STCH as TorchJDSTCH

    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    targets = torch.randn(3, 5)
    for alpha in (0.5, 1.0, 4.0):
        losses = ((theta - targets) ** 2).sum(1)
        (g_ours,) = torch.autograd.grad(Minimax(3, alpha=alpha)(losses).loss, theta)
        losses = ((theta - targets) ** 2).sum(1)
        (g_ref,) = torch.autograd.grad(TorchJDSTCH(mu=1 / alpha, weights=torch.ones(3))(losses), theta)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_weights_use_detached_losses_so_gradient_is_weighted_sum():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = torch.stack([theta[0] ** 2, theta[1] ** 2])  # [1, 4]
    out = Minimax(2, alpha=1.0)(losses)
    out.loss.backward()
    w = softmax([1.0, 4.0])
    assert theta.grad.tolist() == pytest.approx([w[0] * 2.0, w[1] * 4.0], rel=1e-5)


def test_uncertainty_objective_and_gradient():
    b = Uncertainty(2)
    with torch.no_grad():
        b.log_var.copy_(t(0.0, math.log(2.0)))
    losses = t(1.0, 3.0)
    out = b(losses)
    assert out.weights.tolist() == pytest.approx([0.5, 0.25])
    assert float(out.loss.detach()) == pytest.approx(0.5 * (1.0 + 1.5 + math.log(2.0)), rel=1e-6)
    out.loss.backward()
    # d/ds_t (1/T)(exp(-s_t) L_t + s_t) = (1 - exp(-s_t) L_t) / T
    assert b.log_var.grad.tolist() == pytest.approx([0.0, 0.5 * (1 - 1.5)], abs=1e-6)


def test_groupdro_exponentiated_gradient_on_cumulative_losses():
    b = GroupDRO(2, eta=0.5)
    assert b(t(1.0, 3.0)).weights.tolist() == pytest.approx(softmax([0.5, 1.5]), rel=1e-5)
    assert b(t(1.0, 3.0)).weights.tolist() == pytest.approx(softmax([1.0, 3.0]), rel=1e-5)


def test_vanilla_weights_are_the_target_shares_and_its_scalar_the_token_mean():
    """vanilla (plain BERT): w_t = n_t / sum n, so sum_t w_t L_t = sum_t S_t / sum_t n_t; `none` averages L_t."""
    sums, counts = t(2.0, 9.0, 30.0), t(10.0, 30.0, 60.0)
    theta = torch.ones(3, requires_grad=True)
    out = Vanilla(3)(theta * sums / counts, counts=counts)
    assert out.weights.tolist() == pytest.approx([0.1, 0.3, 0.6])
    assert float(out.loss.detach()) == pytest.approx(41.0 / 100.0)  # the mean over all 100 targets
    out.loss.backward()
    assert theta.grad.tolist() == pytest.approx((sums / 100.0).tolist())  # every target weighs 1/100
    assert float(NoBalancing(3)(sums / counts).loss) == pytest.approx((0.2 + 0.3 + 0.5) / 3)  # differs
    absent = Vanilla(3)(t(0.5, 0.0, 2.0), present=torch.tensor([True, False, True]), counts=t(3.0, 0.0, 1.0))
    assert absent.weights.tolist() == pytest.approx([0.75, 0.0, 0.25])
    with pytest.raises(ValueError, match="counts"):
        Vanilla(3)(sums)


def test_reference_normalisation_weighs_the_excess_loss():
    """normalize=reference: minimax w = softmax(alpha (L - ref)); groupdro q <- q exp(eta (L - ref));
    the scalar stays sum_t w_t L_t on the raw losses."""
    ref = [1.0, 0.5, 2.5]
    losses = t(1.5, 1.0, 2.7)
    out = Minimax(3, alpha=2.0, normalize="reference", reference=ref)(losses)
    expected = softmax([2.0 * 0.5, 2.0 * 0.5, 2.0 * 0.2])
    assert out.weights.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(sum(w * v for w, v in zip(expected, [1.5, 1.0, 2.7])), rel=1e-5)
    assert out.weights.tolist() != pytest.approx(Minimax(3, alpha=2.0)(losses).weights.tolist(), rel=1e-3)
    b = GroupDRO(3, eta=0.5, normalize="reference", reference=ref)
    assert b(losses).weights.tolist() == pytest.approx(softmax([0.25, 0.25, 0.1]), rel=1e-5)
    assert b(t(1.0, 1.5, 3.5)).weights.tolist() == pytest.approx(softmax([0.25, 0.75, 0.6]), rel=1e-5)


def test_initial_normalisation_divides_by_the_mean_of_the_first_steps():
    """normalize=initial, 2 steps: L_init = a task's mean loss over its first 2 steps with targets (the mean
    so far before that); then w = softmax(alpha L / L_init)."""
    b = Minimax(2, alpha=1.0, normalize="initial", normalize_steps=2)
    assert b(t(2.0, 4.0)).weights.tolist() == pytest.approx([0.5, 0.5])  # ratios 1
    # task 1 absent: its count stays 1 (L_init so far 4); task 0's window closes at mean 3
    w = b(t(4.0, 0.0), present=torch.tensor([True, False])).weights
    assert w.tolist() == pytest.approx(softmax([4.0 / 3.0, 1.0]), rel=1e-5)  # task 1: last loss 4 / 4
    assert b(t(3.0, 2.0)).weights.tolist() == pytest.approx(
        softmax([1.0, 2.0 / 3.0]), rel=1e-5
    )  # L_init [3, 3]
    for losses in ([6.0, 3.0], [1.5, 12.0]):  # window closed: L_init stays [3, 3]
        expected = softmax([v / 3.0 for v in losses])
        assert b(t(*losses)).weights.tolist() == pytest.approx(expected, rel=1e-5)
    g = GroupDRO(2, eta=1.0, normalize="initial", normalize_steps=1)
    assert g(t(2.0, 4.0)).weights.tolist() == pytest.approx([0.5, 0.5])
    assert g(t(4.0, 4.0)).weights.tolist() == pytest.approx(softmax([1.0 + 2.0, 1.0 + 1.0]), rel=1e-5)


def test_dwa_uniform_for_two_epochs_then_softmax_of_loss_ratios():
    b = DWA(2, temperature=2.0)
    assert b(t(4.0, 4.0)).weights.tolist() == pytest.approx([0.5, 0.5])
    b.end_epoch()
    assert b(t(2.0, 3.0)).weights.tolist() == pytest.approx([0.5, 0.5])
    b(t(2.0, 3.0))  # epoch mean stays [2, 3]
    b.end_epoch()
    w = b(t(9.0, 9.0)).weights  # current losses do not matter within the epoch
    assert w.tolist() == pytest.approx(softmax([0.5 / 2.0, 0.75 / 2.0]), rel=1e-5)


def test_dwa_window_counts_steps_as_epochs():
    b = DWA(2, temperature=1.0, window=2)
    for losses in ([4.0, 2.0], [4.0, 2.0], [2.0, 2.0], [2.0, 2.0]):
        assert b(t(*losses)).weights.tolist() == pytest.approx([0.5, 0.5])
    assert b(t(1.0, 1.0)).weights.tolist() == pytest.approx(softmax([0.5, 1.0]), rel=1e-5)


def test_stch_nadir_from_warmup_then_normalised_log_weights():
    b = STCH(2, mu=1.0, warmup=2)
    assert b(t(1.0, 2.0)).weights.tolist() == pytest.approx([0.5, 0.5])
    assert b(t(3.0, 2.0)).weights.tolist() == pytest.approx([0.5, 0.5])
    # nadir z = [2, 2]; mu = 1: d/dL_t log sum L_s/z_s = (1/z_t) / sum(L/z): equal weights
    assert b(t(2.0, 4.0)).weights.tolist() == pytest.approx([0.5, 0.5], rel=1e-5)
    b = STCH(2, mu=0.5, warmup=2)
    b(t(1.0, 2.0))
    b(t(3.0, 2.0))
    # softmax(2 * [0, log 2]) = [1/5, 4/5]; divided by L = [2, 4] -> [0.1, 0.2] -> [1/3, 2/3]
    assert b(t(2.0, 4.0)).weights.tolist() == pytest.approx([1 / 3, 2 / 3], rel=1e-5)


def test_gradnorm_balances_gradient_norms_on_the_shared_layer():
    W = torch.ones(2, requires_grad=True)
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # grad_W L_t = g_t, norms [3, 1]
    b = GradNorm(2, asymmetry=1.5, lr=None, mode="shared_params")
    losses = g @ W
    out = b(losses, shared_params=[W])
    assert out.weights.tolist() == pytest.approx([0.5, 0.5])
    out.loss.backward()
    # model gets sum_t stopgrad(w_t) L_t
    assert W.grad.tolist() == pytest.approx([1.5, 0.5])
    # G = [1.5, 0.5], Gbar = 1, r = [1, 1] (first step): d/dp sum |w_t n_t - 1| = [1, -1]
    assert b.logits.grad.tolist() == pytest.approx(gradnorm_first_logit_grad([3.0, 1.0]), rel=1e-5)
    assert gradnorm_first_logit_grad([3.0, 1.0]) == pytest.approx([1.0, -1.0])
    with torch.no_grad():
        b.logits -= 0.1 * b.logits.grad
    assert b(g @ W, shared_params=[W]).weights[1] > 0.5  # the task with the smaller gradient gains weight


def test_gradnorm_features_mode_takes_the_norms_on_the_representation_or_the_callers_gradients():
    """mode=features (the default): the norms of grad_h L_t, from the batched backward given ``features`` or
    from the caller's ``feature_grads`` (the callback's one backward); both give the same update of p."""
    h = torch.ones(2, 2, requires_grad=True)  # two rows of a width-2 representation
    J = torch.tensor([[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])  # grad_h L_t, norms [3, 1]
    grads = []
    for kwargs in ({"features": h}, {"feature_grads": J}):
        b = GradNorm(2, asymmetry=1.5, lr=None)
        assert b.requires == frozenset({"features"})
        out = b((J * h).sum(dim=(1, 2)), **kwargs)
        out.loss.backward()
        grads.append(b.logits.grad.clone())
    assert grads[0].tolist() == pytest.approx([1.0, -1.0], rel=1e-5)  # as on the shared layer above
    assert grads[1].tolist() == pytest.approx(grads[0].tolist())
    with pytest.raises(ConfigError, match="features"):
        GradNorm(2)(torch.ones(2, requires_grad=True) * 2)


def test_gradient_aggregators_use_torchjd_weightings():
    f = torch.ones(2, requires_grad=True)
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # MGDA: min-norm point of the hull of g1=[1,0], g2=[0,2] is a=4/5
    out = GradientAggregator(2, method="mgda")(J @ f, features=f)
    assert out.weights.tolist() == pytest.approx([0.8, 0.2], abs=1e-4)
    # no conflict: UPGrad and PCGrad reduce to the mean
    assert GradientAggregator(2, method="upgrad")(J @ f, features=f).weights.tolist() == pytest.approx(
        [0.5, 0.5], abs=1e-4
    )
    assert GradientAggregator(2, method="pcgrad")(J @ f, features=f).weights.tolist() == pytest.approx(
        [0.5, 0.5], abs=1e-4
    )


def test_upgrad_direction_matches_torchjd_aggregator_on_conflicting_gradients():
    from torchjd.aggregation import UPGrad

    f = torch.zeros(3, requires_grad=True)
    J = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 1.0, 0.5], [0.2, -1.0, 0.0]])
    out = GradientAggregator(3, method="upgrad")(J @ f, features=f)
    out.loss.backward()
    ref = UPGrad()(J)
    cos = torch.nn.functional.cosine_similarity(f.grad, ref, dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Minimax(3, alpha=2.0, ema=0.9, schedule="sqrt"),
        lambda: Minimax(3, alpha=2.0, normalize="initial", normalize_steps=7),  # resumed mid-window
        lambda: GroupDRO(3, eta=0.1, normalize="initial", normalize_steps=7),
        lambda: RLW(3, distribution="dirichlet", concentration=2.0, seed=4),
    ],
)
def test_state_survives_a_state_dict_round_trip(make):
    """Settings no config file has (EMA with the sqrt schedule, normalize=initial, Dirichlet draws); every
    balancer config's round trip is in test_balancer_properties.py."""
    torch.manual_seed(0)
    W = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(4)

    def step(b, scale):
        losses = (W @ x).pow(2) * torch.tensor([scale, 1.0, scale**2])
        out = b(losses, shared_params=[W])
        if any(p.requires_grad for p in b.parameters()):
            grads = torch.autograd.grad(out.loss, list(b.parameters()))
            with torch.no_grad():
                for p, gr in zip(b.parameters(), grads):
                    p -= 0.1 * gr
        return out.weights

    a = make()
    for s in (1.0, 0.5, 2.0, 0.3, 1.5):
        step(a, s)
    b = make()
    b.load_state_dict(a.state_dict())
    for s in (0.7, 1.1, 0.2):
        torch.testing.assert_close(step(a, s), step(b, s))
    fresh = make()
    assert not torch.allclose(step(fresh, 0.9), step(a, 0.9))  # the state matters


def test_absent_task_gets_no_gradient_and_nothing_becomes_nan():
    theta = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = Minimax(3, alpha=1.0)
    first = b(theta**2, present=torch.tensor([True, False, True]))
    assert first.weights[1] == 0  # never seen: left out of the softmax
    assert first.weights.sum() == pytest.approx(1.0)
    first.loss.backward()
    assert theta.grad[1] == 0
    theta.grad = None
    b(theta**2)  # now every task is seen: last losses [1, 4, 9]
    losses = torch.stack([theta[0] ** 2, torch.tensor(float("nan")), theta[2] ** 2])
    out = b(losses, present=torch.tensor([True, False, True]))
    assert out.weights.tolist() == pytest.approx(softmax([1.0, 4.0, 9.0]), rel=1e-5)  # last known loss
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(theta.grad).all()
    assert theta.grad[1] == 0


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: Minimax(3, alpha=-1.0), "balancer.alpha"),
        (lambda: Minimax(3, schedule="cosine"), "balancer.schedule"),
        (lambda: DWA(3, temperature=0.0), "balancer.temperature"),
        (lambda: GroupDRO(3, eta=-0.1), "balancer.eta"),
        (lambda: STCH(3, mu=0.0), "balancer.mu"),
        (lambda: GradientAggregator(3, method="nash"), "balancer.method"),
        (lambda: NoBalancing(0), "at least one"),
        (lambda: Minimax(3, normalize="zscore"), "balancer.normalize"),
        (lambda: GroupDRO(3, normalize="initial", normalize_steps=0), "balancer.normalize_steps"),
        (lambda: Minimax(3, normalize="reference", reference=[1.0] * 3, reference_from="run"), "not both"),
        (lambda: Minimax(3, normalize="reference", reference=[1.0, 2.0]), "balancer.reference must give 3"),
        (lambda: GroupDRO(3, normalize="reference", reference=[1.0, "x", 2.0]), "balancer.reference must be"),
        (lambda: ExcessMTL(3, robust_step_size=0.0), "balancer.robust_step_size"),
        (lambda: ExcessMTL(3, mode="all"), "balancer.mode"),
        (lambda: FAMO(3, lr=0.0), "balancer.lr"),
        (lambda: FAMO(3, weight_decay=-1.0), "balancer.weight_decay"),
        (lambda: FAMO(3, min_loss=[0.0, 0.1]), "balancer.min_loss"),
        (lambda: DBMTL(3, beta=1.0), "balancer.beta"),
        (lambda: DBMTL(3, mode="params"), "balancer.mode"),
        (lambda: RLW(3, distribution="uniform"), "balancer.distribution"),
        (lambda: RLW(3, distribution="dirichlet", concentration=0.0), "balancer.concentration"),
    ],
)
def test_impossible_values_fail_naming_the_key(make, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make()


# -- every method against its equation's direction, on unequal losses ---------------------------------
# Each scenario takes a factory ``make(num_tasks)`` and says whether the weights it produced moved the
# way the method's equation says; the test also runs it with `none` (or, for `none`, with minimax) and
# requires that to fail, so a balancer that ignored its losses or gradients could not pass.


def _uniform_for_unequal_losses(make):
    b = make(3)
    return all(b(t(1.0, 2.0, 6.0)).weights.tolist() == pytest.approx([1 / 3] * 3) for _ in range(3))


def _larger_loss_larger_weight(make):
    """minimax: w = softmax(alpha L) is increasing in L, at every step."""
    b = make(3)
    for losses in ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]):
        w = b(t(*losses)).weights.tolist()
        if sorted(range(3), key=lambda i: w[i]) != sorted(range(3), key=lambda i: losses[i]):
            return False
        if not w[losses.index(3.0)] > 1 / 3 + 0.1:
            return False
    return True


def _cumulative_losses_decide(make):
    """groupdro: q ~ exp(eta * sum of past losses): the weight of the larger loss grows step after step,
    and outlives a swap of the current losses (where minimax's would flip)."""
    b = make(2)
    w = [b(t(1.0, 3.0)).weights[1].item() for _ in range(3)]
    after_swap = b(t(3.0, 1.0)).weights[1].item()
    return 0.5 < w[0] < w[1] < w[2] and after_swap > 0.5


def _slower_task_gains_weight(make):
    """dwa (window 1): after two windows, w = softmax(r / T) with r = L(e-1) / L(e-2): task 0's loss
    halved, task 1's stayed, so task 1 gets the larger weight."""
    b = make(2)
    for losses in ([4.0, 3.0], [2.0, 3.0]):
        b(t(*losses))
    w = b(t(2.0, 3.0)).weights.tolist()
    return w == pytest.approx(softmax([0.5 / 2.0, 1.0 / 2.0]), rel=1e-5)


def _weights_follow_exp_minus_s(make):
    """uncertainty: SGD on (1/T) sum (exp(-s) L + s) drives s_t to log L_t; the effective weights are
    exp(-s_t)/T, so the task with the larger loss ends with the smaller weight."""
    b = make(2)
    params = list(b.parameters())
    for _ in range(300):
        out = b(t(1.0, 4.0))
        grads = torch.autograd.grad(out.loss, params) if params else []
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.5 * g
    if not params:
        return False
    w = b(t(1.0, 4.0)).weights.tolist()
    follows_s = w == pytest.approx((torch.exp(-b.log_var.detach()) / 2).tolist())
    return follows_s and w == pytest.approx([0.5 / 1.0, 0.5 / 4.0], rel=0.05)


def _weighted_gradient_norms_equalise(make):
    """gradnorm: with gradient norms [3, 1] on the shared layer and equal training rates, updating p
    drives the weighted norms w_t ||g_t|| together (towards w = [1/4, 3/4])."""
    W = torch.ones(2, requires_grad=True)
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    b = make(2)
    params = list(b.parameters())
    gaps = []
    for _ in range(40):
        out = b(g @ W, shared_params=[W])
        w = out.weights
        gaps.append(abs(3 * w[0] - w[1]).item())
        if params:
            grads = torch.autograd.grad(out.loss, params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p -= 0.05 * gr
    return gaps[-1] < 0.2 * gaps[0] and b(g @ W, shared_params=[W]).weights[1] > 0.6


def _relatively_worse_task_gains_weight(make):
    """stch (mu 0.1, warm-up 2, nadir z = [1, 1]): losses [1, 2] put task 1 far above its nadir, so
    nearly all the weight goes to it."""
    b = make(2)
    b(t(1.0, 1.0))
    b(t(1.0, 1.0))
    return b(t(1.0, 2.0)).weights[1].item() > 0.9


def _smaller_gradient_gains_weight(make):
    """mgda: the min-norm point of the hull of g1 = [1, 0], g2 = [0, 2] weighs the smaller gradient 4/5."""
    f = torch.ones(2, requires_grad=True)
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    return make(2)(J @ f, features=f).weights.tolist() == pytest.approx([0.8, 0.2], abs=1e-4)


def _update_conflicts_with_no_task(make):
    """upgrad / pcgrad: with g1 = [1, 0] and g2 = [-2, 0.5] the mean direction opposes g1; the method's
    direction J^T w has a non-negative inner product with every task gradient."""
    f = torch.zeros(2, requires_grad=True)
    J = torch.tensor([[1.0, 0.0], [-2.0, 0.5]])
    make(2)(J @ f, features=f).loss.backward()
    return bool((J @ f.grad >= -1e-6).all())


def _task_far_from_convergence_gains_weight(make):
    """excessmtl: task 0's gradient halves every step (its excess risk g^T H^-1 g falls fast), task 1's stays
    (its estimate falls only as 1/sqrt(k) with the AdaGrad curvature): task 1 gains weight, step after step."""
    b = make(2)
    w1 = []
    for k in range(6):
        W = torch.ones(2, requires_grad=True)
        losses = torch.tensor([[0.5**k, 0.0], [0.0, 1.0]]) @ W + 1.0
        w1.append(b(losses, shared_params=[W]).weights[1].item())
    return w1[0] == pytest.approx(0.5) and all(a < b for a, b in zip(w1[1:], w1[2:])) and w1[-1] > 0.6


def _slower_decrease_gains_logit(make):
    """famo: at the first step w ~ z / L with z uniform, i.e. 1/L; then z = w L / sum(w L) moves toward the
    task whose log-loss falls less (task 1, flat, against task 0 halving every step)."""
    b = make(2)
    steps = [[2.0 * 0.5**k, 1.0] for k in range(5)]
    zs = []
    for losses in steps:
        w = b(t(*losses)).weights.tolist()
        zs.append(w[1] * losses[1] / (w[0] * losses[0] + w[1] * losses[1]))
    return zs[0] == pytest.approx(0.5) and all(a < b for a, b in zip(zs, zs[1:]))


def _weighted_log_gradient_norms_equalise(make):
    """dbmtl: equal losses [3, 3] with gradients [3, 0] and [0, 1]: the log-loss gradients have norms
    [1, 1/3], scaled to the largest (alpha = [1, 3]), so w = [1, 3] / 4."""
    W = torch.ones(2, requires_grad=True)
    losses = torch.tensor([[3.0, 0.0], [0.0, 1.0]]) @ W + torch.tensor([0.0, 2.0])
    return make(2)(losses, shared_params=[W]).weights.tolist() == pytest.approx([0.25, 0.75], rel=1e-5)


def _fresh_random_weights_every_step(make):
    """rlw: identical losses, different weights every step, on the simplex, averaging 1/T."""
    b = make(3)
    ws = torch.stack([b(t(1.0, 2.0, 3.0)).weights for _ in range(300)])
    distinct = not torch.allclose(ws[0], ws[1])
    return distinct and bool((ws > 0).all()) and ws.mean(0).tolist() == pytest.approx([1 / 3] * 3, abs=0.03)


def _smaller_loss_larger_weight(make):
    """gls: the gradient of (prod L_t)^(1/T) weighs each task by 1/L_t: [1, 2, 4] -> [4, 2, 1] / 7."""
    b = make(3)
    return all(b(t(1.0, 2.0, 4.0)).weights.tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7]) for _ in range(2))


def _agg(method):
    return lambda num_tasks: GradientAggregator(num_tasks, method=method)


DIRECTIONS = {
    "none": (NoBalancing, _uniform_for_unequal_losses),
    "minimax": (lambda n: Minimax(n, alpha=1.0), _larger_loss_larger_weight),
    "groupdro": (lambda n: GroupDRO(n, eta=0.5), _cumulative_losses_decide),
    "dwa": (lambda n: DWA(n, temperature=2.0, window=1), _slower_task_gains_weight),
    "uncertainty": (Uncertainty, _weights_follow_exp_minus_s),
    "gradnorm": (lambda n: GradNorm(n, lr=None, mode="shared_params"), _weighted_gradient_norms_equalise),
    "stch": (lambda n: STCH(n, mu=0.1, warmup=2), _relatively_worse_task_gains_weight),
    "mgda": (_agg("mgda"), _smaller_gradient_gains_weight),
    "upgrad": (_agg("upgrad"), _update_conflicts_with_no_task),
    "pcgrad": (_agg("pcgrad"), _update_conflicts_with_no_task),
    "excessmtl": (lambda n: ExcessMTL(n, robust_step_size=1.0), _task_far_from_convergence_gains_weight),
    "famo": (lambda n: FAMO(n, lr=0.1), _slower_decrease_gains_logit),
    "dbmtl": (DBMTL, _weighted_log_gradient_norms_equalise),
    "rlw": (RLW, _fresh_random_weights_every_step),
    "gls": (GLS, _smaller_loss_larger_weight),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_each_method_moves_the_weights_the_way_its_equation_says(name):
    make, scenario = DIRECTIONS[name]
    assert scenario(make)
    other = (lambda n: Minimax(n, alpha=1.0)) if name == "none" else NoBalancing
    assert not scenario(other)  # the scenario tells the method apart from `none`


def test_groupdro_and_minimax_differ_when_the_losses_swap():
    """Minimax weighs the current losses, GroupDRO the cumulative ones."""
    assert not _cumulative_losses_decide(lambda n: Minimax(n, alpha=0.5))
