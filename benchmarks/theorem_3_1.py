"""Theorem 3.1 measured through the convex pre-training module: ``python -m benchmarks.theorem_3_1``.

Algorithm 1 is run by :class:`pretrain.convex.ConvexPretraining` (plain SGD with ``lr = eta``, the
:class:`~pretrain.aggregation.LossAggregation` callback, the :class:`~pretrain.balancers.Minimax` balancer with
its ``alpha_k`` schedule, the running average of the iterates) fitted by a ``lightning.Trainer`` for K steps, on
convex Lipschitz tasks ``l_t(theta) = a_t ||theta - c_t||`` whose minimax value is computed by SLSQP. The
script prints, per instance and K, the theorem's bound ``2 R0 L' / sqrt(K)`` and the gap
``max_t l_t(theta) - min_theta max_t l_t`` of the averaged iterate (the theorem's point), of the last iterate
and of the averaged iterate of a run whose ``alpha_k`` stays at ``alpha_0`` (``schedule=constant``), as a
Markdown table; ``--store NAME`` also writes the rows to ``results/NAME/`` (what docs/theory.md renders).
``tests/test_theorem_3_1.py`` asserts on the same runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader

from models.convex import ParameterVector
from pretrain.balancers import Minimax
from pretrain.convex import ConvexPretraining
from runner.docs_render import THEOREM_3_1_COLUMNS as COLUMNS
from runner.docs_render import StoreError, destination, store_data, theorem_3_1_row


@dataclass
class LipschitzTasks:
    """T deterministic tasks ``l_t(theta) = a_t ||theta - c_t||``: convex and ``a_t``-Lipschitz.

    The interface :class:`~pretrain.convex.ConvexPretraining` reads from ``datamodule.tasks``:
    ``sample_losses`` (the sample ``z`` is ignored: every sample's loss is the risk), ``risks``, ``num_tasks``.
    """

    c: torch.Tensor  # (T, d) centres
    a: torch.Tensor  # (T,) slopes

    @property
    def num_tasks(self) -> int:
        return self.c.shape[0]

    @property
    def lipschitz(self) -> float:
        """L' = max_t a_t."""
        return float(self.a.max())

    def risks(self, theta: torch.Tensor) -> torch.Tensor:
        return self.a.to(theta) * (theta - self.c.to(theta)).norm(dim=-1)

    def sample_losses(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.risks(theta).expand(z.shape[0], -1)

    def minimax(self) -> tuple[torch.Tensor, float]:
        """``argmin`` and ``min`` over theta of ``max_t a_t ||theta - c_t||``, by SLSQP on the epigraph form
        ``min s  s.t.  a_t^2 ||theta - c_t||^2 <= s``."""
        import numpy as np
        from scipy.optimize import minimize

        C, a = self.c.double().numpy(), self.a.double().numpy()
        res = minimize(
            lambda x: x[-1],
            x0=np.r_[C.mean(0), 1.0 + (a**2 * ((C - C.mean(0)) ** 2).sum(1)).max()],
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda x: x[-1] - a**2 * ((x[:-1] - C) ** 2).sum(1)}],
            options={"ftol": 1e-12, "maxiter": 1000},
        )
        if not res.success:
            raise RuntimeError(f"SLSQP did not find the minimax point: {res.message}")
        return torch.tensor(res.x[:-1], dtype=torch.float64), math.sqrt(res.x[-1])

    def gap(self, theta: torch.Tensor, opt: float) -> float:
        """``max_t l_t(theta) - min_theta max_t l_t``, the left side of eq. (8)."""
        return float(self.risks(theta.double()).max()) - opt


class StepsData(L.LightningDataModule):
    """``steps`` batches of one dummy sample, and the ``tasks`` the module reads."""

    def __init__(self, tasks: LipschitzTasks, steps: int) -> None:
        super().__init__()
        self.tasks, self.steps = tasks, int(steps)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(self.steps, 1, dtype=torch.float64), batch_size=1)


