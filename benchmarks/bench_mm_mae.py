"""MM-MAE costs, measured in one run (the measured version of the paper's Table 3).

    python benchmarks/bench_mm_mae.py [--rounds 7] [--steps 3] [--batch-size 32] [--threads 1] [--clock cpu]

On a CPU shared with other jobs, wall-clock step times swing by several x; ``--clock cpu`` (default)
times each step by this process's CPU time and ``--threads 1`` (default) keeps torch on one intra-op
thread, so a step's CPU time is its compute and the ratios stay meaningful under contention.

1. Step time of one pre-training step (forward, per-task losses, balancer, backward, AdamW step) for
   each balancer, against ``none``: interleaved rounds (every method once per round, in a rotating
   order), the median over rounds. The step goes through ``MMMAEPretraining.training_step``, i.e. the
   ``LossAggregation`` callback object exactly as training calls it, without a Trainer (so no logger
   I/O; world size 1).
2. Images/s of our pre-training step and of our encoder alone (visible tokens only) against a plain timm
   ViT of the same width and depth encoding all tokens of the three modalities.
3. Images/s of the scene generator through a DataLoader with 0 and 2 workers, against what the
   training step consumes.

Peak memory of 1. and 2. ("peak MiB"): the rise of the peak RSS over the RSS after the model, optimizer
and batch are built, over the warm-up and one round of steps, each method in its own fresh process
(see ``benchmarks/_memory.py``), measured once per method, before the timing, in the same run. The
full step of 2. is the step of ``none`` in 1. and shares its number.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, default_collate

from benchmarks import _memory, _timing
from data.scenes import SceneDataset
from models.multimae import MultiMAE
from pretrain.balancers import (
    DBMTL,
    DWA,
    ExcessMTL,
    GradientAggregator,
    GradNorm,
    Minimax,
    NoBalancing,
    Uncertainty,
)
from pretrain.mm_mae import MMMAEPretraining

TINY = dict(
    image_size=64,
    patch_size=8,
    embed_dim=128,
    depth=4,
    num_heads=4,
    decoder_dim=64,
    decoder_depth=1,
    decoder_heads=4,
    num_visible=48,
)
#: name -> (balancer factory, the paper's Table 3 FLOPs relative to T)
METHODS = {
    "none": (partial(NoBalancing), "T"),
    "minimax": (partial(Minimax, alpha=1.0), "2T"),
    "uncertainty": (partial(Uncertainty), "2T"),
    "dwa": (partial(DWA, window=10), "3T"),
    "gradnorm": (partial(GradNorm), "4T"),  # mode=features: every decoder reads its own copy of the features
    "upgrad (features)": (partial(GradientAggregator, method="upgrad", mode="features"), "-"),
    "mgda (features)": (partial(GradientAggregator, method="mgda", mode="features"), "-"),
    "pcgrad (features)": (partial(GradientAggregator, method="pcgrad", mode="features"), "-"),
    "excessmtl (features)": (partial(ExcessMTL, mode="features"), "-"),
    "dbmtl (features)": (partial(DBMTL, mode="features"), "-"),
    "gradnorm (shared_params)": (partial(GradNorm, mode="shared_params"), "4T"),
    "upgrad (shared_params)": (partial(GradientAggregator, method="upgrad", mode="shared_params"), "-"),
}
#: the rows with a goal: time, peak memory (ratios to none)
GOALS = {"minimax": (1.05, None), **{n: (1.3, 1.5) for n in METHODS if n == "gradnorm" or "(features)" in n}}


def make_batch(batch_size: int, image_size: int) -> dict[str, torch.Tensor]:
    ds = SceneDataset(batch_size, "val", image_size=image_size)
    return default_collate([ds[i] for i in range(batch_size)])


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    module = MMMAEPretraining(MultiMAE(**TINY), METHODS[name][0], {})
    optimizer = module.configure_optimizers()["optimizer"]
    return module, optimizer


def train_step(module, optimizer, batch, i):
    loss = module.training_step(batch, i)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


clock = _timing.CLOCKS["cpu"]  # set from --clock in main()


def time_steps(fn, steps: int) -> float:
    """Median seconds per call over ``steps`` calls, on the chosen clock."""
    times = []
    for _ in range(steps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


WARMUP = {"balancers": 2, "encoders": 1}  # untimed calls per method before the rounds


def bench_balancers(batch, rounds: int, steps: int) -> dict[str, list[float]]:
    built = {name: build(name) for name in METHODS}
    counters = {name: 0 for name in METHODS}

    def runner(name):
        module, opt = built[name]

        def fn():
            train_step(module, opt, batch, counters[name])
            counters[name] += 1

        return fn

    for name in METHODS:  # warm-up
        for _ in range(WARMUP["balancers"]):
            runner(name)()
    names = list(METHODS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(time_steps(runner(name), steps))
    return times


ENCODERS = ["ours: full step", "ours: encoder, visible", "timm ViT: all"]


def encoder_fn(name: str, batch):
    """The step of one row of the encoder table, with its model and optimizer built."""
    import timm

    b = batch["rgb"].shape[0]
    if name == "ours: full step":
        module, opt = build("none")
        return lambda: train_step(module, opt, batch, 0)
    if name == "ours: encoder, visible":
        model = build("none")[0].model
        enc_opt = torch.optim.AdamW(model.parameters(), 1e-4)
        inputs = {m: batch[m] for m in model.modalities}

        def ours_encoder():
            tokens = model.tokenize(inputs, model.modalities)
            visible = model.sample_visible(b)
            ids = torch.argsort((~visible.flatten(1)).to(torch.int8), dim=1, stable=True)[
                :, : model.num_visible
            ]
            x = tokens.gather(1, ids[..., None].expand(-1, -1, tokens.shape[-1]))
            loss = model.encode(x).pow(2).mean()
            enc_opt.zero_grad(set_to_none=True)
            loss.backward()
            enc_opt.step()

        return ours_encoder
    assert name == "timm ViT: all", name
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        class_token=True,
        no_embed_class=True,
        img_size=(TINY["image_size"], 3 * TINY["image_size"]),
        patch_size=TINY["patch_size"],
        embed_dim=TINY["embed_dim"],
        depth=TINY["depth"],
        num_heads=TINY["num_heads"],
    )
    vit_opt = torch.optim.AdamW(vit.parameters(), 1e-4)
    # all three modalities side by side as one 3-channel image: 3 x 64 tokens, as many as ours
    wide = torch.cat(
        [
            batch["rgb"],
            batch["depth"].expand(-1, 3, -1, -1),
            batch["semseg"][:, None].float().expand(-1, 3, -1, -1),
        ],
        dim=-1,
    )

    def vit_all_tokens():
        loss = vit.forward_features(wide).pow(2).mean()
        vit_opt.zero_grad(set_to_none=True)
        loss.backward()
        vit_opt.step()

    return vit_all_tokens


def bench_encoders(batch, rounds: int, steps: int) -> dict[str, float]:
    """Images/s: our full step, our encoder on visible tokens, timm ViT on all 3 x N tokens."""
    b = batch["rgb"].shape[0]
    fns = {name: encoder_fn(name, batch) for name in ENCODERS}
    for fn in fns.values():
        for _ in range(WARMUP["encoders"]):
            fn()
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_steps(fn, steps))
    return {name: b / statistics.median(t) for name, t in times.items()}


def memory_of(name: str, args) -> None:
    """Child process: peak memory of one balancer's step or one encoder row, warm-up + one round."""
    batch = make_batch(args.batch_size, TINY["image_size"])
    if name in METHODS:

        def make():
            module, opt = build(name)
            count = itertools.count()
            return lambda: train_step(module, opt, batch, next(count))

        n = WARMUP["balancers"] + args.steps
    else:
        make, n = partial(encoder_fn, name, batch), WARMUP["encoders"] + args.steps
    _memory.report(_memory.measure_here(make, n))


