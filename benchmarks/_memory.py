"""Peak memory of a CPU training step: the rise of the peak resident set size, in a fresh process.

Why RSS: torch's CPU tensors are allocated outside Python's allocator, so ``tracemalloc`` does not see
them, and ``torch.profiler(profile_memory=True)`` only sees what goes through torch's own CPU allocator
(not oneDNN/BLAS scratch space, Python objects or allocator fragmentation) and gives a peak only after
replaying its allocation events. The kernel's peak RSS counts every page a step touches.

How (Linux): a benchmark re-runs itself as ``python -m <module> <its args> --memory-of <method>``. That
child builds only that method (model, optimizer, data) and first runs the steps on a throwaway copy, then
deletes it: one-time costs that are no training memory (library code paged in on first use, lazy
imports, kernel caches: ~15-20 MiB of RSS here) are paid before the baseline. It builds the method
again, ``gc.collect()`` + ``malloc_trim(0)`` (memory freed so far goes back to the kernel and cannot hide
a step's allocations), reads the current RSS (``VmRSS``), resets the peak to it (``echo 5 >
/proc/self/clear_refs``), runs the steps (warm-up and one timed round's worth; optimizer state is
created in the first) and reports ``VmHWM - VmRSS_before``: what training needs on top of the built
model, i.e. gradients, optimizer state, activations and temporaries at their peak. A fresh process per
method keeps one method's peak from hiding another's.

The children run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``; by default it
rises to the size of the largest block freed, up to 32 MiB): every block above it, i.e. every tensor
that matters, is mapped when allocated and unmapped when freed, so the RSS follows the live tensors, not
the heap's fragmentation. Without it the peak of the same method moved by up to +-10% between runs
(with address-space randomization and the hash seed); with it, by about 1 MiB.
Where the peak cannot be reset, ``ru_maxrss`` (which then may still hold the build's peak) is used and
the number is marked as an upper bound (``<=``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "PEAK_RSS_JSON "
MMAP_THRESHOLD = 128 * 1024  # bytes; glibc's default initial value, here kept fixed
#: one-line description for the printed headers
METHOD = (
    "peak MiB: rise of peak RSS (VmHWM) over RSS after build, in warm-up + 1 round of steps, "
    "one fresh process per method, blocks > 128 KiB mmapped (benchmarks/_memory.py)"
)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_here(make_step: Callable[[], Callable[[], object]], n_steps: int) -> dict:
    """Peak RSS rise over ``n_steps`` calls of ``make_step()``, after the same on a throwaway copy."""
    step = make_step()
    for _ in range(n_steps):
        step()
    del step
    step = make_step()
    _trim()
    before = _status_kib("VmRSS")
    reset = before is not None and _reset_peak()
    if before is None:  # no /proc: ru_maxrss so far is the best "before" there is
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(n_steps):
        step()
    peak = (_status_kib("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"before_kib": before, "peak_kib": peak, "rise_kib": peak - before, "exact": reset}


def report(result: dict) -> None:
    """The child's last line, read by :func:`measure_in_subprocess`."""
    print(MARK + json.dumps(result), flush=True)


def measure_in_subprocess(module: str, name: str, argv: Iterable[str]) -> dict:
    """Run ``python -m module *argv --memory-of name`` from the repo root; its measured result."""
    cmd = [sys.executable, "-m", module, *argv, "--memory-of", name]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"memory child for {name!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


def measure_all(module: str, names: Iterable[str], argv: Iterable[str] | None = None) -> dict[str, dict]:
    """One fresh child per name, one after another (so they do not compete for memory or cores)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return {name: measure_in_subprocess(module, name, argv) for name in names}


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def mib(result: dict) -> float:
    return result["rise_kib"] / 1024


def fmt_mib(result: dict) -> str:
    """``12.3`` or ``<=12.3`` where the peak could not be reset (an upper bound)."""
    return f"{'' if result['exact'] else '<='}{mib(result):.1f}"
