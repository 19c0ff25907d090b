"""Every test runs with one intra-op torch thread unless it asks for more with ``@pytest.mark.threads(n)``
(tests/conftest.py), in the main process and in the pytest-xdist workers."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT


def test_a_test_runs_with_one_torch_thread():
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"  # what the runs tests start in subprocesses inherit


@pytest.mark.threads(2)
def test_the_threads_marker_gives_a_test_more():
    assert torch.get_num_threads() == 2
    torch.set_num_threads(3)  # changed by the test: the next test gets 1 again


def test_a_thread_count_a_test_set_does_not_leak():
    """Runs after the test above (file order, in one process without xdist)."""
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_xdist_workers_run_tests_with_one_torch_thread():
    """The tests above on 2 xdist workers, started without OMP_NUM_THREADS (torch's default would then be
    one thread per core): each worker imports conftest.py and runs them with 1 thread, or 2 where marked."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    tests = [f"tests/test_threads.py::{name}" for name in ("test_a_test_runs_with_one_torch_thread",
             "test_the_threads_marker_gives_a_test_more")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2", *tests],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("PASSED") == 2 and "[gw" in proc.stdout  # run by the workers
