"""A distributed sampler that can start mid-epoch, so a resumed run sees the batches the
interrupted one would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Each epoch is a permutation seeded by (seed, epoch), cut into `world_size` interleaved shards
    of whole batches; iteration starts at batch `start_batch` of the epoch. The images left over
    after the last full batch (size mod batch x world_size) sit that epoch out: other ones each
    epoch, since the permutation changes. A set smaller than one full batch is an error saying
    which batch size fits."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            per_step = f"{batch_size} x {world_size} processes" if world_size > 1 else str(batch_size)
            # (a batch of 1 fits no network with batch norm: train.py refuses it)
            fits = f"set train.batch_size={size // world_size} or less, or " if size // world_size > 1 else ""
            raise ValueError(
                f"train.batch_size: a step takes {per_step} images, but the training set has only {size}; "
                f"{fits}add training images"
            )
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        per_step = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            step = perm[b * per_step : (b + 1) * per_step]
            yield from step[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
