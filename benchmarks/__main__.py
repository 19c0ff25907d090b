"""Every benchmark, one after another: ``python -m benchmarks [--quick]``.

Each script measures its ratios within one run, so the numbers compare methods under the same machine
load: step time by interleaved rounds and medians, peak memory (the rise of peak RSS during the steps)
once per method, each in a fresh process (``benchmarks/_memory.py``). ``--quick`` runs 2 interleaved
rounds per script instead of 5-7 (bench_data: fewer sentences and images). ``benchmarks/gpu.sh`` (one GPU) is
not part of it.
"""

from __future__ import annotations

import subprocess
import sys
import time

#: what --quick passes to each script (default: --rounds 2)
QUICK = {"benchmarks.bench_data": ["--sentences", "4000", "--images", "128"]}
SCRIPTS = [
    "benchmarks.bench_balancers",
    "benchmarks.bench_pos_bert",
    "benchmarks.bench_mm_mae",
    "benchmarks.bench_data",
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name in SCRIPTS:
        extra = QUICK.get(name, ["--rounds", "2"]) if quick else []
        print(f"\n=== python -m {name} {' '.join(extra)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        args = [sys.executable, "-m", name, *extra]
        code = subprocess.call(args)
        print(f"=== {name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