def bench_generator(batch_size: int, batches: int, image_size: int) -> dict[int, float]:
    """Wall-clock images/s (workers run in other processes, so CPU time of this one would not count them)."""
    out = {}
    for workers in (0, 2):
        ds = SceneDataset(batch_size * (batches + 2), "train", image_size=image_size)
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
        it = iter(loader)
        next(it)  # worker start-up excluded
        t0 = time.perf_counter()
        n = 0
        for batch in it:
            n += batch["rgb"].shape[0]
        out[workers] = n / (time.perf_counter() - t0)
        del it, loader
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians over rounds)")
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step (the default run's 32)")
    parser.add_argument("--generator-batches", type=int, default=30, help="batches timed per worker setting")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child process: peak memory of one method
    _timing.add_arguments(parser)
    return parser.parse_args()


def report_balancers(times: dict[str, list[float]], mem: dict[str, dict]) -> None:
    """The Table-3 rows (step time and peak memory per balancer, against ``none``) and each goal, met or not."""
    m = {name: _memory.mib(r) for name, r in mem.items()}
    base = statistics.median(times["none"])
    print("\n## Step time and peak memory per balancer (measured Table 3), median of interleaved rounds")
    print(
        "| method | ms / step | ratio to none | median per-round ratio | peak MiB | mem x none | paper FLOPs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        per_round = statistics.median(t / n for t, n in zip(ts, times["none"]))
        print(
            f"| {name} | {med * 1000:.1f} | {med / base:.3f} | {per_round:.3f} | {_memory.fmt_mib(mem[name])} "
            f"| {_memory.ratio(m[name], m['none']):.2f} | {METHODS[name][1]} |"
        )
    for name, (t, mem_goal) in GOALS.items():
        ratio, mem_ratio = statistics.median(times[name]) / base, _memory.ratio(m[name], m["none"])
        met = ratio <= t and (mem_goal is None or mem_ratio <= mem_goal)
        print(
            f"goal {name} / none: time <= {t}{'' if mem_goal is None else f', memory <= {mem_goal}'}: "
            f"{'met' if met else 'NOT met'} (time {ratio:.3f}, peak memory {mem_ratio:.3f})"
        )


def report_encoders(rates: dict[str, float], mem: dict[str, dict], clock_name: str) -> None:
    """Images/s and peak memory of our step and encoder against timm's ViT on all tokens."""
    m = {name: _memory.mib(r) for name, r in mem.items()}
    print(
        f"\n## Images/s of a training step on the {clock_name} clock, {torch.get_num_threads()} thread(s) "
        "(encoder rows: forward + backward + AdamW of the encoder only)"
    )
    print("| what | images / s | peak MiB |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {_memory.fmt_mib(mem[name])} |")
    vit = "timm ViT: all"
    print(
        f"visible-only encoding ({TINY['num_visible']} + 1 of {3 * 64} + 1 tokens) is "
        f"{rates['ours: encoder, visible'] / rates[vit]:.1f}x faster than timm ViT on all tokens; "
        f"peak memory ours / timm ViT: encoder {_memory.ratio(m['ours: encoder, visible'], m[vit]):.3f}, "
        f"full step {_memory.ratio(m['ours: full step'], m[vit]):.3f}"
    )


def report_generator(gen: dict[int, float], demand: float) -> None:
    """Scene-generator images/s per DataLoader worker count, against ``demand`` (the full step's images/s)."""
    print("\n## Scene generator through a DataLoader")
    print("| workers | images / s | x what training consumes |")
    print("|---|---|---|")
    for workers, rate in gen.items():
        print(f"| {workers} | {rate:.0f} | {rate / demand:.1f} |")


def main() -> None:
    args = parse_args()
    global clock
    clock = _timing.configure(args)
    torch.manual_seed(0)
    if args.memory_of:
        memory_of(args.memory_of, args)
        return
    print(
        f"torch threads: {torch.get_num_threads()}, clock: {args.clock}, tiny model {TINY}, batch {args.batch_size}"
    )
    mem = _memory.measure_all("benchmarks.bench_mm_mae", [*METHODS, *ENCODERS[1:]])
    mem[ENCODERS[0]] = mem["none"]  # the same step
    print(_memory.METHOD)
    batch = make_batch(args.batch_size, TINY["image_size"])
    report_balancers(bench_balancers(batch, args.rounds, args.steps), mem)
    rates = bench_encoders(batch, args.rounds, args.steps)
    report_encoders(rates, mem, args.clock)
    gen = bench_generator(args.batch_size, args.generator_batches, TINY["image_size"])
    report_generator(gen, rates["ours: full step"])


if __name__ == "__main__":
    main()
