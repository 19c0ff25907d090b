"""Section 5 of the paper as tests: Proposition 5.1 and Remark 5.2 (Theorem 3.1: tests/test_theorem_3_1.py)."""

import math
from functools import partial

import lightning as L
import pytest
import torch
from helpers import SMALL_CONVEX_RUN, run_pipeline

from data.convex import QuadraticTasks, make_tasks
from pretrain.balancers import Minimax, NoBalancing


@pytest.mark.slow
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
    # what went downstream is Theorem 3.1's averaged iterate of the 600 steps (module.average_iterates=true),
    # not the last iterate: the export is the checkpoint's running average, and the reported risks are its own
    ckpt = torch.load(tmp_path / "minimax" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    exported = torch.load(tmp_path / "minimax" / "pretrained" / "theta.pt")
    assert int(ckpt["n_avg"]) == 600
    torch.testing.assert_close(exported["theta"], ckpt["theta_avg"])
    assert (ckpt["theta_avg"] - ckpt["model.theta"]).norm() > 0.1
    tasks = QuadraticTasks(B=exported["B"], c=exported["c"], sigma=1.0).to(torch.float64)
    risks = tasks.risks(exported["theta"].double()).tolist()
    assert mmx["pretrained"]["upstream_risks"] == pytest.approx(risks, rel=1e-9)


def algorithm_1(tasks, balancer, steps: int, lr: float, theta0: torch.Tensor, loss_fn=None, tail: int = 0):
    """Algorithm 1 with exact expected risks, K = ``steps``: iterates theta_0..theta_{K-1}, where theta_k
    (k = 1..K-1) is one weighted-gradient step from theta_{k-1}. Returns Theorem 3.1's average
    ``(1/K) sum_{k=0}^{K-1} theta_k`` (of the last ``tail`` of these iterates if ``tail`` > 0); the
    balancer's k-th call (alpha_k) weighs the losses at theta_k."""
    return _algorithm_1(tasks, balancer, steps, lr, theta0, loss_fn, tail)[0]


def _algorithm_1(tasks, balancer, steps, lr, theta0, loss_fn=None, tail=0):
    """``algorithm_1`` that also returns the largest task loss seen at any iterate."""
    theta = theta0.clone().requires_grad_(True)
    avg = torch.zeros_like(theta0)
    n_avg = tail or steps
    largest = -math.inf
    for k in range(steps):
        if k >= steps - n_avg:
            avg += theta.detach() / n_avg
        losses = loss_fn(theta) if loss_fn else tasks.risks(theta)
        largest = max(largest, float(losses.detach().max()))
        if k == steps - 1:  # theta_{K-1} is the last iterate of the average: no step from it
            break
        (grad,) = torch.autograd.grad(balancer(losses).loss, theta)
        with torch.no_grad():
            theta -= lr * grad
    return avg, largest


@pytest.mark.slow
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


def test_convex_run_reports_excess_risk_curves_against_N(tmp_path):
    """results.json has, for every downstream task, the excess risk at each N of the grid, and the summary's
    curves are their worst case (max) and average (mean) over the tasks; more samples, less excess risk."""
    res = run_pipeline(["experiment=convex", "logger=none", "debug=smoke"], tmp_path)
    sizes = [8, 32, 128, 512]
    assert res["downstream_settings"]["sample_sizes"] == sizes
    tasks = res["downstream"]
    assert set(tasks) == {f"vertex{t}" for t in range(4)} | {f"mix{i}" for i in range(4)}
    curves = res["summary"]["by_metric"]
    grid = sorted(f"excess_risk@N={n}" for n in sizes)
    assert sorted(m for m in curves if m.startswith("excess_risk@")) == grid
    for m in ["initial_risk", *(f"excess_risk@N={n}" for n in sizes)]:
        per_task = [r["metrics"][m] for r in tasks.values()]
        assert curves[m]["worst"] == max(per_task)
        assert curves[m]["average"] == pytest.approx(sum(per_task) / len(per_task), rel=1e-12)
    for name, r in tasks.items():
        curve = [r["metrics"][f"excess_risk@N={n}"] for n in sizes]
        assert 0 < curve[-1] < curve[0] < r["metrics"]["initial_risk"], name  # adaptation helps, more with N
        assert r["metrics"]["excess_risk"] == r["metrics"]["excess_risk@N=32"]  # primary_n = 32
    for key in ("worst", "average"):
        curve = [curves[f"excess_risk@N={n}"][key] for n in sizes]
        assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1], (key, curve)
    assert res["summary"]["worst"] == curves["excess_risk@N=32"]["worst"]
    assert res["summary"]["higher_is_better"] is False


class _RecordIterates(L.Callback):
    """theta after every optimizer step (theta_1, theta_2, ...), recorded independently of the module."""

    def __init__(self) -> None:
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append(pl_module.model.theta.detach().clone())


