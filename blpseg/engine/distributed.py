"""DDP set-up from torchrun's environment: gloo on the CPU, nccl on GPUs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Dist()  # one process on the CPU: the default of the functions that take a Dist


def set_threads(threads) -> None:
    """CPU threads per process; None keeps torch's default (one per core)."""
    if threads:
        torch.set_num_threads(int(threads))


def setup(device: str = "auto", threads=None) -> Dist:
    """Reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and joins the process group."""
    set_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP with SyncBatchNorm when there is more than one process. PyTorch's SyncBatchNorm runs on
    GPUs only, so on the CPU every process keeps its own batch statistics."""
    if d.world_size == 1:
        return model
    if d.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index])
    return nn.parallel.DistributedDataParallel(model)


def on_main(fn: Callable[[], None], d: Dist) -> None:
    """fn() on the main process only. Under DDP the others wait for it, and when it refuses (a
    ValueError or OSError) they raise a ValueError with its message: no process goes on alone, or
    waits forever in a collective, after the main one stopped."""
    error = None
    if d.is_main:
        try:
            fn()
        except (ValueError, OSError) as e:
            error = e
    if d.world_size > 1:
        message = [None if error is None else str(error)]
        dist.broadcast_object_list(message, src=0)
        if not d.is_main and message[0] is not None:
            raise ValueError(message[0])
    if error is not None:
        raise error


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(t)
    return t


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
