"""The shared loss-aggregation callback inside real Lightning training loops."""

import json
import math
from pathlib import Path

import lightning as L
import oracles
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.loading import resumable_loader
from pretrain.aggregation import LossAggregation
from pretrain.balancers import (
    DBMTL,
    DWA,
    FAMO,
    GLS,
    RLW,
    ExcessMTL,
    GradNorm,
    GroupDRO,
    Minimax,
    NoBalancing,
    Uncertainty,
    Vanilla,
)
from pretrain.feature_gradients import FeatureCopies
from utils.errors import ConfigError, NonFiniteLossError

TASKS = ["a", "b", "rare"]


class Samples(Dataset):
    """x in R^4; targets per task; the 'rare' task has a target only in samples with index % 4 == 3."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 3, generator=g)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.x[i], self.y[i], torch.tensor(i % 4 == 3)


class TinyModule(L.LightningModule):
    def __init__(
        self, balancer, aggregation=None, nan_at: int | None = None, dump: str | None = None, copies=False
    ):
        super().__init__()
        self.copies = copies  # each task's head reads its own copy of h (FeatureCopies)
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(4, 8)
        self.heads = torch.nn.Linear(8, 3)
        self.aggregator = LossAggregation.build(balancer, TASKS, **(aggregation or {}))
        self.nan_at, self.dump = nan_at, dump
        self.shuffle = False

    def configure_callbacks(self):
        return [self.aggregator]

    def training_step(self, batch, i):
        x, y, has_rare = batch
        h = torch.tanh(self.shared(x))
        features = h
        if self.copies:
            read = {t: h.detach().requires_grad_() for t in TASKS}
            err = (torch.stack([self.heads(read[t])[:, k] for k, t in enumerate(TASKS)], 1) - y) ** 2
            features = FeatureCopies(h, read)
        else:
            err = (self.heads(h) - y) ** 2  # (n, 3)
        mask = torch.stack([torch.ones_like(has_rare), torch.ones_like(has_rare), has_rare], 1).float()
        sums = (err * mask).sum(0)
        counts = mask.sum(0)
        if self.nan_at is not None and self.global_step == self.nan_at:
            sums = sums * torch.tensor([1.0, float("nan"), 1.0])
        losses = {t: (sums[k], counts[k]) for k, t in enumerate(TASKS)}
        return self.aggregator(self, losses, shared_params=list(self.shared.parameters()), features=features)

    def train_dataloader(self):
        data = Samples()
        if self.trainer.world_size > 1:  # interleaved shards: rank r gets samples r, r + 2, ...
            sampler = DistributedSampler(data, self.trainer.world_size, self.global_rank, shuffle=False)
            return DataLoader(data, batch_size=self.batch_size, sampler=sampler)
        if self.shuffle:  # a resumable loader: its position rides in the checkpoint
            return resumable_loader(data, batch_size=self.batch_size, shuffle=True, seed=1)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False)

    def configure_optimizers(self):
        groups = [{"params": list(self.shared.parameters()) + list(self.heads.parameters())}]
        return torch.optim.SGD(groups + self.aggregator.balancer_param_groups(), lr=0.1)

    def on_train_end(self):
        if self.dump:
            path = Path(self.dump) / f"rank{self.global_rank}.json"
            params = torch.cat([p.detach().flatten() for p in self.parameters()]).tolist()
            path.write_text(json.dumps({"history": list(self.aggregator.recent), "params": params}))


def fit(module, tmp_path, batch_size=4, max_steps=6, ckpt_path=None, shuffle=False, **trainer_kw):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=trainer_kw.pop("devices", 1),
        max_steps=max_steps,
        logger=trainer_kw.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=trainer_kw.pop("enable_checkpointing", False),
        default_root_dir=tmp_path,
        deterministic=True,
        **trainer_kw,
    )
    module.batch_size, module.shuffle = batch_size, shuffle
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def test_logs_every_task_loss_weight_and_the_worst_each_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = TinyModule(lambda num_tasks: Minimax(num_tasks, alpha=1.0))
    fit(
        module, tmp_path, max_steps=4, logger=CSVLogger(tmp_path, name="csv", version=""), log_every_n_steps=1
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 4
    for row in rows:
        losses = [float(row[f"train/loss/{t}"]) for t in TASKS]
        weights = [float(row[f"train/weight/{t}"]) for t in TASKS]
        assert float(row["train/loss_worst"]) == pytest.approx(max(losses), rel=1e-5)
        assert sum(weights) == pytest.approx(1.0, rel=1e-5)
        assert weights == pytest.approx(
            [math.exp(v) / sum(math.exp(u) for u in losses) for v in losses], rel=1e-4
        )


class Snapshots(L.Callback):
    """The module's parameters as each training step starts."""

    def __init__(self):
        self.params = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.params.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_task_loss_is_the_mean_over_its_targets_and_absent_tasks_are_handled(tmp_path):
    """Batches of 2 in order: 'a' and 'b' have 2 targets each, 'rare' one in every second batch (sample 3, 7)
    and none in the others. A task's logged loss is the mean squared error over its targets in the batch
    (sum / count, recomputed here from the step's parameters); an absent task logs None, its head gets no
    gradient, and its weight comes from its last known loss (0 before it is first seen)."""
    module, seen = TinyModule(lambda num_tasks: Minimax(num_tasks, alpha=1.0)), Snapshots()
    fit(module, tmp_path, batch_size=2, max_steps=4, callbacks=[seen])
    hist, data = list(module.aggregator.recent), Samples()
    assert len(hist) == len(seen.params) == 4
    for k, (h, p) in enumerate(zip(hist, seen.params)):
        x, y = data.x[2 * k : 2 * k + 2], data.y[2 * k : 2 * k + 2]
        hidden = torch.tanh(x @ p["shared.weight"].T + p["shared.bias"])
        err = ((hidden @ p["heads.weight"].T + p["heads.bias"] - y) ** 2).tolist()
        assert h["loss"]["a"] == pytest.approx((err[0][0] + err[1][0]) / 2, rel=1e-5)
        assert h["loss"]["b"] == pytest.approx((err[0][1] + err[1][1]) / 2, rel=1e-5)
        assert h["loss"]["rare"] == (None if k % 2 == 0 else pytest.approx(err[1][2], rel=1e-5))
    assert hist[0]["loss"]["a"] != pytest.approx(hist[0]["loss"]["b"], rel=1e-2)  # the tasks differ
    steps = [[h["loss"][t] for t in TASKS] for h in hist]
    for h, want in zip(hist, oracles.minimax_weights(steps, alpha=1.0)):
        assert [h["weight"][t] for t in TASKS] == pytest.approx(want, rel=1e-5)
    assert hist[0]["weight"]["rare"] == 0.0 < hist[2]["weight"]["rare"]  # unseen; then from step 1's loss
    rows = [p["heads.weight"][2] for p in seen.params] + [module.heads.weight[2].detach()]
    assert [torch.equal(a, b) for a, b in zip(rows, rows[1:])] == [True, False, True, False]


