"""A distributed sampler that can start mid-epoch, so a resumed run sees the batches the
interrupted one would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Each epoch is a permutation seeded by (seed, epoch), cut into `world_size` interleaved shards
    of whole batches; iteration starts at batch `start_batch` of the epoch."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{size} training images make no full batch of {batch_size} x {world_size} processes")
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
