"""The clock and thread settings every benchmark shares (``--clock``, ``--threads``).

On a CPU shared with other jobs, wall-clock step times swing by several x and torch's default of one
intra-op thread per core oversubscribes it. By default every benchmark therefore runs torch on one thread
and times each step by this process's CPU time (``--clock cpu``), which other processes do not inflate;
``--clock wall --threads 0`` gives wall-clock times with torch's default threads on a dedicated machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: this process's CPU time (default); wall"
    )


def configure(args: argparse.Namespace) -> Callable[[], float]:
    """Apply ``--threads`` and return the ``--clock`` function."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return CLOCKS[args.clock]


def describe(args: argparse.Namespace) -> str:
    return f"torch threads {torch.get_num_threads()}, {args.clock} clock"