def test_nonfinite_loss_stops_naming_task_and_step(tmp_path):
    module = TinyModule(NoBalancing, nan_at=2)
    with pytest.raises(NonFiniteLossError, match=r"task 'b' loss is nan at step 2"):
        fit(module, tmp_path)


def test_nonfinite_loss_can_skip_the_step(tmp_path):
    module = TinyModule(NoBalancing, aggregation={"on_nonfinite": "skip"}, nan_at=2)
    with pytest.warns(UserWarning, match="task 'b'"):
        fit(module, tmp_path, max_steps=4)
    assert all(math.isfinite(p.detach().sum()) for p in module.parameters())


def test_balancer_size_must_match_tasks():
    with pytest.raises(ConfigError, match="weighs 2 tasks but the experiment has 3"):
        LossAggregation(NoBalancing(2), TASKS)


def _steps(history):
    """(losses, weights) per logged step, in TASKS order; an absent task's loss is None."""
    return [([h["loss"][t] for t in TASKS], [h["weight"][t] for t in TASKS]) for h in history]


def _check_minimax(history):
    """alpha = 2, ema = 0.8: w = softmax(2 m) over the tasks seen so far, m <- 0.8 m + 0.2 L (the first loss
    of a task starts its m; an absent task's last loss stands in for its current one)."""
    steps = _steps(history)
    expected = oracles.minimax_weights([losses for losses, _ in steps], alpha=2.0, ema=0.8)
    for (_, weights), want in zip(steps, expected):
        assert weights == pytest.approx(want, rel=1e-4, abs=1e-7)
        assert max(range(3), key=weights.__getitem__) == max(range(3), key=want.__getitem__)


