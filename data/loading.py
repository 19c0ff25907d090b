"""Resumable data loading shared by every data module.

``resumable_loader`` returns torchdata's ``StatefulDataLoader`` (Lightning checkpoints its position, so a
run killed mid-epoch resumes on the very next batch) with an epoch-seeded shuffle: the order of epoch
``e`` is a pure function of ``(seed, e)`` (:class:`EpochSubsetSampler`, whose ``set_epoch`` Lightning
calls and whose epoch rides in the loader's checkpoint), so it does not depend on how many random numbers
were drawn before a resume. Under DDP, Lightning wraps it in its per-rank distributed sampler.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler
from torchdata.stateful_dataloader import StatefulDataLoader


def resumable_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False, **kwargs
) -> StatefulDataLoader:
    sampler = kwargs.pop("sampler", None)
    if sampler is None:
        sampler = (
            EpochSubsetSampler(len(dataset), len(dataset), seed) if shuffle else SequentialSampler(dataset)
        )
    # a private generator: creating an iterator (every epoch, and on resume) never draws from the global
    # torch RNG, whose state the checkpoint restores
    kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)


def epoch_subset_loader(
    dataset: Dataset, samples_per_epoch: int, batch_size: int, seed: int, num_workers: int = 0
) -> StatefulDataLoader:
    """The pre-training loader of the image data modules: ``samples_per_epoch`` distinct items per epoch, a
    fresh draw every epoch (:class:`EpochSubsetSampler`), resumable mid-epoch, persistent workers."""
    return resumable_loader(
        dataset,
        batch_size=batch_size,
        seed=seed,
        sampler=EpochSubsetSampler(len(dataset), samples_per_epoch, seed=seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=samples_per_epoch >= batch_size,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In-order batches of ``dataset`` (validation), with persistent workers when there are any."""
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0
    )


class EpochSubsetSampler(Sampler[int]):
    """``num_samples`` distinct indices of ``range(size)`` per epoch, a fresh draw every epoch, a pure
    function of ``(seed, epoch)`` (Lightning calls :meth:`set_epoch`). Its state (epoch and position)
    rides in the loader's checkpoint, so a run resumed mid-epoch continues that epoch's order."""

    def __init__(self, size: int, num_samples: int, seed: int = 0) -> None:
        self.size, self.num_samples, self.seed, self.epoch = int(size), int(num_samples), int(seed), 0
        self._yielded = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = int(state["epoch"]), int(state["yielded"])

    def __len__(self) -> int:
        return self.num_samples

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.num_samples * 4 <= self.size:  # sparse draw: no permutation of a huge range
            picked: dict[int, None] = {}
            while len(picked) < self.num_samples:
                for i in torch.randint(self.size, (self.num_samples,), generator=g).tolist():
                    picked.setdefault(i)
                    if len(picked) == self.num_samples:
                        break
            return list(picked)
        return torch.randperm(self.size, generator=g)[: self.num_samples].tolist()

    def __iter__(self):
        start, self._skip = self._skip, 0
        self._yielded = start
        for i in self._order()[start:]:
            self._yielded += 1
            yield i