class _Iterates(L.Callback):
    """theta after every optimizer step: theta_1 .. theta_K."""

    def __init__(self) -> None:
        self.after_step: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append(pl_module.model.theta.detach().clone())


class UnloggedConvexPretraining(ConvexPretraining):
    """``ConvexPretraining`` whose ``log_dict`` does nothing. The loss-aggregation callback logs 2 T + 6 metrics
    a step through Lightning's ``self.log`` (about 0.4 ms each on one core: three quarters of a T = 4 step,
    measured, and most of a T = 64 one); the iterates, weights and average do not depend on it."""

    def log_dict(self, *args, **kwargs) -> None:
        pass


@dataclass
class Instance:
    """An instance of the theorem: its tasks, R0 = ||theta_0 - theta*||, theta_0's direction from theta* and
    B, the bound on every loss the runs see (checked on their iterates)."""

    tasks: LipschitzTasks
    R0: float
    direction: list[float]
    B: float
    theta_star: torch.Tensor = field(init=False)
    opt: float = field(init=False)

    def __post_init__(self) -> None:
        self.theta_star, self.opt = self.tasks.minimax()

    @property
    def theta0(self) -> torch.Tensor:
        u = torch.tensor(self.direction, dtype=torch.float64)
        return self.theta_star + self.R0 * u / u.norm()

    def eta(self, K: int) -> float:
        """The theorem's step size ``R0 / (L' sqrt K)``."""
        return self.R0 / (self.tasks.lipschitz * math.sqrt(K))

    def alpha0(self, K: int) -> float:
        """The smallest ``alpha_0`` for which ``alpha_k = alpha_0 sqrt(k+1)`` meets the theorem's condition
        ``alpha_k >= 4 sqrt(k+1) / (R0 L') log(4 T B sqrt(k+1) / (R0 L'))`` at every k < K (at k = K-1)."""
        rl = self.R0 * self.tasks.lipschitz
        return 4 / rl * math.log(4 * self.tasks.num_tasks * self.B * math.sqrt(K) / rl)

    def bound(self, K: int) -> float:
        """The right side of eq. (8): ``2 R0 L' / sqrt K``."""
        return 2 * self.R0 * self.tasks.lipschitz / math.sqrt(K)


def lopsided(centres, slopes) -> Instance:
    """Average-loss minimiser far from the minimax point; theta_0 at R0 = 2 above theta*, B = opt + 3 R0 L'."""
    tasks = LipschitzTasks(
        torch.tensor(centres, dtype=torch.float64), torch.tensor(slopes, dtype=torch.float64)
    )
    inst = Instance(tasks, R0=2.0, direction=[0.0, 1.0], B=0.0)
    inst.B = inst.opt + 3 * inst.R0 * tasks.lipschitz
    return inst


def one_against_many(T: int, R0: float = 2.0) -> Instance:
    """Remark 5.2's family in 1-D: ``l_1 = |theta - 1|`` against T-1 copies of ``|theta + 1|``; minimax point 0
    (value 1), theta_0 = -R0. B = 1 + R0 bounds every loss on [-R0, R0]."""
    c = torch.full((T, 1), -1.0, dtype=torch.float64)
    c[0, 0] = 1.0
    return Instance(
        LipschitzTasks(c, torch.ones(T, dtype=torch.float64)), R0=R0, direction=[-1.0], B=1.0 + R0
    )


INSTANCES = {
    # three centres clustered on one side, one far centre: the average-loss minimiser (a geometric median)
    # stays in the cluster, the minimax point is the centre of the smallest enclosing circle
    "cluster_and_far_centre": partial(
        lopsided, [[0.0, 0.3], [0.0, -0.3], [-0.2, 0.0], [4.0, 0.0]], [1.0, 1.0, 1.0, 1.0]
    ),
    # three shallow tasks (slope 1/2) near the origin, one steep far task: the average is minimised in
    # the cluster, where the steep task's loss is ~3; the minimax value is ~1
    "different_slopes": partial(
        lopsided, [[0.0, 0.2], [0.0, -0.2], [0.2, 0.0], [3.0, 0.0]], [0.5, 0.5, 0.5, 1.0]
    ),
    "one_against_63": partial(one_against_many, 64),
}


