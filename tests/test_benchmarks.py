"""The peak-memory measurement used by the benchmarks (``benchmarks/_memory.py``)."""

import sys

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
