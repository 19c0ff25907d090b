"""Training throughput of pre-training: steps/s, samples/s, tokens/s (PoS-BERT) or images/s (MM-MAE), FLOPs
per step and, on a GPU of the peak table, the model FLOP utilisation (MFU).

The FLOPs of one training step (forward, the balancer's extra backward if any, backward) are counted once, on
the first step, by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention;
element-wise work is not counted, as usual for MFU). MFU = FLOPs per step x steps/s / the device's dense bf16
peak (:data:`PEAK_BF16_FLOPS`), whatever the trainer's precision.

Lightning's own ``ThroughputMonitor`` was the first candidate; it is not used because its peak table
(``lightning.fabric.utilities.throughput.get_available_flops``) finds no entry for a plain ``NVIDIA H200`` and
lists the *sparse* bf16 figure for H200 SXM and H100 NVL (twice the dense peak, halving MFU), it needs a
``flops_per_batch`` attribute computed beforehand, and its numbers do not reach results.json.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback

from pretrain.base import default_units

#: Dense (no sparsity) bf16 tensor-core peak FLOP/s of one GPU, from NVIDIA's datasheets (their "with sparsity"
#: figures are twice these). :func:`peak_flops` matches ``torch.cuda.get_device_name()`` against the keys in this
#: order (lower case, first key contained in the name): specific names before their prefixes (``a100``
#: before ``a10``, ``l40s`` before ``l40`` before ``l4``).
PEAK_BF16_FLOPS: dict[str, float] = {
    "b200": 2250e12,
    "h200 nvl": 835e12,
    "h200": 989e12,  # H200 SXM ("NVIDIA H200"); GH200's GPU has the same peak
    "h100 nvl": 835e12,
    "h100 pcie": 756e12,
    "h100": 989e12,  # H100 SXM ("NVIDIA H100 80GB HBM3")
    "a100": 312e12,  # SXM and PCIe
    "l40s": 362e12,
    "l40": 181e12,
    "l4": 121e12,
    "a10": 125e12,
}


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called ``device_name`` (e.g. ``"NVIDIA H100 80GB HBM3"``), or None
    when the table does not know it."""
    name = device_name.lower()
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