def _convex_module(balancer=NoBalancing):
    from data.convex import ConvexDataModule
    from models.convex import ParameterVector
    from pretrain.convex import ConvexPretraining

    dm = ConvexDataModule(num_tasks=3, dim=4, sigma=0.5, batch_size=4, train_size=16, seed=0)
    module = ConvexPretraining(
        ParameterVector(4, init_scale=3.0),
        partial(balancer),
        num_tasks=3,
        optimizer=partial(torch.optim.SGD, lr=0.2),
    )
    return dm, module


def _fit(dm, module, tmp_path, max_steps, ckpt_path=None, callbacks=()):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_convex_module_averages_the_iterates_theta_0_to_theta_K_minus_1(tmp_path):
    """After K SGD steps the module's averaged iterate is Theorem 3.1's (1/K) sum_{k<K} theta_k: theta_0 (the
    initialisation) is in it, theta_K (the last iterate) is not."""
    K = 6
    dm, module = _convex_module()
    theta0 = module.model.theta.detach().clone()
    rec = _RecordIterates()
    _fit(dm, module, tmp_path, K, callbacks=[rec])
    assert len(rec.after_step) == K
    iterates = [theta0, *rec.after_step]  # theta_0 .. theta_K
    expected = torch.stack(iterates[:K]).mean(0)
    assert int(module.n_avg) == K
    torch.testing.assert_close(module.pretrained_theta(), expected)
    # the other indexing, theta_1..theta_K, is a different point here
    assert not torch.allclose(torch.stack(iterates[1:]).mean(0), expected, atol=1e-3)
    torch.testing.assert_close(module.model.theta.detach(), iterates[K])


