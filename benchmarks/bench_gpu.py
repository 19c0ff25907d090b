"""Pre-training speed on one GPU: steps/s, samples/s, tokens/s or images/s, TFLOP/s, MFU and peak memory of
PoS-BERT (BERT-base) and MM-MAE (ViT-B) in bf16 for a few balancers. ``benchmarks/gpu.sh`` runs it.

    python -m benchmarks.bench_gpu [--device cuda] [--size base] [--balancers none,minimax,gradnorm]
                                   [--experiments pos_bert,mm_mae] [--steps 40] [--warmup 5] [--compile]

Each row is one Lightning fit of ``--warmup`` + ``--steps`` optimizer steps, built from the run's own configs
(``experiment=<e> model=bert_base|mmmae_base balancer=<b>``, ``trainer.precision``) and timed by the run's own
throughput callback (``runner/throughput.py``: FLOPs of one step from ``FlopCounterMode``, MFU against the
GPU's dense bf16 peak, ``torch.cuda.max_memory_allocated``). The batches are synthetic and already on the
device, so the rows measure the model, the balancer and the optimizer, not the data pipeline (which
``benchmarks/bench_data.py`` measures). ``--size tiny --device cpu`` runs the same code with the tiny models
(the test suite does).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

#: --size -> (PoS-BERT model config, MM-MAE model config, data overrides of MM-MAE)
SIZES = {
    "base": ("bert_base", "mmmae_base", ["data.image_size=224"]),
    "tiny": ("bert_tiny", "mmmae_tiny", []),
}
VOCAB = 30522  # BERT's WordPiece vocabulary


def compose(experiment: str, model: str, balancer: str, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(
            "config",
            overrides=[
                f"experiment={experiment}",
                f"model={model}",
                f"balancer={balancer}",
                "logger=none",
                *extra,
            ],
        )


def pos_bert_batches(n: int, batch: int, length: int, vocab: int) -> list[dict]:
    from benchmarks.bench_pos_bert import make_batches

    return make_batches(n, batch, length, vocab)


def mm_mae_batches(n: int, batch: int, cfg) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    size, classes = int(cfg.data.image_size), int(cfg.data.num_classes)
    return [
        {
            "rgb": torch.randn(batch, 3, size, size, generator=g),
            "depth": torch.rand(batch, 1, size, size, generator=g) * 8 + 0.5,
            "semseg": torch.randint(0, classes, (batch, size, size), generator=g),
            "label": torch.zeros(batch, dtype=torch.long),
        }
        for _ in range(n)
    ]


def run_one(experiment: str, balancer: str, args) -> dict:
    """One fit of ``warmup + steps`` steps; the throughput callback's summary."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from runner.throughput import Throughput

    bert, mae, data = SIZES[args.size]
    extra = [f"model.compile={str(args.compile).lower()}"]
    if experiment == "pos_bert":
        extra += [f"model.vocab_size={args.vocab}", "model.max_position_embeddings=512"]
    cfg = compose(
        experiment,
        bert if experiment == "pos_bert" else mae,
        balancer,
        extra + (data if experiment == "mm_mae" else []),
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    aggregation = OmegaConf.to_container(cfg.aggregation, resolve=True)
    module = instantiate(cfg.module)(model=model, balancer=instantiate(cfg.balancer), aggregation=aggregation)
    distinct = 4
    if experiment == "pos_bert":
        batches = pos_bert_batches(distinct, args.pos_batch, args.length, args.vocab)
    else:
        batches = mm_mae_batches(distinct, args.mae_batch, cfg)
    device = torch.device(args.device)
    batches = [
        {k: v.to(device) for k, v in b.items()} for b in batches
    ]  # on the device: no host copies timed
    total = args.warmup + args.steps
    loader = DataLoader([batches[i % distinct] for i in range(total)], batch_size=None)
    throughput = Throughput(warmup_steps=args.warmup, window=max(2, args.steps))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=total,
        logger=False,
        callbacks=[throughput],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    result = throughput.summary()
    result["fit_s"] = time.perf_counter() - t0
    result["batch"] = args.pos_batch if experiment == "pos_bert" else args.mae_batch
    del trainer, module, model, loader, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def fmt(value, spec: str) -> str:
    """``value`` formatted with ``spec`` (e.g. ``9.2f``), or ``-`` in the same width when it is unknown."""
    if value is None:
        return "-".rjust(int(spec.split(".")[0]))
    return format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--experiments", default="pos_bert,mm_mae")
    p.add_argument("--balancers", default="none,minimax,gradnorm")
    p.add_argument("--precision", default="bf16-mixed", help="trainer.precision (bf16-mixed | 32-true | ...)")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per row")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed first steps per row (the first one counts FLOPs)"
    )
    p.add_argument("--compile", action="store_true", help="model.compile=true (torch.compile the encoder)")
    p.add_argument("--pos-batch", type=int, default=64, help="PoS-BERT sequence pairs per step")
    p.add_argument("--length", type=int, default=128, help="PoS-BERT word-pieces per sequence")
    p.add_argument("--vocab", type=int, default=VOCAB, help="PoS-BERT vocabulary size")
    p.add_argument("--mae-batch", type=int, default=128, help="MM-MAE scenes per step")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")
    from runner.console import quiet_console

    quiet_console()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; torch {torch.__version__}; precision {args.precision}; model size {args.size}; "
        f"compile {args.compile}; {args.warmup} warm-up + {args.steps} timed steps per row",
        flush=True,
    )
    print(
        f"PoS-BERT batch {args.pos_batch} x {args.length} (vocab {args.vocab}); MM-MAE batch {args.mae_batch}",
        flush=True,
    )
    header = (
        f"{'experiment':<11}{'balancer':<10}{'steps/s':>9}{'samples/s':>11}{'tokens|img/s':>14}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'GFLOP/step':>12}{'fit s':>7}"
    )
    print(header, flush=True)
    failed = 0
    for experiment in args.experiments.split(","):
        for balancer in args.balancers.split(","):
            try:
                r = run_one(experiment, balancer, args)
            except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
                failed += 1
                print(f"{experiment:<11}{balancer:<10} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            unit = r.get("tokens_per_s", r.get("images_per_s"))
            flops = r.get("flops_per_step")
            print(
                f"{experiment:<11}{balancer:<10}{fmt(r.get('steps_per_s'), '9.2f')}"
                f"{fmt(r.get('samples_per_s'), '11.1f')}{fmt(unit, '14.0f')}{fmt(r.get('tflops_per_s'), '9.2f')}"
                f"{fmt(r.get('mfu'), '7.1%')}{fmt(r.get('max_memory_gib'), '10.2f')}"
                f"{fmt(flops / 1e9 if flops else None, '12.1f')}{r['fit_s']:7.0f}",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
