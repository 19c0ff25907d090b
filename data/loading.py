"""Resumable data loading shared by every data module.

``resumable_loader`` returns torchdata's ``StatefulDataLoader`` (Lightning checkpoints its position, so a
run killed mid-epoch resumes on the very next batch) with an epoch-seeded shuffle: the order of epoch
``e`` is ``randperm(n, seed + e)`` (torch's ``DistributedSampler`` with one replica, whose
``set_epoch`` Lightning calls), so it does not depend on how many random numbers were drawn before a
resume. Under DDP, Lightning swaps in its own per-rank ``DistributedSampler`` of the same kind.
"""

from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader


def resumable_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False, **kwargs
) -> StatefulDataLoader:
    sampler = DistributedSampler(
        dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=int(seed), drop_last=False
    )
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
