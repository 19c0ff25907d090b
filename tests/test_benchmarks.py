"""The peak-memory measurement used by the benchmarks (``benchmarks/_memory.py``)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import _memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def _allocating(mib: int):
    def make():
        def step():
            x = torch.ones(mib * 2**18)  # float32: mib MiB, every page written
            return float(x[-1])

        return step

    return make


@linux
def test_measure_here_sees_a_step_s_torch_allocation():
    r = _memory.measure_here(_allocating(64), 2)
    assert r["exact"]
    assert 62 <= _memory.mib(r) <= 72


@linux
def test_memory_freed_while_building_does_not_hide_the_step():
    def make():
        junk = [torch.ones(2**14) for _ in range(1024)]  # 64 MiB of 64 KiB blocks, on the malloc heap
        keep = torch.ones(16)  # allocated after them: the heap cannot shrink from its top
        del junk

        def step():  # 32 MiB of 64 KiB blocks: would fit in the freed heap without malloc_trim
            xs = [torch.ones(2**14) for _ in range(512)]
            return float(xs[-1][-1] + keep[0])

        return step

    r = _memory.measure_here(make, 1)
    assert 30 <= _memory.mib(r) <= 40


@pytest.mark.slow
@linux
def test_a_benchmark_reports_through_its_child_process():
    argv = ["--tasks", "2", "--width", "32", "--batch", "4", "--steps", "1"]
    r = _memory.measure_in_subprocess("benchmarks.bench_balancers", "none", argv)
    assert r["exact"] and r["rise_kib"] >= 0 and r["peak_kib"] >= r["before_kib"]


REPO = Path(__file__).resolve().parents[1]
GPU_SH = REPO / "benchmarks" / "gpu.sh"


def _fake_nvidia_smi(tmp_path: Path, ok: bool) -> dict:
    """An environment whose PATH starts with a fake ``nvidia-smi`` (naming a GPU, or failing as without one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + ('echo "Fake GPU, 80 GiB, 0"\n' if ok else "exit 9\n"))
    tool.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "WANDB_MODE": "disabled",
    }


def test_gpu_script_is_valid_bash_and_refuses_a_machine_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(GPU_SH)], capture_output=True).returncode == 0
    r = subprocess.run(
        ["bash", str(GPU_SH)], env=_fake_nvidia_smi(tmp_path, ok=False), capture_output=True, text=True
    )
    assert r.returncode == 1 and "no NVIDIA GPU" in r.stderr


@pytest.mark.slow
def test_gpu_script_runs_its_benchmark_on_the_cpu_with_tiny_models(tmp_path):
    """gpu.sh's CPU parts: the GPU check, the time limit and `python -m benchmarks.bench_gpu`, whose options
    given after the script's own (here: CPU, tiny models) win."""
    args = ["--device", "cpu", "--size", "tiny", "--steps", "2", "--warmup", "1", "--pos-batch", "4", "--length",
            "16", "--vocab", "500", "--mae-batch", "4", "--threads", "1", "--balancers", "none,gradnorm"]  # fmt: skip
    env = {**_fake_nvidia_smi(tmp_path, ok=True), "LIMIT_S": "300", "PRESETS": ""}  # the presets: test_plan.py
    r = subprocess.run(["bash", str(GPU_SH), *args], env=env, capture_output=True, text=True, timeout=320)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Fake GPU, 80 GiB" in r.stdout and "precision bf16-mixed" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(("pos_bert ", "mm_mae "))]
    assert [row[:2] for row in rows] == [["pos_bert", "none"], ["pos_bert", "gradnorm"], ["mm_mae", "none"],
                                         ["mm_mae", "gradnorm"]]  # fmt: skip
    for row in rows:
        steps_per_s, samples_per_s, unit_per_s, tflops = map(float, row[2:6])
        assert steps_per_s > 0 and samples_per_s == pytest.approx(4 * steps_per_s, rel=0.02)
        assert unit_per_s > 0 and tflops >= 0
        assert row[6] == "-" and row[7] == "-"  # no MFU or GPU memory on the CPU
        assert float(row[8]) > 0  # GFLOP per step, counted
    # gradnorm (mode=features) adds one backward of the MLM head only: at most a little more than none, never less
    flops = {tuple(row[:2]): float(row[8]) for row in rows}
    assert flops[("pos_bert", "none")] <= flops[("pos_bert", "gradnorm")] < 1.5 * flops[("pos_bert", "none")]
    assert re.search(r"gpu\.sh: \d+ s", r.stdout)


@pytest.mark.slow
def test_data_benchmark_prints_tagging_and_image_loader_rates(nltk_data, tmp_path):
    args = ["--nltk-data", str(nltk_data), "--sentences", "400", "--images", "16", "--workers", "0,1",
            "--batch-size", "4", "--image-size", "32"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_data", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for num_proc in (1, 2):
        assert re.search(rf"num_proc={num_proc}: +[\d.]+ s +\d+ sentences/s", out), out
    assert re.search(r"num_proc=2 / num_proc=1: [\d.]+x measured", out)
    assert "second (cached) run" in out
    for workers in (0, 1):
        assert re.search(rf"num_workers={workers}: 16 images in +[\d.]+ s +[\d.]+ images/s", out), out