def _check_dwa(history):
    """window = 3: uniform for two windows, then softmax(r / 2) with r_t = Lbar_t(e-1) / Lbar_t(e-2), the
    window means of the unweighted losses (a task absent all window keeps its previous mean)."""
    steps = _steps(history)
    losses = [v for v, _ in steps]
    expected = oracles.dwa_weights(losses, window=3, temperature=2.0)
    means = oracles.dwa_window_means(losses, window=3)
    for k, (_, weights) in enumerate(steps):
        assert weights == pytest.approx(expected[k], rel=1e-4)
        if k >= 6:  # the task whose loss fell least gains weight
            r = [a / b for a, b in zip(means[k // 3 - 1], means[k // 3 - 2])]
            assert weights[r.index(max(r))] == max(weights)
    assert len(means) >= 3  # some windows were not uniform


def _check_uncertainty(history):
    """w_t = exp(-s_t) / T, and SGD (lr 0.1) on (1/T) sum_t (exp(-s_t) L_t + s_t) moves s_t by
    -0.1 (1 - exp(-s_t) L_t) / T for a present task: s_t rises (its weight falls) when L_t > exp(s_t)."""
    steps = _steps(history)
    expected = oracles.uncertainty_weights([losses for losses, _ in steps], lr=0.1)
    for (_, weights), want in zip(steps, expected):
        assert weights == pytest.approx(want, rel=1e-4)


def _check_gradnorm(history):
    """p starts at 0 (uniform weights) and moves: the weights are softmax(p) and leave uniform after one step
    (its direction, toward equal weighted gradient norms, is tested in test_balancers.py)."""
    weights = [w for _, w in _steps(history)]
    assert all(sum(w) == pytest.approx(1.0, rel=1e-5) for w in weights)
    oracles.assert_uniform_then_moving(weights, tol=1e-4)


def _check_excessmtl(history):
    """q starts uniform; its first step's ratios are all 1 (a task not seen yet counts as 1 too), so the weights
    stay uniform there, then move (the squared-gradient sums are sized at the first step, and resumed)."""
    weights = [w for _, w in _steps(history)]
    assert weights[0] == pytest.approx([1 / 3] * 3)
    assert all(sum(w) == pytest.approx(1.0, rel=1e-5) for w in weights)
    assert any(w != pytest.approx([1 / 3] * 3, abs=1e-3) for w in weights[1:])


def _check_rlw(history):
    """w_k = softmax of the k-th standard-normal draw of a generator seeded 3, whether or not 'rare' is present."""
    steps = _steps(history)
    for (_, weights), want in zip(steps, oracles.rlw_weights(seed=3, num_tasks=3, steps=len(steps))):
        assert weights == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    "factory, check",
    [
        (lambda num_tasks: Minimax(num_tasks, alpha=2.0, ema=0.8), _check_minimax),
        (lambda num_tasks: DWA(num_tasks, window=3), _check_dwa),
        (lambda num_tasks: Uncertainty(num_tasks), _check_uncertainty),
        (lambda num_tasks: GradNorm(num_tasks), _check_gradnorm),
        (lambda num_tasks: ExcessMTL(num_tasks, robust_step_size=1.0), _check_excessmtl),
        (lambda num_tasks: RLW(num_tasks, seed=3), _check_rlw),
    ],
    ids=["minimax", "dwa", "uncertainty", "gradnorm", "excessmtl", "rlw"],
)
def test_resume_mid_epoch_continues_exactly(tmp_path, factory, check):
    """Killed after step 5 of an 8-batch shuffled epoch, resumed from its checkpoint: same parameters,
    balancer state and logged history as the run left alone (the loader's position is checkpointed).
    The weights the run applied are the ones the method's equation gives for its logged losses, and its
    parameters are not those of a `none` run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = TinyModule(factory)
    fit(straight, tmp_path / "a", max_steps=13, shuffle=True)

    first = TinyModule(factory)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1, filename="s{step}")
    fit(first, tmp_path / "b", max_steps=5, callbacks=[ckpt], enable_checkpointing=True, shuffle=True)
    (path,) = list((tmp_path / "ck").glob("*.ckpt"))
    resumed = TinyModule(factory)
    fit(resumed, tmp_path / "c", max_steps=13, ckpt_path=str(path), shuffle=True)

    torch.testing.assert_close(straight.state_dict(), resumed.state_dict())
    torch.testing.assert_close(
        straight.aggregator.balancer.state_dict(), resumed.aggregator.balancer.state_dict()
    )
    assert straight.aggregator.recent == resumed.aggregator.recent
    if list(straight.aggregator.balancer.parameters()):
        assert not torch.allclose(
            next(straight.aggregator.balancer.parameters()),
            next(TinyModule(factory).aggregator.balancer.parameters()),
        )
    check(straight.aggregator.recent)
    unbalanced = TinyModule(NoBalancing)
    fit(unbalanced, tmp_path / "none", max_steps=13, shuffle=True)
    assert not torch.allclose(straight.heads.weight, unbalanced.heads.weight, atol=1e-4)


class BalancerFactory:
    """Picklable balancer factory for spawned DDP processes: ``BalancerFactory(GradNorm)(num_tasks)``."""

    def __init__(self, cls: type, **kwargs) -> None:
        self.cls, self.kwargs = cls, kwargs

    def __call__(self, num_tasks):
        return self.cls(num_tasks, **self.kwargs)


def test_copies_train_like_the_per_task_backward_with_gradient_accumulation(tmp_path):
    """Lightning scales the returned loss by 1 / accumulate_grad_batches before its backward: the gradients the
    FeatureCopies path sends into the model are scaled with it, so both paths take the same steps."""
    params = []
    for copies in (True, False):
        module = TinyModule(BalancerFactory(GradNorm), copies=copies)
        fit(module, tmp_path, batch_size=4, max_steps=3, accumulate_grad_batches=2)
        params.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
        params.append(module.aggregator.balancer.logits.detach().clone())
    torch.testing.assert_close(params[0], params[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(params[1], params[3], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(params[1], torch.zeros(3))  # GradNorm moved its logits


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, copies",
    [
        (BalancerFactory(GradNorm), False),  # feature gradients + an all-reduce of the Gramian
        (BalancerFactory(GradNorm), True),  # from one backward through per-task copies of the features
        (
            BalancerFactory(ExcessMTL, robust_step_size=1.0),
            False,
        ),  # shared-parameter gradients, AdaGrad state
        (BalancerFactory(DBMTL), False),  # gradients, EMA state
        (BalancerFactory(FAMO), False),  # learnable logits, previous losses
        (BalancerFactory(RLW, seed=3), False),  # random draws: the same on every rank
        (BalancerFactory(GLS), False),
    ],
    ids=["gradnorm", "gradnorm-copies", "excessmtl", "dbmtl", "famo", "rlw", "gls"],
)
def test_ddp_ranks_apply_identical_weights_from_global_mean_losses(tmp_path, factory, copies):
    """2 gloo processes with 2 samples each == 1 process with the same 4 samples per step: every rank
    applies the same weights, computed from the global mean of each task's loss (GradNorm also from one
    backward through the heads, the step's gradient then reaching the shared layer through the returned loss)."""
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    fit(
        TinyModule(factory, dump=str(tmp_path / "ddp"), copies=copies),
        tmp_path,
        batch_size=2,
        max_steps=3,
        devices=2,
        strategy="ddp_spawn",
        use_distributed_sampler=False,
    )
    fit(TinyModule(factory, dump=str(tmp_path / "one"), copies=copies), tmp_path, batch_size=4, max_steps=3)
    r0 = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp" / "rank1.json").read_text())
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    for h0, h1, h in zip(r0["history"], r1["history"], one["history"]):
        # the same on every rank to float32 rounding (torch's CPU kernels have differed by a few ulps between
        # the two processes; weights from rank-local losses would differ by ~1e-2)
        assert h0["weight"] == {t: pytest.approx(w, rel=1e-6, abs=1e-9) for t, w in h1["weight"].items()}
        for t in TASKS:  # the global mean of each task's loss, not a mean of rank means
            assert h0["loss"][t] == pytest.approx(h["loss"][t], rel=1e-5)
        assert list(h0["weight"].values()) == pytest.approx(list(h["weight"].values()), rel=1e-4)
    assert r0["params"] == pytest.approx(one["params"], rel=1e-4, abs=1e-6)


def test_vanilla_weights_follow_the_target_counts_of_the_loss_dict(tmp_path):
    """Batches of 2: 'a' and 'b' have 2 targets each, 'rare' 1 in every second batch (0 in the others), so
    vanilla's weights are [2, 2, 1] / 5 or [1/2, 1/2, 0]: the mean over all targets, not `none`'s 1/3 each."""
    module = TinyModule(Vanilla)
    fit(module, tmp_path, batch_size=2, max_steps=4)
    weights = [x for _, w in _steps(module.aggregator.recent) for x in w]
    assert weights == pytest.approx([0.5, 0.5, 0.0, 0.4, 0.4, 0.2] * 2)
    unbalanced = TinyModule(NoBalancing)
    fit(unbalanced, tmp_path / "none", batch_size=2, max_steps=4)
    assert not torch.allclose(module.heads.weight, unbalanced.heads.weight, atol=1e-5)


def test_reference_from_reads_a_finished_runs_final_losses_by_task_name(tmp_path):
    """normalize=reference with reference_from: ref comes from <run>/results.json's `upstream`, in the
    balancer's task order, and the weights are softmax(alpha (L - ref)); a missing file or task is named."""
    from functools import partial

    run = tmp_path / "ref_run"
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps({"upstream": {"rare": 2.0, "other": 9.0, "b": 0.5, "a": 1.0}})
    )
    module = TinyModule(partial(Minimax, alpha=2.0, normalize="reference", reference_from=str(run)))
    assert module.aggregator.balancer.reference.tolist() == [1.0, 0.5, 2.0]
    fit(module, tmp_path / "fit", max_steps=3)
    for losses, weights in _steps(module.aggregator.recent):
        assert weights == pytest.approx(
            oracles.softmax([2.0 * (v - r) for v, r in zip(losses, [1.0, 0.5, 2.0])])
        )
    with pytest.raises(
        ConfigError, match=r"balancer\.reference_from: .*missing.*results\.json does not exist"
    ):
        TinyModule(partial(Minimax, normalize="reference", reference_from=str(tmp_path / "missing")))
    (run / "results.json").write_text(json.dumps({"upstream": {"a": 1.0, "b": 0.5}}))
    with pytest.raises(
        ConfigError, match=r"balancer\.reference_from: .*results\.json has no final loss .* rare"
    ):
        TinyModule(partial(GroupDRO, normalize="reference", reference_from=str(run)))


def test_dwa_config_default_leaves_uniform_weights_in_a_short_run():
    """conf/balancer/dwa.yaml's window (100 steps) through the callback for 3 windows with unequal loss trends:
    uniform for two windows, then softmax(r / 2) with r_t = Lbar_t(e-1) / Lbar_t(e-2) -- not `none`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    factory = instantiate(OmegaConf.load(Path(__file__).parents[1] / "conf" / "balancer" / "dwa.yaml"))
    agg = LossAggregation.build(factory, TASKS)
    window = agg.balancer.window
    assert window == 100
    rates = [0.01, 0.001, 0.0]  # task a learns fast, b slowly, rare not at all
    weights = []
    for k in range(3 * window):
        agg(None, {t: torch.tensor(8.0 * math.exp(-r * k)) for t, r in zip(TASKS, rates)})  # mean losses
        weights.append([agg.recent[-1]["weight"][t] for t in TASKS])
    assert all(w == pytest.approx([1 / 3] * 3) for w in weights[: 2 * window])
    mean = [
        [sum(8.0 * math.exp(-r * k) for k in range(e * window, (e + 1) * window)) / window for r in rates]
        for e in range(2)
    ]
    expected = oracles.softmax([(m1 / m0) / 2.0 for m0, m1 in zip(*mean)])
    assert all(w == pytest.approx(expected, rel=1e-4) for w in weights[2 * window :])
    assert expected[2] > expected[1] > expected[0]  # the task whose loss fell least gains weight
    assert expected != pytest.approx([1 / 3] * 3, abs=1e-2)


def _losses(k):
    """Step k's (sum, count) per task: unequal, moving losses; 'rare' present only at every third step."""
    return {
        "a": (torch.tensor(2.0 + math.sin(k)), 1),
        "b": (torch.tensor(1.0 + 0.5 * math.cos(0.3 * k)), 1),
        "rare": (torch.tensor(3.0 if k % 3 == 0 else 0.0), int(k % 3 == 0)),
    }


def test_the_checkpointed_state_stays_bounded_and_the_summaries_are_over_every_step():
    """200 steps: the state holds the last `window` (20) steps and a running entropy sum, the same size at
    step 50 as at step 200; results.json's final losses and weights (means over the last 20 steps) and
    mean_entropy (over all 200) equal those of the per-step record."""
    import pickle

    agg = LossAggregation(Minimax(3, alpha=1.0), TASKS)
    steps, sizes = [], {}
    for k in range(200):
        agg(None, _losses(k))
        steps.append(agg.recent[-1])
        if k + 1 in (10, 50, 200):
            sizes[k + 1] = (len(agg.state_dict()["recent"]), len(pickle.dumps(agg.state_dict())))
    assert agg.window == 20 and sizes[10][0] == 10 and sizes[50] == sizes[200] and sizes[200][0] == 20
    state = agg.state_dict()
    assert [h["step"] for h in state["recent"]] == list(range(180, 200))
    assert set(state) == {"balancer", "recent", "entropy_sum", "entropy_steps", "task_names", "calls"}
    last = steps[-20:]
    present = [h["loss"]["rare"] for h in last if h["loss"]["rare"] is not None]
    assert agg.final_losses() == pytest.approx(
        {
            "a": sum(2.0 + math.sin(k) for k in range(180, 200)) / 20,
            "b": sum(h["loss"]["b"] for h in last) / 20,
            "rare": 3.0,
        }  # fmt: skip
    )
    assert len(present) == 7 and agg.final_losses()["rare"] == pytest.approx(sum(present) / 7)
    entropies = [-sum(w * math.log(w) for w in h["weight"].values() if w > 0) for h in steps]
    summary = agg.weight_summary()
    assert summary["final"] == pytest.approx({t: sum(h["weight"][t] for h in last) / 20 for t in TASKS})
    assert summary["mean_entropy"] == pytest.approx(sum(entropies) / 200)
    assert summary["mean_entropy"] != pytest.approx(sum(entropies[-20:]) / 20, rel=1e-3)  # not the window's
    assert summary["max_entropy"] == pytest.approx(math.log(3))


def test_a_checkpoint_from_before_the_window_loads_its_last_steps_and_mean_entropy():
    """An old checkpoint's callback state has every step in `history`: the window keeps its last steps, the
    mean entropy is over all of them, and the run continues from there."""
    old = LossAggregation(Minimax(3, alpha=1.0), TASKS, window=200)
    for k in range(30):
        old(None, _losses(k))
    history = list(old.recent)
    state = {"balancer": old.balancer.state_dict(), "history": history, "task_names": TASKS, "calls": 30}
    agg = LossAggregation(Minimax(3, alpha=1.0), TASKS, window=4)
    agg.load_state_dict(state)
    assert list(agg.recent) == history[-4:]
    assert agg.weight_summary()["mean_entropy"] == pytest.approx(old.weight_summary()["mean_entropy"])
    assert agg.weight_summary()["final"] == pytest.approx(
        {t: sum(h["weight"][t] for h in history[-4:]) / 4 for t in TASKS}
    )
    assert agg.final_losses()["a"] == pytest.approx(sum(h["loss"]["a"] for h in history[-4:]) / 4)
    agg(None, _losses(30))
    old(None, _losses(30))
    assert agg.state_dict()["entropy_steps"] == 31 and len(agg.recent) == 4
    assert agg.recent[-1]["weight"] == pytest.approx(old.recent[-1]["weight"])  # the balancer's state loaded
    assert agg.weight_summary()["mean_entropy"] == pytest.approx(old.weight_summary()["mean_entropy"])


def test_resumed_run_keeps_the_window_and_summaries_of_the_run_left_alone(tmp_path):
    """window = 4, 13 steps, killed at step 5 and resumed: the checkpoints at steps 5 and 10 hold 4 steps
    each; the resumed run's final losses, final weights and mean entropy equal the uninterrupted run's, which
    are the means over the last 4 (over all 13 for the entropy) of what the CSV logger got."""
    import csv

    import torch as T
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    factory, opts = (lambda num_tasks: Minimax(num_tasks, alpha=2.0, ema=0.8)), {"window": 4}
    straight = TinyModule(factory, aggregation=opts)
    logger = CSVLogger(tmp_path, name="csv", version="")
    fit(straight, tmp_path / "a", max_steps=13, shuffle=True, logger=logger, log_every_n_steps=1)
    first = TinyModule(factory, aggregation=opts)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1, filename="s{step}")
    fit(first, tmp_path / "b", max_steps=10, callbacks=[ckpt], enable_checkpointing=True, shuffle=True)
    states = {
        p.stem: T.load(p, weights_only=False)["callbacks"]["LossAggregation"]
        for p in (tmp_path / "ck").glob("*")
    }
    assert sorted(states) == ["sstep=10", "sstep=5"]
    assert [h["step"] for h in states["sstep=10"]["recent"]] == [6, 7, 8, 9]
    assert len(states["sstep=5"]["recent"]) == 4 and states["sstep=5"]["entropy_steps"] == 5
    resumed = TinyModule(factory, aggregation=opts)
    fit(resumed, tmp_path / "c", max_steps=13, ckpt_path=str(tmp_path / "ck" / "sstep=5.ckpt"), shuffle=True)

    assert list(resumed.aggregator.recent) == list(straight.aggregator.recent)
    assert resumed.aggregator.final_losses() == straight.aggregator.final_losses()
    assert resumed.aggregator.weight_summary() == straight.aggregator.weight_summary()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == list(range(13))
    summary = straight.aggregator.weight_summary()
    entropy = [float(r["train/weight_entropy"]) for r in rows]
    assert summary["mean_entropy"] == pytest.approx(sum(entropy) / 13, rel=1e-6)
    final = straight.aggregator.final_losses()
    for t in TASKS:
        assert summary["final"][t] == pytest.approx(sum(float(r[f"train/weight/{t}"]) for r in rows[-4:]) / 4)
    for t in ("a", "b"):
        assert final[t] == pytest.approx(sum(float(r[f"train/loss/{t}"]) for r in rows[-4:]) / 4, rel=1e-6)
    # 'rare' is in the batch of step 10 only of the last 4 (the logger repeats its last value at the others)
    assert [h["loss"]["rare"] is None for h in straight.aggregator.recent] == [True, False, True, True]
    assert final["rare"] == pytest.approx(float(rows[10]["train/loss/rare"]), rel=1e-6)
