"""Per-step cost (time and peak memory) of every balancer against `none`, and of the loss-aggregation
callback against a plain training step, measured in one run (interleaved rounds, medians).

    python -m benchmarks.bench_balancers [--tasks 9] [--width 256] [--rounds 5] [--steps 10] [--store NAME]

``--store NAME`` also writes the per-round times and peak memory to ``results/NAME/`` (docs/results.md renders
``results/benchmarks/``).

The model is a generic multi-task network (a shared MLP trunk whose output feeds T classification heads
of 1,000 classes), so the numbers isolate the balancers' own cost; the experiment benchmarks
(`bench_pos_bert`, `bench_mm_mae`) measure the same ratios on the real models. For the balancers that use
per-task gradients w.r.t. the trunk's output (`features` mode) every head reads its own copy of it
(`FeatureCopies`: all T gradients from one backward through the heads); the `per-task backward` row hands
the balancer the plain trunk output instead (a batched backward, one per task, through every head).

Time: median over interleaved rounds (every method once per round). Peak memory ("peak MiB"): the rise
of the peak resident set size over the RSS just after the method's network, optimizer and data are
built, over the warm-up and one round of steps, each method in its own fresh process (see
`benchmarks._memory`); measured once per method, before the timing, in the same run.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks import _memory, _timing
from pretrain.aggregation import LossAggregation
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
)
from pretrain.feature_gradients import FeatureCopies
from runner.docs_render import StoreError, destination, store_data

BALANCERS = {
    "none": NoBalancing,
    "minimax": lambda T: Minimax(T, alpha=1.0),
    "minimax (sqrt, ema)": lambda T: Minimax(T, alpha=1.0, schedule="sqrt", ema=0.9),
    "uncertainty": Uncertainty,
    "dwa": lambda T: DWA(T, window=10),
    "groupdro": GroupDRO,
    "stch": lambda T: STCH(T, warmup=5),
    "gradnorm": GradNorm,  # mode=features
    "gradnorm (shared_params)": lambda T: GradNorm(T, mode="shared_params"),
    "upgrad (features)": lambda T: GradientAggregator(T, "upgrad", "features"),
    "mgda (features)": lambda T: GradientAggregator(T, "mgda", "features"),
    "pcgrad (features)": lambda T: GradientAggregator(T, "pcgrad", "features"),
    "upgrad (features, per-task backward)": lambda T: GradientAggregator(T, "upgrad", "features"),
    "upgrad (shared_params)": lambda T: GradientAggregator(T, "upgrad", "shared_params"),
    "famo": FAMO,
    "rlw": RLW,
    "gls": GLS,
    "excessmtl": ExcessMTL,  # mode=shared_params
    "excessmtl (features)": lambda T: ExcessMTL(T, mode="features"),
    "dbmtl": DBMTL,  # mode=shared_params
    "dbmtl (features)": lambda T: DBMTL(T, mode="features"),
}


class MultiTaskNet(nn.Module):
    def __init__(self, tasks: int, width: int, classes: int = 1000) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(width, classes) for _ in range(tasks))

    def forward(self, x, copies: bool = False):
        """The trunk's output and every head's logits; with ``copies`` each head reads its own detached copy
        of the trunk's output (returned as the third value)."""
        h = self.trunk(x)
        read = [h.detach().requires_grad_() for _ in self.heads] if copies else [h] * len(self.heads)
        return h, [head(r) for head, r in zip(self.heads, read)], read


WARMUP = 3  # untimed steps per method before the rounds


