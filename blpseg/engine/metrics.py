"""Segmentation metrics: a confusion matrix (mIoU, per-class IoU, pixel accuracy) and precision
by relative distance to the object boundary (the paper's Fig. 7b)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..data.regions import connected_regions


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignore_index pixels skipped."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> dict:
    """Per-class IoU (NaN for a class absent from both ground truth and prediction), their mean over
    the present classes, and pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return {"iou": iou.tolist(), "miou": float(iou.nanmean()), "pixel_acc": float(tp.sum() / cm.sum().clamp_min(1))}


def relative_boundary_distance(target: np.ndarray, ignore_index: int = 255, per: str = "region") -> np.ndarray:
    """For every pixel, its distance to the nearest pixel outside its connected region (the image
    border counts as a boundary) divided by the largest such distance within its connected region
    (per="region") or within all pixels of its class in the image (per="class", the paper's Fig. 1):
    0 at the boundary, 1 at the deepest point. NaN on ignore pixels."""
    if per not in ("region", "class"):
        raise ValueError(f"per must be 'region' or 'class', got {per!r}")
    dist = np.full(target.shape, np.nan)
    for _, box, region in connected_regions(target, ignore_index):
        # Pad with background so the image border counts as a boundary.
        d = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        dist[box][region] = d[region] / (d.max() if per == "region" else 1.0)
    if per == "class":
        for c in np.unique(target[target != ignore_index]):
            on = target == c
            dist[on] /= dist[on].max()
    return dist


class BoundaryPrecision:
    """Fraction of correctly labelled pixels in `bins` bands of relative boundary distance."""

    def __init__(self, bins: int = 10, ignore_index: int = 255):
        self.edges = np.linspace(0, 1, bins + 1)
        self.correct = np.zeros(bins, dtype=np.int64)
        self.total = np.zeros(bins, dtype=np.int64)
        self.ignore_index = ignore_index

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        rel = relative_boundary_distance(target, self.ignore_index)
        valid = ~np.isnan(rel)
        band = np.clip(np.digitize(rel[valid], self.edges[1:-1]), 0, len(self.total) - 1)
        self.total += np.bincount(band, minlength=len(self.total))
        self.correct += np.bincount(band, weights=(pred[valid] == target[valid]), minlength=len(self.total)).astype(
            np.int64
        )

    def result(self) -> list[float]:
        return (self.correct / np.maximum(self.total, 1)).tolist()
