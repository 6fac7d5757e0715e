"""Training and evaluation transforms on (uint8 image, int label) pairs; the randomness comes from
the numpy Generator passed in, so a sample depends only on (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def denormalize(x: Tensor) -> Tensor:
    """(..., 3, H, W) normalised -> [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
    return (x * std + mean).clamp(0, 1)


class EvalTransform:
    def __call__(self, image: np.ndarray, label: np.ndarray, rng=None) -> tuple[Tensor, Tensor]:
        return normalize(image), torch.from_numpy(label.astype(np.int64))


class TrainTransform:
    """Random scale, pad (image with the mean, label with ignore_index), random crop, horizontal flip."""

    def __init__(self, crop: int, scale=(0.75, 1.25), ignore_index: int = 255):
        if crop <= 0 or not (0 < scale[0] <= scale[1]):
            raise ValueError(f"need crop > 0 and 0 < scale[0] <= scale[1], got crop={crop}, scale={scale}")
        self.crop = crop
        self.scale = tuple(scale)
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        x, y = normalize(image), torch.from_numpy(label.astype(np.int64))
        s = rng.uniform(*self.scale)
        H, W = y.shape
        size = (max(1, round(H * s)), max(1, round(W * s)))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        c = self.crop
        ph, pw = max(c - size[0], 0), max(c - size[1], 0)
        x = F.pad(x, (0, pw, 0, ph), value=0.0)  # 0 is the mean after normalisation
        y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        top = int(rng.integers(0, y.shape[0] - c + 1))
        left = int(rng.integers(0, y.shape[1] - c + 1))
        x, y = x[:, top : top + c, left : left + c], y[top : top + c, left : left + c]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()
