"""One training step, the one the training loop (engine/train.py) runs and
benchmarks/bench_train.py times: forward under autocast, the segmentation and scribble losses,
backward, the optimizer's and the schedule's step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import distributed
from .builders import Losses, Optimization


class NonFiniteLoss(FloatingPointError):
    """A step's loss is NaN or infinite; raised before its backward, so no parameter was updated."""


@dataclass
class TrainStep:
    net: nn.Module  # the model, wrapped for DDP when there is more than one process
    losses: Losses
    optimization: Optimization
    dtype: torch.dtype | None  # autocast dtype (builders.amp_dtype); None: float32
    dist: distributed.Dist

    def __call__(self, batch: dict, iteration: int) -> list[float]:
        """Trains on `batch` (a training loader's: image, target, classes) at `iteration` (which
        decides self-training); returns [segmentation loss, scribble loss], averaged over processes."""
        device = self.dist.device
        image = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        self.net.train()
        with torch.autocast(device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            out = self.net(image, target)
        loss_seg, loss_scrib = self.losses(out, target, batch.get("classes"), iteration)
        values = torch.stack([loss_seg.detach(), loss_scrib.detach()]).float()
        values = (distributed.all_reduce_sum(values, self.dist) / self.dist.world_size).tolist()
        if not all(map(math.isfinite, values)):
            raise NonFiniteLoss(f"the loss is not finite (seg {values[0]}, scribble {values[1]})")
        self.optimization.step(loss_seg + loss_scrib)
        return values
