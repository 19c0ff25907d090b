"""PoS-BERT benchmark, printed in one run (interleaved rounds, medians).

1. Training step with each balancer (minimax, uncertainty, dwa; gradnorm, upgrad, mgda, pcgrad on the
   per-task gradients w.r.t. the encoder output at the masked and [CLS] rows, all from one backward; gradnorm
   and upgrad on the last encoder layer, the exact modes) over the 9 POS tasks / with ``none``  (goals:
   minimax time <= 1.05; features-mode gradient methods time <= 1.3, peak memory <= 1.5)
2. Training step of our model (MLM head on gathered masked positions) /
   ``transformers.BertForPreTraining(..., labels=...)`` (logits at every position)  (goal <= 0.5)
   Same BERT size, same batch (default BERT-tiny, vocab 8000, batch 32 x 128, 15% masked), AdamW step
   included. Both as step time and as peak memory: the rise of the peak RSS over the RSS after the
   model, optimizer and batches are built, over the warm-up and one round of steps, each variant in its
   own fresh process (see ``benchmarks/_memory.py``), measured once, before the timing.

POS tagging throughput (sentences/s per ``num_proc``) is measured by ``benchmarks/bench_data.py``.

    python benchmarks/bench_pos_bert.py [--rounds 5] [--steps 4] [--threads 1] [--clock cpu]

Step times are this process's CPU time on one torch thread by default (``--clock``/``--threads``, see
``benchmarks/_timing.py``), so other jobs on the machine do not distort the ratios.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import _memory, _timing  # noqa: E402
from data.pos_masking import PosMaskingCollator  # noqa: E402
from data.pos_tagging import IGNORE  # noqa: E402
from models.bert import PosBert  # noqa: E402
from pretrain.balancers import (  # noqa: E402
    DBMTL,
    DWA,
    ExcessMTL,
    GradientAggregator,
    GradNorm,
    Minimax,
    NoBalancing,
    Uncertainty,
)
from pretrain.pos_bert import PosBertPretraining  # noqa: E402

# token share of each group in the generated corpus (verb .. interjection, other)
GROUP_FREQ = [0.164, 0.211, 0.093, 0.161, 0.051, 0.077, 0.076, 0.012, 0.008, 0.149]


def make_batches(n: int, bsz: int, length: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coll = PosMaskingCollator(pad_id=0, mask_id=4, vocab_size=vocab)
    freq = torch.tensor(GROUP_FREQ)
    out = []
    for _ in range(n):
        ex = []
        for i in range(bsz):
            ids = [2, *torch.randint(5, vocab, (length - 2,), generator=g).tolist(), 3]
            pos = [IGNORE, *torch.multinomial(freq, length - 2, True, generator=g).tolist(), IGNORE]
            ex.append({"input_ids": ids, "token_type_ids": [0] * length, "pos": pos, "nsp_label": i % 2})
        out.append(coll(ex))
    return out


def size_kwargs(args) -> dict:
    return dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=512,
    )


def ours_step_fn(balancer, args):
    torch.manual_seed(0)
    module = PosBertPretraining(PosBert(**size_kwargs(args)), balancer)
    module.train()
    groups = [{"params": list(module.parameters())}, *module.aggregator.balancer_param_groups()]
    opt = torch.optim.AdamW(groups, lr=1e-4)

    def step(batch):
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step_fn(args):
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    kw = size_kwargs(args)
    model = BertForPreTraining(BertConfig(**kw, attn_implementation="sdpa")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        labels = torch.full_like(batch["input_ids"], -100).reshape(-1)
        labels[batch["masked_positions"]] = batch["mlm_labels"]
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            labels=labels.view_as(batch["input_ids"]),
            next_sentence_label=batch["nsp_labels"],
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


BALANCERS = {
    "none": functools.partial(NoBalancing),
    "minimax": functools.partial(Minimax, alpha=1.0),
    "uncertainty": functools.partial(Uncertainty),
    "dwa": functools.partial(DWA, window=10),
    "gradnorm": functools.partial(GradNorm),  # mode=features
    "upgrad (features)": functools.partial(GradientAggregator, method="upgrad", mode="features"),
    "mgda (features)": functools.partial(GradientAggregator, method="mgda", mode="features"),
    "pcgrad (features)": functools.partial(GradientAggregator, method="pcgrad", mode="features"),
    "excessmtl (features)": functools.partial(ExcessMTL, mode="features"),
    "dbmtl (features)": functools.partial(DBMTL, mode="features"),
    "gradnorm (shared_params)": functools.partial(GradNorm, mode="shared_params"),
    "upgrad (shared_params)": functools.partial(GradientAggregator, method="upgrad", mode="shared_params"),
}
#: the rows with a goal: time, peak memory (ratios to none)
GOALS = {
    "minimax": (1.05, None),
    **{n: (1.3, 1.5) for n in BALANCERS if n == "gradnorm" or "(features)" in n},
}
VARIANTS = {
    **{name: functools.partial(ours_step_fn, balancer) for name, balancer in BALANCERS.items()},
    "hf_BertForPreTraining": hf_step_fn,
}


def memory_of(name: str, args) -> None:
    """Child process: peak memory of one variant over the warm-up batch and one round of batches."""
    batches = make_batches(args.steps, args.batch, args.length, args.vocab)
    order = [batches[0], *batches]  # as in bench_steps: warm-up, then one round

    def make():
        fn, it = VARIANTS[name](args), iter(order)
        return lambda: fn(next(it))

    _memory.report(_memory.measure_here(make, len(order)))


def bench_steps(args) -> None:
    mem = _memory.measure_all("benchmarks.bench_pos_bert", VARIANTS)
    batches = make_batches(args.steps, args.batch, args.length, args.vocab)
    variants = {name: make(args) for name, make in VARIANTS.items()}
    for fn in variants.values():  # warm-up
        fn(batches[0])
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = args.clock_fn()
            for b in batches:
                fn(b)
            times[name].append((args.clock_fn() - t0) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    m = {k: _memory.mib(r) for k, r in mem.items()}
    hf = "hf_BertForPreTraining"
    n_masked = statistics.fmean(len(b["masked_positions"]) for b in batches)
    print(
        f"model: L={args.layers} H={args.hidden} A={args.heads} vocab={args.vocab}; batch {args.batch} x "
        f"{args.length}, {n_masked:.0f} masked positions; {_timing.describe(args)}; "
        f"{args.rounds} interleaved rounds x {args.steps} steps, medians"
    )
    print(_memory.METHOD)
    print(f"  {'step':<24s}{'ms/step':>9}{'peak MiB':>10}")
    for k, v in med.items():
        print(f"  {k:<24s}{1000 * v:>9.1f}{_memory.fmt_mib(mem[k]):>10}")
    print(f"{'':<32}{'time':>7}{'memory':>8}")
    for name in BALANCERS:
        if name != "none":
            time_ratio, mem_ratio = med[name] / med["none"], _memory.ratio(m[name], m["none"])
            print(
                f"{name + ' / none':<32}{time_ratio:>7.3f}{mem_ratio:>8.3f}{_goal(name, time_ratio, mem_ratio)}"
            )
    print(
        f"{'ours (none) / BertForPreTraining':<32}{med['none'] / med[hf]:>7.3f}"
        f"{_memory.ratio(m['none'], m[hf]):>8.3f}   (goal: time <= 0.5)"
    )


def _goal(name: str, time_ratio: float, mem_ratio: float) -> str:
    if name not in GOALS:
        return ""
    t, m = GOALS[name]
    met = time_ratio <= t and (m is None or mem_ratio <= m)
    return f"   (goal: time <= {t}{'' if m is None else f', memory <= {m}'}: {'met' if met else 'NOT met'})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # child process: peak memory of one variant
    _timing.add_arguments(p)
    args = p.parse_args()
    args.clock_fn = _timing.configure(args)
    if args.memory_of:
        memory_of(args.memory_of, args)
        return
    bench_steps(args)


if __name__ == "__main__":
    main()