def make_step(name: str, tasks: int, width: int, batch: int):
    torch.manual_seed(0)
    net = MultiTaskNet(tasks, width)
    x = torch.randn(batch, width)
    y = torch.randint(0, 1000, (tasks, batch))
    if name == "plain mean (no callback)":
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)

        def step():
            _, logits, _ = net(x)
            loss = torch.stack([nn.functional.cross_entropy(lg, y[t]) for t, lg in enumerate(logits)]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    agg = LossAggregation(BALANCERS[name](tasks), [f"t{t}" for t in range(tasks)])
    opt = torch.optim.SGD([{"params": list(net.parameters())}, *agg.balancer_param_groups()], lr=1e-3)
    shared = list(net.trunk[2].parameters())
    copies = agg.needs_feature_gradients and "per-task backward" not in name
    params = list(net.parameters())

    def step():
        h, logits, read = net(x, copies)
        losses = {
            f"t{t}": (nn.functional.cross_entropy(lg, y[t], reduction="sum"), batch)
            for t, lg in enumerate(logits)
        }
        features = FeatureCopies(h, dict(zip(losses, read)), params) if copies else h
        loss = agg(None, losses, shared_params=shared, features=features)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 steps")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child process: peak memory of one method
    parser.add_argument("--store", metavar="NAME", help="also write the measurements to results/NAME/")
    parser.add_argument(
        "--force", action="store_true", help="with --store: replace an existing results/NAME/"
    )
    _timing.add_arguments(parser)
    args = parser.parse_args()
    if args.store and not args.memory_of:
        try:
            destination(args.store, force=args.force)
        except StoreError as exc:
            parser.error(str(exc))
    if args.quick:
        args.rounds, args.steps = 2, 5
    return args


def time_interleaved(names: list[str], args, clock) -> dict[str, list[float]]:
    """Seconds per step of each method, one entry per round: the methods take turns within every round, so a
    drift of the machine hits them alike."""
    steps = {n: make_step(n, args.tasks, args.width, args.batch) for n in names}
    for fn in steps.values():  # warm-up
        for _ in range(WARMUP):
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            t0 = clock()
            for _ in range(args.steps):
                steps[n]()
            times[n].append((clock() - t0) / args.steps)
    return times


def print_table(names: list[str], args, times: dict[str, list[float]], mem: dict) -> None:
    med = {n: statistics.median(v) for n, v in times.items()}
    m = {n: _memory.mib(r) for n, r in mem.items()}
    print(
        f"T={args.tasks} tasks, trunk width {args.width}, heads of 1000 classes, batch {args.batch}; "
        f"median of {args.rounds} interleaved rounds x {args.steps} steps, {_timing.describe(args)}"
    )
    print(_memory.METHOD)
    print(f"{'method':<38}{'ms/step':>10}{'x none':>10}{'peak MiB':>10}{'mem x none':>12}")
    for n in names:
        print(
            f"{n:<38}{1000 * med[n]:>10.2f}{med[n] / med['none']:>10.2f}"
            f"{_memory.fmt_mib(mem[n]):>10}{_memory.ratio(m[n], m['none']):>12.2f}"
        )
    print(
        f"callback overhead: `none` through LossAggregation / plain mean loop = {med['none'] / med[names[0]]:.3f} "
        f"time, {_memory.ratio(m['none'], m[names[0]]):.3f} peak memory"
    )


def main() -> None:
    start = time.perf_counter()
    args = parse_args()
    clock = _timing.configure(args)
    names = ["plain mean (no callback)", *BALANCERS]
    if args.memory_of:
        make = functools.partial(make_step, args.memory_of, args.tasks, args.width, args.batch)
        _memory.report(_memory.measure_here(make, WARMUP + args.steps))
        return
    mem = _memory.measure_all("benchmarks.bench_balancers", names)  # the children return before --store
    times = time_interleaved(names, args, clock)
    print_table(names, args, times, mem)
    if args.store:
        command = shlex.join(["python", "-m", "benchmarks.bench_balancers", *sys.argv[1:]])
        data = measurements(args, names, times, mem)
        dest = store_data(
            args.store, data, command, round(time.perf_counter() - start, 1), "benchmarks", force=True
        )
        print(f"stored in {dest}; render the docs with `python run.py stage=report report.docs=true`")


def measurements(args: argparse.Namespace, names: list[str], times: dict, mem: dict) -> dict:
    """data.json of ``--store``: the set-up, each method's per-round ms/step and its peak memory rise."""
    rows = [
        {
            "method": n,
            "round_ms": [round(1000 * t, 4) for t in times[n]],
            "peak_mib": round(_memory.mib(mem[n]), 2),
            "peak_exact": mem[n]["exact"],
        }
        for n in names
    ]
    setup = {k: getattr(args, k) for k in ("tasks", "width", "batch", "rounds", "steps", "clock")}
    return {**setup, "threads": torch.get_num_threads(), "plain": names[0], "memory_method": _memory.METHOD,
            "rows": rows}  # fmt: skip


if __name__ == "__main__":
    main()
