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


def resized(height: int, width: int, longest: int | None, scale: float = 1.0) -> tuple[int, int]:
    """The (H, W) that data.resize (`longest`: the longest side; None keeps the size) and then
    `scale` make of a height x width image: aspect ratio kept, at least 1 px."""
    r = scale * (longest / max(height, width) if longest else 1.0)
    return max(1, round(height * r)), max(1, round(width * r))


def resize_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) -> (3, *size), bilinear; antialiased, so that a photo shrunk several times over
    does not alias (no effect when enlarging)."""
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_label(y: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """(H, W) int64 -> `size`, keeping thin strokes: each output pixel takes the class id (a value
    below `num_classes`) that covers most of its footprint in `y`, when any does, and otherwise the
    nearest value (K, not scribbled, or 255, void). Nearest-neighbour sampling alone would keep one
    row in eight of a photo shrunk 8 times, and so erase most of a 3 px scribble."""
    out = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
    best = torch.zeros(size)
    for c in torch.unique(y[y < num_classes]).tolist():
        share = F.adaptive_avg_pool2d((y == c).float()[None, None], size)[0, 0]
        out[share > best] = c
        best = torch.maximum(best, share)
    return out


class EvalTransform:
    """The image normalised (and scaled so its longest side is `resize`, when given); the label as
    it is: evaluation compares with the mask at its own size (engine/evaluate.py scales the
    prediction back)."""

    def __init__(self, resize: int | None = None):
        self.resize = resize

    def image(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 -> the network's (3, h, w) input."""
        x = normalize(image)
        return resize_image(x, resized(*image.shape[:2], self.resize)) if self.resize else x

    def __call__(self, image: np.ndarray, label: np.ndarray, rng=None) -> tuple[Tensor, Tensor]:
        return self.image(image), torch.from_numpy(label.astype(np.int64))


class TrainTransform:
    """Resize (longest side `resize`, when given) and random scale in one step, pad (image with the
    mean, label with ignore_index), random crop, horizontal flip. Without `resize` the label is
    scaled nearest-neighbour; with it (photos shrunk several times over) by resize_label, which
    keeps thin scribbles: `num_classes` tells class ids from "not scribbled"."""

    def __init__(
        self, crop: int, scale=(0.75, 1.25), ignore_index: int = 255, resize: int | None = None, num_classes: int = 0
    ):
        if crop <= 0 or not (0 < scale[0] <= scale[1]):
            raise ValueError(f"need crop > 0 and 0 < scale[0] <= scale[1], got crop={crop}, scale={scale}")
        if resize and num_classes < 1:
            raise ValueError("resizing labels needs num_classes (what tells class ids from not scribbled)")
        self.crop = crop
        self.scale = tuple(scale)
        self.ignore_index = ignore_index
        self.resize, self.num_classes = resize, num_classes

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        x, y = normalize(image), torch.from_numpy(label.astype(np.int64))
        s = rng.uniform(*self.scale)
        size = resized(*y.shape, self.resize, s)
        if self.resize:
            x, y = resize_image(x, size), resize_label(y, size, self.num_classes)
        else:
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
