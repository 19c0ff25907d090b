"""Adaptation protocols shared by every downstream suite (GLUE-shaped, GLUE, scenes, NYUv2).

A suite adapts each downstream task from the same pre-trained weights:

* ``protocol``: ``finetune`` trains a copy of the encoder with the task head; ``linear_probe`` freezes the
  encoder, computes its features once per task (:func:`cache_features`) and trains the head alone on them
  (no encoder forward or backward in the head's training loop).
* ``train_samples``: ``None`` (every training example), an integer N, or a list of N. Each N uses the first
  N examples of one fixed permutation of the training set (:func:`nested_subset`), so the subsets are
  nested and identical across balancers, pre-training seeds and fine-tuning seeds.
* ``finetune_seeds``: each (task, N) is adapted once per seed (head initialisation, data order, dropout).

:func:`adapt` runs that grid for one task and returns what results.json records: ``metrics`` (mean over
seeds at the largest N), ``per_seed`` (the primary metric of each seed at the largest N), and, when
``train_samples`` is a list, ``curve`` / ``curve_per_seed`` (N -> mean primary / per-seed primary).

:class:`DownstreamSuite` is the contract between the pipeline and a suite: ``validate()`` before any
pre-training, ``run()`` after it.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch.utils.data import Dataset

from utils.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linear_probe")


class DownstreamSuite:
    """What the pipeline (``runner/pipeline.py``) asks of every ``downstream`` object.

    ``validate()`` runs at start-up, before any pre-training: it opens and parses every input of the chosen
    tasks (or resolves the hub dataset), so a missing file, a malformed row or an unreachable hub stops the
    run within seconds with one sentence naming the file and line, instead of after the pre-training budget.
    It must stay cheap for generated data (the default: nothing to read). ``run()`` adapts every task from
    the pre-trained module and returns per-task metrics; a suite's ``extra_results`` dict, if it has one,
    goes into results.json.
    """

    #: what the suite adds to results.json beside the per-task metrics (a suite sets its own dict)
    extra_results: Mapping[str, Any] = MappingProxyType({})

    def validate(self) -> None:
        """Check every input of the suite before pre-training; raise ``DataError`` / ``ConfigError``."""

    def run(self, pretrained, make_trainer: Callable, out_dir) -> dict[str, dict[str, Any]]:
        raise NotImplementedError


def check_protocol(protocol: str, key: str = "downstream.protocol") -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key} must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    return str(protocol)


def parse_train_samples(value: Any) -> tuple[list[int | None], bool]:
    """``downstream.train_samples`` -> (sorted sample sizes, whether a curve was asked for).

    ``None`` -> ``[None]`` (all examples); an integer N -> ``[N]``; a list -> its sorted distinct values."""
    if value is None:
        return [None], False
    is_list = not isinstance(value, str | int)
    values = list(value) if is_list else [value]
    try:
        sizes = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise ConfigError(
            f"downstream.train_samples must be null, an integer or a list of integers, got {value!r}."
        ) from None
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"downstream.train_samples must hold positive integers, got {value!r}.")
    return sizes, is_list


def clip_sizes(
    sizes: list[int | None], available: int | None, what: str = "training examples"
) -> list[int | None]:
    """Every configured N within the ``available`` training examples: a larger N becomes ``available``, with a
    warning naming both (results.json records the N used); the sorted distinct sizes. ``available=None`` (the
    data's size unknown until it is read) leaves them unchanged: :func:`nested_subset` then stops on an N the
    data cannot give."""
    if available is None:
        return sizes
    too_large = [n for n in sizes if n is not None and n > available]
    if too_large:
        log.warning(
            "downstream.train_samples asks for N=%s, but the task has only %d %s: using N=%d instead.",
            ", ".join(map(str, too_large)),
            available,
            what,
            available,
        )
    return sorted({None if n is None else min(n, available) for n in sizes}, key=lambda n: n or 0)


def parse_seeds(value: Any) -> list[int]:
    """``downstream.finetune_seeds``: a non-empty list of distinct integers (an integer is a list of one)."""
    values = [value] if isinstance(value, int) else list(value or [])
    try:
        seeds = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"downstream.finetune_seeds must be a list of integers, got {value!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"downstream.finetune_seeds must be a non-empty list of distinct integers, got {value!r}."
        )
    return seeds


def nested_subset(total: int, n: int | None, seed: int, what: str = "training examples") -> list[int]:
    """The first ``n`` indices of a fixed permutation of ``range(total)`` (all of them for ``n=None``): the
    subsets of different n are nested, and depend on ``seed`` only (the data seed, never the fine-tuning
    seed)."""
    if n is None:
        return list(range(total))
    if n > total:
        raise ConfigError(f"downstream.train_samples asks for N={n}, but the task has only {total} {what}.")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed) + 7919))
    return order[:n].tolist()


def protocol_record(protocol: str, sizes: list[int | None], curve: bool, seeds: list[int]) -> dict[str, Any]:
    """What results.json records of the protocol (``protocol``)."""
    return {
        "protocol": protocol,
        "train_samples": sizes if curve else sizes[0],
        "finetune_seeds": list(seeds),
    }


def task_seed(finetune_seed: int, task_index: int) -> int:
    """The torch seed of one (fine-tuning seed, task): distinct tasks never share a head initialisation."""
    return 1000 * int(finetune_seed) + int(task_index)


def adapt(
    fit_and_score: Callable[[int | None, int], Mapping[str, float]],
    sizes: list[int | None],
    seeds: list[int],
    primary: str,
    curve: bool,
) -> dict[str, Any]:
    """Adapt one task for every (N, seed) and aggregate: ``fit_and_score(n, seed)`` returns the dev metrics."""
    per: dict[int | None, list[dict[str, float]]] = {}
    for n in sizes:
        per[n] = [dict(fit_and_score(n, s)) for s in seeds]
    last = per[sizes[-1]]
    names = [k for k in last[0] if all(k in m for m in last)]
    out: dict[str, Any] = {
        "metrics": {k: statistics.fmean(float(m[k]) for m in last) for k in names},
        "per_seed": [float(m[primary]) for m in last],
        "finetune_seeds": list(seeds),
    }
    if "dev_rows" in last[0]:
        out["dev_rows"] = int(last[0]["dev_rows"])
        out["metrics"].pop("dev_rows", None)
    if sizes[-1] is not None:
        out["train_samples"] = sizes[-1]
    if curve:
        out["curve"] = {str(n): statistics.fmean(float(m[primary]) for m in per[n]) for n in sizes}
        out["curve_per_seed"] = {str(n): [float(m[primary]) for m in per[n]] for n in sizes}
    return out


# ------------------------------------------------------------------------------------------ linear probe
@torch.no_grad()
def cache_features(
    loader: Iterable[Mapping[str, Any]],
    featurize: Callable[[Mapping[str, Any]], torch.Tensor],
    keep: Sequence[str],
) -> list[dict[str, Any]]:
    """Run the frozen encoder once over ``loader``: a list of batches ``{"features": ..., <keep keys>}``
    (on the CPU), the features of every example in loader order."""
    out = []
    for batch in loader:
        feats = featurize(batch).detach().float().cpu()
        out.append({"features": feats, **{k: batch[k] for k in keep if k in batch}})
    return out


class CachedItems(Dataset):
    """Examples of cached batches, one dict per example (tensors of equal shape within a key): the training
    set of a linear probe, shuffled and re-batched by an ordinary DataLoader."""

    def __init__(self, batches: list[dict[str, Any]], indices: Sequence[int] | None = None):
        keys = [k for k in batches[0] if all(torch.is_tensor(b.get(k)) for b in batches)]
        self.data = {k: torch.cat([b[k] for b in batches]) for k in keys}
        n = len(self.data["features"])
        self.indices = list(range(n)) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.indices[i]
        return {k: v[j] for k, v in self.data.items()}


class CachedBatches(Dataset):
    """Cached batches served as they are (``DataLoader(..., batch_size=None)``): the dev set of a linear
    probe, where targets may differ in size from batch to batch (full-resolution NYUv2 maps)."""

    def __init__(self, batches: list[dict[str, Any]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]
