"""Shared test fixtures (helpers that are not fixtures: helpers.py; reference formulas: oracles.py).

``shared_data`` locates the small real-data samples in ``../shared/data`` (relative to the repo
root); tests that need it skip with a reason when it is absent.

Every test runs with one intra-op torch thread: the CPUs the suite runs on are shared, and oversubscribed
threads make it several times slower. This file sets it at import, so in the main process and in every
pytest-xdist worker (each imports it), sets ``OMP_NUM_THREADS=1`` for the runs tests start in subprocesses
(unless already set), and sets it again before each test (a test that changed it does not leak). A test
that needs more says so with ``@pytest.mark.threads(n)``.

The default ``trainer=auto`` would train on a GPU where one is visible: ``TRP_ACCELERATOR=cpu`` pins the tests
(and the runs they start in subprocesses) to the CPU, whatever the machine.
"""

import os
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
os.environ.setdefault("TRP_ACCELERATOR", "cpu")  # conf/trainer/auto.yaml
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """One intra-op torch thread for the test, or the n of its ``@pytest.mark.threads(n)``; 1 again after."""
    marker = request.node.get_closest_marker("threads")
    torch.set_num_threads(int(marker.args[0]) if marker else 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data samples not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nltk_data(shared_data: Path) -> Path:
    path = shared_data / "nltk_data"
    if not (path / "taggers" / "averaged_perceptron_tagger_eng").is_dir():
        pytest.skip(f"NLTK tagger data not found under {path}")
    os.environ["NLTK_DATA"] = str(path)
    import nltk

    if str(path) not in nltk.data.path:
        nltk.data.path.insert(0, str(path))
    return path
