"""Shared test fixtures (helpers that are not fixtures: helpers.py).

``shared_data`` locates the small real-data samples in ``../shared/data`` (relative to the repo
root); tests that need it skip with a reason when it is absent.
"""

import os
from pathlib import Path

import pytest
from helpers import SHARED_DATA

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
