"""``stage=plan``: what a run will cost before it runs: plan.json with the parameters, the samples (and tokens or
images) per step, the steps, the FLOPs, the memory per device, whether that fits named GPUs (and what to change
if not), the GPU-hours at an assumed MFU and the pre-processing bill. Nothing is trained and no data is read
(PoS-BERT and MM-MAE get random batches of the configured shapes; another experiment takes one batch of its
data module).

How the numbers are obtained:

- **Parameters** of the model built at its configured sizes (PoS-BERT's vocabulary: ``model.vocab_size``, else
  ``data.vocab_size``, the most pieces the trained tokenizer may have).
- **FLOPs and activations** are measured, not estimated: one training step (the module's ``training_step``, so
  the balancer's own work included, then the backward) on the CPU at batch ``plan.measure_batch`` and at twice
  that, under the configured precision (bf16-mixed: CPU autocast). FLOPs are counted by the project's counter
  (``runner.throughput.step_flop_counter``: matrix products, convolutions, attention; here with the CPU's
  attention kernels counted too, as the GPU's are in training); activations are the
  bytes autograd saves for the backward (``saved_tensors_hooks``; parameters left out). Both are linear in the
  batch, so the two points give a fixed part and a per-sample part, scaled to the configured batch.
- **Memory per device** = weights + gradients (4 bytes a parameter; 2 with ``-true`` half precisions) + the
  optimizer state (AdamW: 8 bytes a parameter; SGD with momentum: 4) + activations at the per-device batch.
  FSDP divides the first three by the number of devices. CUDA context and allocator slack are not counted: a
  GPU "fits" when the total is at most ``plan.usable_memory`` (0.9) of its memory.
- **GPU-hours** = total FLOPs / (``plan.mfu`` x the GPU's dense bf16 peak, ``runner.throughput.PEAK_BF16_FLOPS``);
  wall-clock hours on 1 and on 8 nodes of ``plan.gpus_per_node`` GPUs assume the same MFU (linear scaling).
"""

from __future__ import annotations

import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.factories import instantiate_node
from runner.throughput import peak_flops, step_flop_counter
from utils.errors import ConfigError

#: GPUs the plan checks: name -> (memory in bytes, as nvidia-smi reports it; the key of the bf16 peak table)
GPUS: dict[str, tuple[int, str]] = {
    "H100 80GB": (81559 * 2**20, "h100"),
    "H200 141GB": (143771 * 2**20, "h200"),
    "A100 80GB": (81920 * 2**20, "a100"),
    "A100 40GB": (40960 * 2**20, "a100"),
    "L40S 48GB": (46068 * 2**20, "l40s"),
}
#: ``plan.*`` keys and their defaults (conf/config.yaml holds the same)
DEFAULTS = {
    "mfu": 0.35,
    "measure_batch": 1,
    "usable_memory": 0.9,
    "gpus_per_node": 8,
    "corpus_words": None,
    "tagging_words_per_s": 21000.0,
}
GIB = 2**30


def options(cfg: DictConfig) -> dict[str, Any]:
    """The ``plan`` node over :data:`DEFAULTS`, checked."""
    opts = {**DEFAULTS, **OmegaConf.to_container(cfg.get("plan") or {}, resolve=True)}
    if not 0 < float(opts["mfu"]) <= 1:
        raise ConfigError(f"plan.mfu must be in (0, 1], got {opts['mfu']}.")
    if int(opts["measure_batch"]) < 1:
        raise ConfigError(f"plan.measure_batch must be >= 1, got {opts['measure_batch']}.")
    return opts


