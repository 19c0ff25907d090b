"""The throughput callback (runner/throughput.py): rates from a known batch and a fake clock, FLOPs counted as
``FlopCounterMode`` counts them, the peak table, and the numbers reaching the loggers and results.json."""

import csv
import json

import lightning as L
import pytest
import torch
from helpers import run_pipeline
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from runner.throughput import PEAK_BF16_FLOPS, Throughput, default_units, peak_flops

BATCH, WIDTH, OUT, TOKENS = 8, 16, 4, 5  # samples per batch, input width, output width, tokens per sample


class Clock:
    """A fake clock the steps advance: every training step takes ``step_s``, every validation batch 10 s."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


class Tiny(L.LightningModule):
    def __init__(self, clock: Clock | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(WIDTH, OUT)
        self.clock = clock

    def training_step(self, batch, batch_idx):
        if self.clock is not None:
            self.clock.now += self.clock.step_s
        return self.layer(batch["x"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.clock.now += 10.0

    def throughput_units(self, batch):
        return {"samples": batch["x"].shape[0], "tokens": TOKENS * batch["x"].shape[0]}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def batches(n):
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(BATCH, WIDTH, generator=g)} for _ in range(n)]


def fit(callback: Throughput, steps: int = 6, val_every: int | None = None) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], log_every_n_steps=1, num_sanity_val_steps=0,
        val_check_interval=val_every, limit_val_batches=2 if val_every else 0,
    )  # fmt: skip
    data = DataLoader(batches(steps), batch_size=None)
    trainer.fit(Tiny(callback.clock), train_dataloaders=data, val_dataloaders=data if val_every else None)
    return trainer


def test_rates_come_from_the_batch_size_and_the_clock_and_leave_out_the_warm_up():
    cb = Throughput(warmup_steps=2, window=3, peak_flops=1e6, clock=Clock(0.25))  # every step takes 0.25 s
    trainer = fit(cb, steps=6)
    # FLOPs of one step, counted independently: the forward and backward of the linear layer on one batch
    ref = Tiny()
    with FlopCounterMode(display=False) as counter:
        ref.training_step(batches(1)[0], 0).backward()
    assert counter.get_total_flops() == 2 * (2 * BATCH * WIDTH * OUT)  # x @ W^T and the weight's gradient
    assert cb.flops_per_step == counter.get_total_flops()

    summary = cb.summary()
    assert summary["timed_steps"] == 4  # 6 steps, the first 2 left out
    assert summary["steps_per_s"] == pytest.approx(4.0)
    assert summary["samples_per_s"] == pytest.approx(4.0 * BATCH)
    assert summary["tokens_per_s"] == pytest.approx(4.0 * BATCH * TOKENS)
    assert summary["tflops_per_s"] == pytest.approx(4.0 * cb.flops_per_step / 1e12)
    assert summary["mfu"] == pytest.approx(4.0 * cb.flops_per_step / 1e6)
    logged = trainer.callback_metrics  # the last step's rolling rates, as the loggers got them
    assert float(logged["perf/samples_per_s"]) == pytest.approx(4.0 * BATCH)
    assert float(logged["perf/tokens_per_s"]) == pytest.approx(4.0 * BATCH * TOKENS)
    assert float(logged["perf/steps_per_s"]) == pytest.approx(4.0)
    assert float(logged["perf/mfu"]) == pytest.approx(summary["mfu"])


def test_validation_time_is_not_training_time():
    cb = Throughput(warmup_steps=1, window=4, clock=Clock(0.5))
    fit(cb, steps=6, val_every=2)  # validation (20 s of the fake clock) after steps 2 and 4
    assert cb.summary()["timed_steps"] == 5
    assert cb.summary()["steps_per_s"] == pytest.approx(2.0)


class LeafOutput(L.LightningModule):
    """A module returning its parameter (the convex experiment's model) and a step that takes per-task gradients
    with torch.autograd.grad, as the gradient balancers do."""

    def __init__(self):
        super().__init__()
        self.vector = Vector()

    def training_step(self, batch, batch_idx):
        theta = self.vector()
        losses = torch.stack([(batch["x"] @ theta.view(WIDTH, 1)).pow(2).mean(), theta.pow(2).sum()])
        grads = [torch.autograd.grad(loss, [theta], retain_graph=True)[0] for loss in losses]
        return losses.sum() + 0 * sum(g.sum() for g in grads)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Vector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.ones(WIDTH))

    def forward(self):
        return self.theta


def test_counting_flops_leaves_per_task_gradients_of_a_leaf_output_working():
    """FlopCounterMode's per-module breakdown would break torch.autograd.grad here; the total-only counter does not."""
    cb = Throughput(warmup_steps=1, clock=Clock(0.5))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])  # fmt: skip
    trainer.fit(LeafOutput(), train_dataloaders=DataLoader(batches(2), batch_size=None))
    # x @ theta (2 B W), then its gradient for theta three times: each task's autograd.grad goes back through the
    # stacked losses into both branches (the other task's with zeros), and the step's backward
    assert cb.flops_per_step == 4 * (2 * BATCH * WIDTH)


def test_without_a_peak_there_is_no_mfu_and_without_counting_no_flops():
    cb = Throughput(warmup_steps=1, count_flops=False, clock=Clock(0.5))
    fit(cb, steps=3)
    s = cb.summary()
    assert s["steps_per_s"] == pytest.approx(2.0) and s["samples_per_s"] == pytest.approx(2.0 * BATCH)
    assert "mfu" not in s and "tflops_per_s" not in s and "flops_per_step" not in s
    assert s["throughput_device"] == "cpu"


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_table_is_looked_up_by_device_name(name, peak):
    assert peak_flops(name) == peak


def test_every_peak_is_a_dense_bf16_figure_between_100_tflops_and_3_pflops():
    assert all(100e12 <= v <= 3e15 for v in PEAK_BF16_FLOPS.values())


def test_a_module_without_throughput_units_counts_the_batch_s_leading_size():
    assert default_units({"x": torch.zeros(7, 3), "y": torch.zeros(7)}) == {"samples": 7}
    assert default_units([torch.zeros(5, 2)]) == {"samples": 5}


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="warmup_steps"):
        Throughput(warmup_steps=0)
    with pytest.raises(ValueError, match="window"):
        Throughput(window=1)


@pytest.mark.slow
@pytest.mark.parametrize("experiment, unit", [("pos_bert", "tokens"), ("mm_mae", "images")])
def test_a_run_logs_its_throughput_and_keeps_it_in_results_json(tmp_path, experiment, unit):
    overrides = [f"experiment={experiment}", "debug=smoke", "stage=pretrain", "logger=csv", "threads=1",
                 "trainer.max_steps=6", "callbacks.pretrain.throughput.peak_flops=1e9"]  # fmt: skip
    run_pipeline(overrides, tmp_path)
    cost = json.loads((tmp_path / "results.json").read_text())["cost"]
    assert cost["timed_steps"] == 4 and cost["flops_per_step"] > 0
    assert cost[f"{unit}_per_s"] > 0 and cost["samples_per_s"] > 0
    assert cost["mfu"] == pytest.approx(cost["flops_per_step"] * cost["steps_per_s"] / 1e9)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get(f"perf/{unit}_per_s") for r in rows)  # every logged step
    assert any(r.get("cost/samples_per_s") for r in rows)  # and the whole run's rate at the end