def test_convex_module_average_continues_exactly_after_resume(tmp_path):
    """Checkpointed after step 3 (mid-epoch: 4 batches per epoch) and resumed to step 7: the same averaged
    iterate, count and last iterate as the run left alone."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm, straight = _convex_module(partial(Minimax, alpha=1.0))
    _fit(dm, straight, tmp_path / "a", 7)
    dm, first = _convex_module(partial(Minimax, alpha=1.0))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1, filename="s{step}")
    _fit(dm, first, tmp_path / "b", 3, callbacks=[ckpt])
    (path,) = list((tmp_path / "ck").glob("*.ckpt"))
    dm, resumed = _convex_module(partial(Minimax, alpha=1.0))
    _fit(dm, resumed, tmp_path / "c", 7, ckpt_path=str(path))
    assert int(straight.n_avg) == int(resumed.n_avg) == 7
    torch.testing.assert_close(straight.state_dict(), resumed.state_dict())
    torch.testing.assert_close(straight.pretrained_theta(), resumed.pretrained_theta())


# --- Theorem 5.4's mechanism: the two regimes of the downstream ERM --------------------------------------------


#: the regime tests' pre-training: the pipeline of ``run.py experiment=convex`` (Lightning module, aggregation
#: callback, balancer), made small: 50 SGD steps on batches of 256 (low noise), lr 0.3 in the underdetermined
#: regime (a batch's design X^T X / 256 has curvature up to ~4.5: 0.3 is stable) and 0.4 at full rank (L = 2)
REGIME_RUN = ["experiment=convex", *SMALL_CONVEX_RUN]


def _paired_worst(overrides: list[str], out_dir, seeds=range(6)) -> dict:
    """Pre-train with ``balancer=none`` and ``balancer=minimax`` (alpha = 1) through the pipeline for every seed
    and take minimax - none of the worst case over the downstream tasks (the run's summary) of every metric,
    paired by seed: {metric: (mean, 95% t low, high)}, through the report's t-interval; ``none_worst``: none's
    worst cases averaged over the seeds."""
    import pandas as pd

    from runner.statistics import t_interval

    worst = {"none": [], "minimax": []}
    for seed in seeds:
        for balancer in worst:
            run = [*REGIME_RUN, *overrides, f"seed={seed}", f"balancer={balancer}"]
            res = run_pipeline(run, out_dir / f"{balancer}{seed}")
            worst[balancer].append({m: v["worst"] for m, v in res["summary"]["by_metric"].items()})
    none, mmx = pd.DataFrame(worst["none"]), pd.DataFrame(worst["minimax"])
    return {m: t_interval(mmx[m] - none[m]) for m in none} | {"none_worst": none.mean().to_dict()}


@pytest.mark.slow
def test_underdetermined_minimax_lowers_the_worst_case_excess_risk_at_small_n(tmp_path):
    """d = 64 above N = 8, 16: GD to convergence ends at the empirical minimiser nearest theta_0, so the excess
    risk keeps (1 - N/d) of the initial one, and minimax's lower worst-case initial risk (Proposition 5.1)
    carries over to a lower worst-case excess risk, paired over 6 seeds with a 95% interval below 0. At
    N = 512 > d the empirical minimiser is unique: theta_0 is forgotten and the difference is 0."""
    downstream = ["downstream.sample_sizes=[8,16,512]", "downstream.repeats=8"]
    d = _paired_worst(["data.kind=underdetermined", "module.optimizer.lr=0.3", *downstream], tmp_path)
    for m in ("initial_risk", "excess_risk@N=8", "excess_risk@N=16"):
        mean, low, high = d[m]
        assert high < 0, (m, d[m])
        assert mean < -0.05 * d["none_worst"][m], (m, d[m], d["none_worst"][m])  # by 5% of none's at least
    assert abs(d["excess_risk@N=512"][0]) < 1e-9 and abs(d["excess_risk@N=512"][2]) < 1e-9


@pytest.mark.slow
def test_full_rank_minimax_lowers_the_initial_risk_but_not_significantly_the_excess_risk(tmp_path):
    """The default regime (d = 8, full-rank Hessian per sample, 10 GD steps): the same 6 seeds show
    Proposition 5.1 (worst-case initial risk lower, interval below 0) but no difference in the worst-case excess
    risk at any N: every interval contains 0 (the downstream ERM has one minimiser whatever theta_0)."""
    d = _paired_worst(["module.optimizer.lr=0.4", "downstream.repeats=20"], tmp_path)
    (mean, low, high), none_worst = d["initial_risk"], d["none_worst"]["initial_risk"]
    assert high < 0 and mean < -0.05 * none_worst, (d["initial_risk"], none_worst)
    for n in (8, 32, 128, 512):
        mean, low, high = d[f"excess_risk@N={n}"]
        assert low < 0 < high, (n, d[f"excess_risk@N={n}"])
        assert abs(mean) < 0.1


def test_gd_to_convergence_is_the_empirical_minimiser_nearest_theta0():
    """steps=null (the closed form) equals many GD steps, interpolates the N < d samples and moved theta_0 only
    within the row space of the design; full rank: the unique minimiser."""
    from finetune.convex import ConvexDownstream

    lam = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    tasks = make_tasks("underdetermined", num_tasks=3, dim=12, curvature=(0.5, 2.0), seed=0).to(torch.float64)
    theta0 = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    limit = ConvexDownstream(steps=None)._least_squares_erm(
        tasks, lam, theta0, 5, torch.Generator().manual_seed(2)
    )
    gd = ConvexDownstream(steps=5000)._least_squares_erm(
        tasks, lam, theta0, 5, torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(gd, limit, rtol=0, atol=1e-6)
    z = torch.randn(5, 13, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    X, y = tasks.least_squares(lam, z)
    torch.testing.assert_close(X @ limit, y)  # an empirical minimiser: it interpolates
    step = limit - theta0  # ... the nearest one: the step lies in the row space of X
    torch.testing.assert_close(torch.linalg.pinv(X) @ (X @ step), step)
    full = make_tasks("random", num_tasks=3, dim=6, curvature=(0.5, 2.0), seed=0).to(torch.float64)
    a = ConvexDownstream(steps=None, repeats=3).erm_excess_draws(
        full, lam, theta0[:6], 8, torch.Generator().manual_seed(3)
    )
    b = ConvexDownstream(steps=2000, repeats=3).erm_excess_draws(
        full, lam, theta0[:6], 8, torch.Generator().manual_seed(3)
    )
    assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_regression_samples_have_the_quadratic_expected_risk():
    """kind=underdetermined: the mean per-sample loss over many samples is 0.5 |B (theta - c_t)|^2."""
    tasks = make_tasks("underdetermined", num_tasks=3, dim=5, seed=0).to(torch.float64)
    z = torch.randn(200_000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(tasks.sample_losses(theta, z).mean(0), tasks.risks(theta), rtol=0.02, atol=0)
    assert torch.equal(tasks.B[0], tasks.B[2])  # one design for every task


def test_downstream_least_squares_is_the_mixture_of_the_upstream_sample_losses_and_risks():
    """The downstream ERM of kind=underdetermined (finetune/convex.py) minimises ``(1/2n) ||X theta - y||^2``
    from ``least_squares``. Per sample it is eq. 9's ``sum_t lambda_t l_t(theta, z)`` (the upstream sample
    losses) up to a constant in theta; its expectation is ``R_lambda(theta) = sum_t lambda_t R_t(theta)`` up to
    the constant ``sigma^2 / 2 - min R_lambda`` (Monte Carlo on 200 000 samples, fixed seed)."""
    tasks = make_tasks("underdetermined", num_tasks=3, dim=5, sigma=0.7, curvature=(2.0, 4.0), seed=0)
    tasks = tasks.to(torch.float64)
    lam = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 6, generator=g, dtype=torch.float64)
    X, y = tasks.least_squares(lam, z)
    thetas = 2 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    _, min_risk = tasks.mixture_optimum(lam)
    gaps = []
    for theta in thetas:
        squares = 0.5 * (X @ theta - y) ** 2  # (n,) the empirical risk's terms
        gaps.append(squares - tasks.sample_losses(theta, z) @ lam)
        # E 0.5 r^2 for r ~ N(0, s^2) is s^2 / 2, with sd s^2 / sqrt(2) per sample: over 2e5 samples the
        # relative standard error is 1 / sqrt(1e5) = 0.32%; rtol 2% is six of them
        expected = float(lam @ tasks.risks(theta) - min_risk) + 0.5 * tasks.sigma**2
        assert float(squares.mean()) == pytest.approx(expected, rel=0.02)
    for gap in gaps[1:]:  # the same constant per sample at every theta
        torch.testing.assert_close(gap, gaps[0])


@pytest.mark.parametrize("kind", ["underdetermined", "random"])
def test_downstream_erm_above_d_has_the_closed_form_expected_excess_risk(kind):
    """The downstream ERM (steps=null) on N = 16 > d = 5 samples of task lambda, measured by the upstream risks
    ``R_lambda - min R_lambda``, has the textbook mean excess risk of its sample model: least squares on
    Gaussian rows x = B^T u: ``sigma^2 d / (2 (N - d - 1))``; full rank, the noise z_t ~ N(0, sigma^2 I) of every
    task: ``sigma^2 / (2N) tr(A_lambda^-1 sum_t lambda_t^2 A_t)``. Mean of 4000 draws within 4 standard
    errors."""
    import statistics

    from finetune.convex import ConvexDownstream

    tasks = make_tasks(kind, num_tasks=3, dim=5, sigma=0.7, curvature=(2.0, 4.0), seed=0).to(torch.float64)
    lam = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    n, d, var = 16, 5, tasks.sigma**2
    if kind == "underdetermined":
        expected = var * d / (2 * (n - d - 1))
    else:
        A_lam = torch.einsum("t,tij->ij", lam, tasks.A)
        noise = torch.einsum("t,tij->ij", lam**2, tasks.A)
        expected = var / (2 * n) * float(torch.trace(torch.linalg.solve(A_lam, noise)))
    suite = ConvexDownstream(steps=None, repeats=4000)
    theta0 = torch.zeros(d, dtype=torch.float64)
    draws = suite.erm_excess_draws(tasks, lam, theta0, n, torch.Generator().manual_seed(0))
    se = statistics.stdev(draws) / math.sqrt(len(draws))
    assert abs(statistics.fmean(draws) - expected) < 4 * se, (statistics.fmean(draws), expected, se)


def test_sample_complexity_is_the_smallest_grid_n_from_which_on_enough_draws_meet_eps():
    from finetune.convex import ConvexDownstream

    suite = ConvexDownstream(sample_sizes=[4, 8, 16, 32], primary_n=8, eps=1.0, delta=0.25)
    ok, bad = [0.5, 0.5, 0.5, 2.0], [0.5, 0.5, 2.0, 2.0]  # 3/4 and 2/4 of the draws within eps
    assert suite.sample_complexity({4: bad, 8: ok, 16: ok, 32: ok}) == (8, True)
    assert suite.sample_complexity({4: ok, 8: bad, 16: ok, 32: ok}) == (16, True)  # from which ON
    assert suite.sample_complexity({4: ok, 8: ok, 16: ok, 32: bad}) == (64, False)  # censored: 2 x 32


def test_underdetermined_run_reports_sample_complexity_and_report_metrics(tmp_path):
    res = run_pipeline(
        ["experiment=convex", "data.kind=underdetermined", "logger=none", "debug=smoke"], tmp_path
    )
    settings = res["downstream_settings"]
    assert settings["steps"] is None and settings["primary_n"] == 16 and settings["eps"] == 20.0
    grid = settings["sample_sizes"]
    extra = [f"sample_complexity@eps={e:g}" for e in settings["eps_extra"]]
    assert extra == ["sample_complexity@eps=40", "sample_complexity@eps=5", "sample_complexity@eps=0.5"]
    excess = [f"excess_risk@N={n}" for n in grid]
    assert res["report_metrics"] == ["initial_risk", "sample_complexity", *extra, *excess]
    for r in res["downstream"].values():
        for m in ["sample_complexity", *extra]:
            assert r["metrics"][m] in [*grid, 2 * grid[-1]]
    worst = res["summary"]["by_metric"]["sample_complexity"]["worst"]
    assert worst == max(r["metrics"]["sample_complexity"] for r in res["downstream"].values())