# -- the model and a batch at the configured shapes -----------------------------------------------------------
def build_module(cfg: DictConfig):
    """The pre-training module of the config (model, balancer, aggregation), without its data module."""
    model = instantiate_node(cfg.model, "model")
    factory = instantiate_node(cfg.module, "module")
    aggregation = OmegaConf.to_container(cfg.get("aggregation") or {}, resolve=True)
    module = factory(
        model=model, balancer=instantiate_node(cfg.balancer, "balancer"), aggregation=aggregation
    )
    if getattr(model, "size_to_tokenizer", False):  # PoS-BERT sized by its tokenizer
        model.resize_token_embeddings(vocabulary(cfg))
    return module


def batch_key(cfg: DictConfig) -> str:
    """The config key of the per-device batch: PoS-BERT's ``data.loader.batch_size``, else ``data.batch_size``."""
    return "data.loader.batch_size" if OmegaConf.select(cfg, "data.loader") is not None else "data.batch_size"


def vocabulary(cfg: DictConfig) -> int:
    """PoS-BERT's vocabulary when ``model.vocab_size`` is null: the trained tokenizer's
    ``data.tokenizer.vocab_size`` (an upper bound) or the length of the hub tokenizer ``data.tokenizer.name``
    (from the local cache)."""
    name = OmegaConf.select(cfg, "data.tokenizer.name")
    if not name:
        return int(cfg.data.tokenizer.vocab_size)
    try:
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(str(name), local_files_only=True))
    except OSError as exc:
        raise ConfigError(
            f"stage=plan cannot read the tokenizer data.tokenizer.name={name} offline ({exc.__class__.__name__}); "
            "set model.vocab_size=<its length>."
        ) from None


def pos_bert_batch(cfg: DictConfig, vocab: int, n: int, seed: int = 0) -> dict:
    """``n`` NSP pairs of ``data.max_length`` word-pieces, masked as the data module masks them."""
    from data.pos_grammar import ALL_GROUPS
    from data.pos_masking import PosMaskingCollator
    from data.pos_tagging import IGNORE

    g = torch.Generator().manual_seed(seed)
    length = int(cfg.data.max_length)
    collate = PosMaskingCollator(
        pad_id=0, mask_id=4, vocab_size=vocab, mlm_probability=float(cfg.data.masking.mlm_probability), seed=seed
    )
    rows = []
    for i in range(n):
        ids = [2, *torch.randint(5, vocab, (length - 2,), generator=g).tolist(), 3]
        pos = [IGNORE, *torch.randint(0, len(ALL_GROUPS), (length - 2,), generator=g).tolist(), IGNORE]
        rows.append(
            {"input_ids": ids, "token_type_ids": [0] * length, "pos": pos, "nsp_label": i % 2, "index": i}
        )
    return collate(rows)


def mm_mae_batch(cfg: DictConfig, n: int, seed: int = 0) -> dict:
    """``n`` random images of every modality of the MultiMAE (``model.modalities``), at ``model.image_size``."""
    g = torch.Generator().manual_seed(seed)
    side, classes = int(cfg.model.image_size), int(cfg.model.num_classes)
    makers = {
        "rgb": lambda: torch.randn(n, 3, side, side, generator=g),
        "depth": lambda: 1.0 + 8.0 * torch.rand(n, 1, side, side, generator=g),
        "semseg": lambda: torch.randint(0, classes, (n, side, side), generator=g),
    }
    return {m: makers[m]() for m in cfg.model.modalities}


def take(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (tensors cut along their first dimension)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: take(v, n) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take(v, n) for v in batch)
    return batch


def sample_batch(cfg: DictConfig, module, n: int) -> Any:
    """A training batch of ``n`` samples at the configured shapes."""
    model = module.model
    if type(module).__name__ == "PosBertPretraining":
        return pos_bert_batch(cfg, int(model.vocab_size), n)
    if type(module).__name__ == "MMMAEPretraining":
        return mm_mae_batch(cfg, n)
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if getattr(module, "prepares_from_data", False):  # e.g. the convex module reads its tasks from the data
        module.prepare_for_finetune(datamodule)
    return take(next(iter(datamodule.train_dataloader())), n)


