"""What a training run is built from, each from its section of a resolved config: the model, AdamW
with its parameter groups and the poly schedule, the autocast dtype and its loss scaler, the
losses, and the batches of the training set epoch after epoch. The training loop
(engine/train.py) and benchmarks/bench_train.py build their step from these."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from ..losses import ScribbleLoss, build_seg_loss, pseudo_labels
from ..models import BLPSeg
from .sampler import ResumableSampler

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(value) -> torch.dtype | None:
    """train.amp: false, true (bfloat16: no loss scaling needed), or 'bfloat16' / 'float16'
    (float16, as the authors' release trained, for GPUs without bfloat16: with a GradScaler)."""
    if value is False or value is None:
        return None
    if value is True:
        return torch.bfloat16
    if value in AMP_DTYPES:
        return AMP_DTYPES[value]
    raise ValueError(f"train.amp: expected true, false, 'bfloat16' or 'float16', got {value!r}")


def model_from_config(
    model_cfg: dict, num_classes: int, device: torch.device | None = None, pretrained: bool = True
) -> BLPSeg:
    """The network of a config's model section, on `device` (None: where it was built, the CPU).
    The one place a config becomes a model (training, checkpoints, `blpseg info`, benchmarks).
    pretrained=False leaves model.pretrained out: random initial weights, nothing read or downloaded,
    for weights about to be replaced (a checkpoint's) or not needed (counting parameters)."""
    model = BLPSeg(num_classes, **{**model_cfg, "pretrained": model_cfg["pretrained"] if pretrained else None})
    return model if device is None else model.to(device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and log sigma (decay would pull sigma towards 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Optimization:
    """AdamW, its poly learning-rate decay over `total` iterations, and the loss scaler (enabled for
    float16 autocast only; a disabled one passes the loss and the step through)."""

    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint; one of a run without loss scaling has an empty (or no) scaler state."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def step(self, loss: Tensor) -> None:
        """Backward (of the scaled loss for float16), the optimizer's and the schedule's step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():
            # a float16 step skipped for overflow looks to torch like a scheduler stepped before the
            # optimizer; the poly schedule follows iterations either way
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()


def build_optimization(model: nn.Module, train_cfg: dict, total: int, device: torch.device) -> Optimization:
    optimizer = torch.optim.AdamW(param_groups(model, train_cfg["weight_decay"]), lr=train_cfg["lr"])
    power = train_cfg["poly_power"]
    scheduler = LambdaLR(optimizer, lambda it: (1 - min(it, total) / total) ** power)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(train_cfg["amp"]) == torch.float16)
    return Optimization(optimizer, scheduler, scaler)


@dataclass
class Losses:
    """The segmentation loss (BLP, CE or focal) against the scribbles, or from iteration
    `self_training_from` on against the pseudo labels, plus the scribble head's loss."""

    seg: nn.Module
    scrib: nn.Module
    self_training_from: int | None
    pseudo_threshold: float

    def __call__(self, out: dict, target: Tensor, classes: Tensor | None, iteration: int) -> tuple[Tensor, Tensor]:
        """(segmentation loss, scribble loss); `classes` (B, K) bool, the classes scribbled in each
        image, is read only while self-training."""
        seg_target = target
        if self.self_training_from is not None and iteration >= self.self_training_from:
            seg_target = pseudo_labels(out["seg"], target, self.pseudo_threshold, classes.to(target.device))
        return self.seg(out["seg"], out["scrib"], seg_target), self.scrib(out["scrib"], target)


def build_losses(loss_cfg: dict, num_classes: int, device: torch.device) -> Losses:
    seg = build_seg_loss(loss_cfg["seg"], **loss_cfg["seg_options"])
    scrib = ScribbleLoss(num_classes, loss_cfg["unlabeled_weight"]).to(device)
    return Losses(seg, scrib, loss_cfg["self_training_from"], loss_cfg["pseudo_threshold"])


def batches(
    train_set: Dataset, sampler: ResumableSampler, start: int, batch_size: int, workers: int, device: torch.device
) -> Iterator[dict]:
    """The training batches from iteration `start` on, a new DataLoader each epoch (the sampler and
    the transforms' randomness follow the epoch, so a resumed run draws what it would have)."""
    epoch, b = divmod(start, sampler.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, b)
        train_set.set_epoch(epoch)
        yield from DataLoader(
            train_set,
            batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        epoch, b = epoch + 1, 0
