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
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, default_collate

from data.scenes import SceneDataset
from models.multimae import MultiMAE
from pretrain.balancers import DWA, GradientAggregator, GradNorm, Minimax, NoBalancing, Uncertainty
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
    "gradnorm": (partial(GradNorm), "4T"),
    "upgrad (features)": (partial(GradientAggregator, method="upgrad", mode="features"), "-"),
}


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


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["cpu"]


def time_steps(fn, steps: int) -> float:
    """Median seconds per call over ``steps`` calls, on the chosen clock."""
    times = []
    for _ in range(steps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


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
        for _ in range(2):
            runner(name)()
    names = list(METHODS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(time_steps(runner(name), steps))
    return times


def bench_encoders(batch, rounds: int, steps: int) -> dict[str, float]:
    """Images/s: our full step, our encoder on visible tokens, timm ViT on all 3 x N tokens."""
    import timm

    b = batch["rgb"].shape[0]
    module, opt = build("none")
    model = module.model
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
    enc_opt = torch.optim.AdamW(model.parameters(), 1e-4)
    # all three modalities side by side as one 3-channel image: 3 x 64 tokens, as many as ours
    wide = torch.cat(
        [
            batch["rgb"],
            batch["depth"].expand(-1, 3, -1, -1),
            batch["semseg"][:, None].float().expand(-1, 3, -1, -1),
        ],
        dim=-1,
    )
    inputs = {m: batch[m] for m in model.modalities}

    def full():
        train_step(module, opt, batch, 0)

    def ours_encoder():
        tokens = model.tokenize(inputs, model.modalities)
        visible = model.sample_visible(b)
        ids = torch.argsort((~visible.flatten(1)).to(torch.int8), dim=1, stable=True)[:, : model.num_visible]
        x = tokens.gather(1, ids[..., None].expand(-1, -1, tokens.shape[-1]))
        loss = model.encode(x).pow(2).mean()
        enc_opt.zero_grad(set_to_none=True)
        loss.backward()
        enc_opt.step()

    def vit_all_tokens():
        loss = vit.forward_features(wide).pow(2).mean()
        vit_opt.zero_grad(set_to_none=True)
        loss.backward()
        vit_opt.step()

    fns = {"ours: full step": full, "ours: encoder, visible": ours_encoder, "timm ViT: all": vit_all_tokens}
    for fn in fns.values():
        fn()
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_steps(fn, steps))
    return {name: b / statistics.median(t) for name, t in times.items()}


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians over rounds)")
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step (the default run's 32)")
    parser.add_argument("--generator-batches", type=int, default=30, help="batches timed per worker setting")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu", help="cpu: process CPU time; wall")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch threads: {torch.get_num_threads()}, clock: {args.clock}, tiny model {TINY}, batch {args.batch_size}"
    )
    batch = make_batch(args.batch_size, TINY["image_size"])

    times = bench_balancers(batch, args.rounds, args.steps)
    base = statistics.median(times["none"])
    print("\n## Step time per balancer (measured Table 3), median of interleaved rounds")
    print("| method | ms / step | ratio to none | median per-round ratio | paper FLOPs |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        per_round = statistics.median(t / n for t, n in zip(ts, times["none"]))
        print(f"| {name} | {med * 1000:.1f} | {med / base:.3f} | {per_round:.3f} | {METHODS[name][1]} |")
    ratio = statistics.median(times["minimax"]) / base
    print(f"goal minimax / none <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'} ({ratio:.3f})")

    rates = bench_encoders(batch, args.rounds, args.steps)
    print(
        f"\n## Images/s of a training step on the {args.clock} clock, {torch.get_num_threads()} thread(s) "
        "(encoder rows: forward + backward + AdamW of the encoder only)"
    )
    print("| what | images / s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} |")
    print(
        f"visible-only encoding ({TINY['num_visible']} + 1 of {3 * 64} + 1 tokens) is "
        f"{rates['ours: encoder, visible'] / rates['timm ViT: all']:.1f}x faster than timm ViT on all tokens"
    )

    gen = bench_generator(args.batch_size, args.generator_batches, TINY["image_size"])
    demand = rates["ours: full step"]
    print("\n## Scene generator through a DataLoader")
    print("| workers | images / s | x what training consumes |")
    print("|---|---|---|")
    for workers, rate in gen.items():
        print(f"| {workers} | {rate:.0f} | {rate / demand:.1f} |")


if __name__ == "__main__":
    main()