# -- one measured step ------------------------------------------------------------------------------------
def plan_flop_counter():
    """The throughput callback's counter (``step_flop_counter``) with torch's flash-attention formulas also for
    the CPU's SDPA kernels, which torch's table lacks: the plan counts attention as the callback does on a GPU."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    counter = step_flop_counter()
    cpu_kernels = {
        aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: aten._scaled_dot_product_flash_attention_backward,
    }
    counter.flop_registry.update({cpu: flop_registry[gpu] for cpu, gpu in cpu_kernels.items()})
    return counter


def measure_step(module, batch: Any, bf16: bool) -> tuple[int, int]:
    """(FLOPs, activation bytes) of one training step on the CPU: the FLOPs of forward, balancer and backward
    (:func:`plan_flop_counter`), and the bytes of the tensors autograd saves for the backward (each storage once,
    parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    module.train()
    counter = plan_flop_counter()
    with warnings.catch_warnings(), counter:
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.training_step(batch, 0)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops()), sum(saved.values())


def measure(cfg: DictConfig, module, n: int) -> dict[str, float]:
    """FLOPs and activation bytes of a step, as ``fixed + per_sample x batch`` from steps at ``n`` and ``2n``."""
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    torch.manual_seed(int(cfg.seed))
    f1, a1 = measure_step(module, sample_batch(cfg, module, n), bf16)
    f2, a2 = measure_step(module, sample_batch(cfg, module, 2 * n), bf16)
    flops_per, act_per = (f2 - f1) / n, max(a2 - a1, 0) / n
    return {
        "flops_fixed": max(f1 - flops_per * n, 0.0),
        "flops_per_sample": flops_per,
        "activations_fixed": max(a1 - act_per * n, 0.0),
        "activations_per_sample": act_per,
    }


# -- memory, fit, hours ----------------------------------------------------------------------------------
def world_size(cfg: DictConfig, opts: dict) -> int:
    """Processes of the configured trainer (``devices: -1`` counts as ``plan.gpus_per_node``)."""
    devices = cfg.trainer.get("devices", 1)
    per_node = int(opts["gpus_per_node"]) if devices in (-1, "-1", "auto") else int(devices)
    return per_node * int(cfg.trainer.get("num_nodes", 1) or 1)


def optimizer_bytes_per_param(cfg: DictConfig) -> int:
    """Bytes of optimizer state per parameter: Adam(W) two fp32 moments; SGD its momentum buffer, if any."""
    node = OmegaConf.select(cfg, "module.optimizer") or {}
    target = str(node.get("_target_", "")).lower()
    if "adam" in target:
        return 8
    return 4 if float(node.get("momentum", 0) or 0) > 0 else 0


def memory(cfg: DictConfig, params: int, measured: dict, batch: int, world: int) -> dict[str, float]:
    """Bytes per device: weights, gradients, optimizer state, activations at the per-device ``batch``."""
    precision = str(cfg.trainer.precision)
    weight_bytes = 2 if precision in ("bf16-true", "16-true") else 4
    shard = world if "fsdp" in str(cfg.trainer.get("strategy", "")).lower() else 1
    out = {
        "weights": params * weight_bytes / shard,
        "gradients": params * weight_bytes / shard,
        "optimizer_state": params * optimizer_bytes_per_param(cfg) / shard,
        "activations": measured["activations_fixed"] + measured["activations_per_sample"] * batch,
    }
    out["total"] = sum(out.values())
    return out