@dataclass
class Run:
    """One fitted run: the module's pre-trained (averaged) iterate, the last iterate theta_K and every
    iterate theta_1..theta_K (recorded by a callback, independently of the module's average)."""

    module: object
    averaged: torch.Tensor
    last: torch.Tensor
    iterates: torch.Tensor


def algorithm_1(inst: Instance, K: int, balancer=None, callbacks=()) -> Run:
    """K steps of Algorithm 1 through ``ConvexPretraining`` from ``inst.theta0`` with ``eta = inst.eta(K)``;
    ``balancer`` (a ``num_tasks -> Balancer`` factory) defaults to the theorem's
    ``Minimax(alpha=inst.alpha0(K), schedule="sqrt")``; ``callbacks``: further Lightning callbacks."""
    if balancer is None:
        balancer = partial(Minimax, alpha=inst.alpha0(K), schedule="sqrt")
    model = ParameterVector(inst.theta0.numel())
    with torch.no_grad():
        model.theta.copy_(inst.theta0)
    module = UnloggedConvexPretraining(
        model,
        balancer,
        num_tasks=inst.tasks.num_tasks,
        optimizer=partial(torch.optim.SGD, lr=inst.eta(K), momentum=0.0),
        average_iterates=True,
    )
    rec = _Iterates()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            precision="64-true",
            max_steps=K,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            default_root_dir=tmp,
            callbacks=[rec, *callbacks],
        )
        trainer.fit(module, datamodule=StepsData(inst.tasks, K))
    return Run(
        module, module.pretrained_theta(), module.model.theta.detach().clone(), torch.stack(rec.after_step)
    )


def measure(name: str, K: int) -> dict:
    """The table's row for ``name`` at K: bound, gaps of the averaged / last / constant-alpha iterates and the
    smallest gap among the last 10 iterates theta_{K-9}..theta_K."""
    inst = INSTANCES[name]()
    run = algorithm_1(inst, K)
    const = algorithm_1(inst, K, partial(Minimax, alpha=inst.alpha0(K), schedule="constant"))
    return {
        "instance": name,
        "K": K,
        "alpha0": inst.alpha0(K),
        "bound": inst.bound(K),
        "averaged": inst.tasks.gap(run.averaged, inst.opt),
        "last": inst.tasks.gap(run.last, inst.opt),
        "last10_min": min(inst.tasks.gap(th, inst.opt) for th in run.iterates[-10:]),
        "constant_alpha": inst.tasks.gap(const.averaged, inst.opt),
    }


def markdown_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[100, 400, 1600], help="the K of the rows")
    p.add_argument("--instances", nargs="+", default=list(INSTANCES), choices=list(INSTANCES))
    p.add_argument(
        "--store", metavar="NAME", help="also write the rows to results/NAME/ (data.json, provenance.json)"
    )
    p.add_argument("--force", action="store_true", help="with --store: replace an existing results/NAME/")
    args = p.parse_args(argv)
    if args.store:
        try:
            destination(args.store, force=args.force)
        except StoreError as exc:
            p.error(str(exc))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines in the table
    start = time.perf_counter()
    print(markdown_row(title for title, _ in COLUMNS.values()))
    print(markdown_row(["---"] + ["---:"] * (len(COLUMNS) - 1)))
    rows = []
    for name in args.instances:
        for K in args.steps:
            rows.append(measure(name, K))
            print(theorem_3_1_row(rows[-1]), flush=True)
    if args.store:
        command = shlex.join(
            ["python", "-m", "benchmarks.theorem_3_1", *(sys.argv[1:] if argv is None else argv)]
        )
        wall = round(time.perf_counter() - start, 1)
        dest = store_data(args.store, {"rows": rows}, command, wall, "theorem_3_1", force=True)
        print(f"stored in {dest}; render the docs with `python run.py stage=report report.docs=true`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