class _TotalOnly:
    """Stands in for FlopCounterMode's module tracker: every FLOP counts toward the total ("Global") only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def step_flop_counter():
    """A ``torch.utils.flop_counter.FlopCounterMode`` that counts the total only.

    Its per-module breakdown registers autograd hooks on every module's outputs, and those hooks break
    ``torch.autograd.grad`` (the gradient balancers' per-task gradients) when an output is a leaf tensor (the
    convex experiment's parameter vector); without the breakdown only the dispatch mode remains, which observes
    the operations and changes nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalOnly()
    return counter


class Throughput(Callback):
    """Logs ``perf/steps_per_s``, ``perf/samples_per_s``, ``perf/<unit>_per_s`` for every further unit the
    module counts (``tokens``: PoS-BERT; ``images``: MM-MAE), ``perf/tflops_per_s`` and, on a GPU of the peak
    table, ``perf/mfu`` (rates over the last ``window`` steps), plus ``perf/max_memory_gib`` on a GPU; and keeps
    the whole run's rates for results.json (:meth:`summary`, merged into its ``cost``).

    The module says what a batch holds with ``throughput_units(batch) -> {"samples": n, "tokens": m, ...}``
    (``PretrainingModule``'s default, and the rule for a LightningModule without the method: the leading size of
    the batch's first tensor counts as samples). The first ``warmup_steps`` steps
    (compilation, the FLOP count, the allocator's first allocations) are not timed, nor is validation.

    Args:
        warmup_steps: training steps left out of the rates (at least 1: the counted step).
        window: steps of the rolling rates that are logged.
        count_flops: count the FLOPs of the first step with ``FlopCounterMode``.
        peak_flops: the device's peak FLOP/s for MFU (null: the table's bf16 peak of the GPU; none on a CPU).
        clock: the clock (seconds); tests pass a fake one.
    """

    def __init__(
        self,
        warmup_steps: int = 2,
        window: int = 20,
        count_flops: bool = True,
        peak_flops: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if int(warmup_steps) < 1:
            raise ValueError(f"callbacks.pretrain.throughput.warmup_steps must be >= 1, got {warmup_steps}.")
        if int(window) < 2:
            raise ValueError(f"callbacks.pretrain.throughput.window must be >= 2, got {window}.")
        self.warmup_steps, self.window, self.count_flops = int(warmup_steps), int(window), bool(count_flops)
        self.peak = float(peak_flops) if peak_flops is not None else None
        self.clock = clock
        self.device_name: str | None = None
        self.flops_per_step: int | None = None
        self._counter = None
        self._cuda = False
        self._batches = 0  # training batches seen
        self._last: float | None = None  # clock at the end of the previous timed batch
        self._val_start: float | None = None
        self._recent: deque = deque(maxlen=self.window)  # (duration, units) of the last steps
        self._total_time = 0.0
        self._totals: dict[str, int] = {}
        self._steps = 0
        self._max_memory = 0

    # -- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        device = trainer.strategy.root_device
        self._cuda = device.type == "cuda"
        if self._cuda:
            self.device_name = torch.cuda.get_device_name(device)
            if self.peak is None:
                self.peak = peak_flops(self.device_name)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.device_name = device.type

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.count_flops and self.flops_per_step is None and self._counter is None:
            self._counter = step_flop_counter()
            self._counter.__enter__()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stop_counting()  # forward and backward are done: the optimizer's element-wise work is not counted

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_counting()
        self._batches += 1
        now = self._now()
        if self._batches <= self.warmup_steps or self._last is None:
            self._last = now
            return
        # every PretrainingModule declares throughput_units (pretrain/base.py); another module may not
        units_of = getattr(pl_module, "throughput_units", None)
        units = units_of(batch) if units_of is not None else default_units(batch)
        duration = now - self._last
        self._last = now
        self._recent.append((duration, units))
        self._total_time += duration
        self._steps += 1
        for k, v in units.items():
            self._totals[k] = self._totals.get(k, 0) + int(v)
        metrics = self._rates(
            sum(d for d, _ in self._recent), len(self._recent), self._sum_units(u for _, u in self._recent)
        )
        if self._cuda:
            self._max_memory = max(self._max_memory, torch.cuda.max_memory_allocated())
            metrics["max_memory_gib"] = self._max_memory / 2**30
        pl_module.log_dict(
            {f"perf/{k}": float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False, batch_size=1
        )

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = self._now()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._last is not None and self._val_start is not None:
            self._last += self._now() - self._val_start  # validation is not training time
        self._val_start = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_counting()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop_counting()

    # -- rates ------------------------------------------------------------------------------------------
    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()  # the clock must see the kernels launched so far finished
        return self.clock()

    def _stop_counting(self) -> None:
        if self._counter is not None:
            counter, self._counter = self._counter, None
            counter.__exit__(None, None, None)
            self.flops_per_step = int(counter.get_total_flops())

    @staticmethod
    def _sum_units(rows) -> dict[str, int]:
        total: dict[str, int] = {}
        for units in rows:
            for k, v in units.items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def _rates(self, seconds: float, steps: int, units: dict[str, int]) -> dict[str, float]:
        if seconds <= 0:
            return {}
        out = {"steps_per_s": steps / seconds}
        out.update({f"{k}_per_s": v / seconds for k, v in units.items()})
        if self.flops_per_step:
            achieved = self.flops_per_step * steps / seconds
            out["tflops_per_s"] = achieved / 1e12
            if self.peak:
                out["mfu"] = achieved / self.peak
        return out

    def summary(self) -> dict[str, Any]:
        """The whole run's rates over the timed steps (results.json's ``cost``)."""
        out: dict[str, Any] = {"throughput_device": self.device_name, "timed_steps": self._steps}
        out.update(self._rates(self._total_time, self._steps, self._totals))
        if self.flops_per_step is not None:
            out["flops_per_step"] = self.flops_per_step
        if self.peak:
            out["peak_flops"] = self.peak
        if self._cuda:
            out["max_memory_gib"] = self._max_memory / 2**30
        return out