def fits(mem: dict, measured: dict, batch: int, opts: dict, sharded: bool, key: str = "data.batch_size") -> dict:
    """For each GPU of :data:`GPUS`: whether the memory fits, and what to change where it does not (``key``: the
    config key of the per-device batch)."""
    out = {}
    for name, (capacity, _) in GPUS.items():
        usable = capacity * float(opts["usable_memory"])
        row: dict[str, Any] = {"fits": mem["total"] <= usable, "usable_gib": usable / GIB}
        if not row["fits"]:
            room = usable - (mem["total"] - mem["activations"]) - measured["activations_fixed"]
            per = measured["activations_per_sample"]
            largest = int(room // per) if per > 0 and room > 0 else 0
            advice = []
            if largest >= 1:
                steps = math.ceil(batch / largest)
                advice.append(
                    f"{key}={largest} trainer.accumulate_grad_batches={steps} (same batch)"
                )
            if not sharded:
                advice.append("trainer=fsdp (weights, gradients and optimizer state split over the GPUs)")
            advice.append(
                "activation checkpointing (not a config key yet: keeps about one layer's activations)"
            )
            row.update(largest_batch=largest, change=advice)
        out[name] = row
    return out


def hours(total_flops: float, opts: dict, world: int = 1) -> dict[str, dict]:
    """GPU-hours at ``plan.mfu`` on each GPU of :data:`GPUS`, and wall-clock hours on the configured ``world``
    GPUs and on 1 and 8 nodes."""
    mfu, per_node = float(opts["mfu"]), int(opts["gpus_per_node"])
    out = {}
    for name, (_, key) in GPUS.items():
        gpu_hours = total_flops / (mfu * peak_flops(key)) / 3600
        out[name] = {
            "gpu_hours": gpu_hours,
            "wall_hours": gpu_hours / world,
            f"wall_hours_1x{per_node}": gpu_hours / per_node,
            f"wall_hours_8x{per_node}": gpu_hours / (8 * per_node),
        }
    return out


def preprocessing(cfg: DictConfig, opts: dict) -> dict | None:
    """NLTK tagging of the raw text (PoS-BERT on real text): ``plan.corpus_words`` at ``plan.tagging_words_per_s``
    per process; None where the config tags nothing or the corpus size is not given."""
    words = opts.get("corpus_words")
    if not words or OmegaConf.select(cfg, "data.masking.mlm_probability") is None:
        return None
    rate = float(opts["tagging_words_per_s"])
    processes = int(OmegaConf.select(cfg, "data.corpus.num_proc") or 1)
    process_hours = float(words) / rate / 3600
    return {
        "corpus_words": float(words),
        "tagging_words_per_s_per_process": rate,
        "process_hours": process_hours,
        "wall_hours_at_data.corpus.num_proc": process_hours / processes,
    }


# -- the plan --------------------------------------------------------------------------------------------
def unit_of(module) -> str | None:
    """What a sample is made of, for the per-step count: ``tokens`` (PoS-BERT), ``images`` (MM-MAE) or None."""
    name = type(module).__name__
    return {"PosBertPretraining": "tokens", "MMMAEPretraining": "images"}.get(name)


def make_plan(cfg: DictConfig) -> dict[str, Any]:
    """The plan of the configured run (see the module docstring); nothing is trained."""
    opts = options(cfg)
    steps = int(cfg.trainer.get("max_steps") or -1)
    if steps <= 0:
        raise ConfigError(f"stage=plan needs trainer.max_steps > 0 (the run's length), got {steps}.")
    module = build_module(cfg)
    params = sum(p.numel() for p in module.parameters())
    measured = measure(cfg, module, int(opts["measure_batch"]))
    batch = int(OmegaConf.select(cfg, batch_key(cfg)) or 1)
    world, accumulate = world_size(cfg, opts), int(cfg.trainer.get("accumulate_grad_batches") or 1)
    samples = batch * world * accumulate
    flops_per_step = (measured["flops_fixed"] + measured["flops_per_sample"] * batch) * world * accumulate
    mem = memory(cfg, params, measured, batch, world)
    sharded = "fsdp" in str(cfg.trainer.get("strategy", "")).lower()
    fit = fits(mem, measured, batch, opts, sharded, batch_key(cfg))
    cost = hours(flops_per_step * steps, opts, world)
    plan: dict[str, Any] = {
        "experiment": str(cfg.experiment),
        "parameters": params,
        "precision": str(cfg.trainer.precision),
        "strategy": str(cfg.trainer.get("strategy", "auto")),
        "world_size": world,
        "batch_per_device": batch,
        "accumulate_grad_batches": accumulate,
        "samples_per_step": samples,
        "steps": steps,
        "flops_per_step": flops_per_step,
        "total_flops": flops_per_step * steps,
        "memory_per_device_gib": {k: v / GIB for k, v in mem.items()},
        "gpus": {name: {**row, **cost[name]} for name, row in fit.items()},
        "preprocessing": preprocessing(cfg, opts),
        "measured_on_cpu": {
            **measured,
            "batches": [int(opts["measure_batch"]), 2 * int(opts["measure_batch"])],
        },
        "assumptions": opts,
    }
    unit = unit_of(module)
    if unit == "tokens":  # padded NSP pairs of data.max_length word-pieces (an upper bound on real tokens)
        plan["tokens_per_step"] = samples * int(cfg.data.max_length)
    elif unit == "images":
        plan["images_per_step"] = samples
    return plan


def summary_lines(plan: dict) -> list[str]:
    """The plan in a few printed lines."""
    mem = plan["memory_per_device_gib"]
    unit = next((k for k in ("tokens_per_step", "images_per_step") if k in plan), "samples_per_step")
    lines = [
        f"plan of {plan['experiment']}: {plan['parameters'] / 1e6:.1f}M parameters, {plan[unit]:,} "
        f"{unit.replace('_per_step', '')} per step ({plan['samples_per_step']:,} samples on {plan['world_size']} "
        f"device(s)), {plan['steps']:,} steps",
        f"  FLOPs: {plan['flops_per_step']:.3g} per step, {plan['total_flops']:.3g} in all",
        "  memory per device (GiB): "
        + ", ".join(f"{k} {v:.2f}" for k, v in mem.items())
        + f" ({plan['precision']}, {plan['strategy']})",
    ]
    mfu = plan["assumptions"]["mfu"]
    for name, row in plan["gpus"].items():
        fit = "fits" if row["fits"] else "does NOT fit: " + "; or ".join(row["change"])
        lines.append(
            f"  {name}: {row['gpu_hours']:.3g} GPU-hours at MFU {mfu} ({row['wall_hours']:.3g} h on "
            f"{plan['world_size']} GPUs); {fit}"
        )
    if plan["preprocessing"]:
        pre = plan["preprocessing"]
        lines.append(
            f"  NLTK tagging: {pre['process_hours']:,.1f} process-hours ({pre['corpus_words']:.3g} words)"
        )
    return lines


def command_line() -> str:
    """The command that made this plan: ``python run.py`` and the job's overrides (Hydra's own, such as
    ``hydra.run.dir``, left out), or this process's command line outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "python " + shlex.join(sys.argv)
    job = HydraConfig.get()
    return f"python {job.job.name}.py " + shlex.join(str(o) for o in job.overrides.task)


def write_plan(cfg: DictConfig, out_dir: Path) -> dict:
    """``stage=plan``: plan.json in the run directory, printed. It names the command, the seconds it took, the
    commit and machine (``producer``) and its docs renderer, so that ``python run.py stage=report
    report.data=plan.json report.store=<name>`` stores it with the provenance of the plan, not of the store."""
    from runner.provenance import producer
    from runner.results import write_json_atomic

    start = time.perf_counter()
    plan = make_plan(cfg)
    command = command_line()
    plan.update(
        command=command,
        seconds=round(time.perf_counter() - start, 1),
        producer={k: v for k, v in producer(command).items() if k != "command"},
        renderer="plan",
    )
    write_json_atomic(out_dir / "plan.json", plan)
    print("\n".join([*summary_lines(plan), f"  written: {out_dir / 'plan.json'}"]), flush=True)
    return plan
