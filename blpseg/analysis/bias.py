"""Annotation bias (the paper's Fig. 1 and 7a): where, relative to the object boundary, the labeled
pixels lie. The relative distance of a pixel is its distance to the nearest boundary divided by the
largest one of its class in the image (metrics.relative_boundary_distance, per="class"): full masks
cover the whole 0..1 range, scribbles, drawn along the middle of objects, sit towards 1. With a
model, the same distribution weighted by max_c p_scrib (which should follow the scribbles) and by
max_c p_seg (Fig. 7a)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import formats
from ..data.transforms import EvalTransform
from ..engine.metrics import relative_boundary_distance

SERIES = ("masks", "scribbles", "p_scrib", "p_seg")


class BiasHistogram:
    """Weighted histograms of relative boundary distance in `bins` equal bands over [0, 1]."""

    def __init__(self, bins: int = 10, ignore_index: int = 255):
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an int >= 1, got {bins!r}")
        self.edges = np.linspace(0, 1, bins + 1)
        self.ignore_index = ignore_index
        self.mass = {name: np.zeros(bins) for name in SERIES}
        self.moment = {name: 0.0 for name in SERIES}  # weighted sum of distances, for the mean

    def update(
        self,
        mask: np.ndarray,
        scribbled: np.ndarray,
        p_scrib: np.ndarray | None = None,
        p_seg: np.ndarray | None = None,
    ) -> None:
        """mask: (H, W) full labels (ignore_index = void); scribbled: (H, W) bool, the pixels an
        annotator labeled; p_scrib, p_seg: (H, W) per-pixel weights, e.g. max over classes."""
        rel = relative_boundary_distance(mask, self.ignore_index, per="class")
        valid = ~np.isnan(rel)
        weights = {"masks": valid, "scribbles": valid & scribbled, "p_scrib": p_scrib, "p_seg": p_seg}
        band = np.clip(np.digitize(rel[valid], self.edges[1:-1]), 0, len(self.edges) - 2)
        for name, w in weights.items():
            if w is None:
                continue
            w = np.asarray(w, dtype=np.float64)[valid]
            self.mass[name] += np.bincount(band, weights=w, minlength=len(self.edges) - 1)
            self.moment[name] += float((w * rel[valid]).sum())

    def result(self) -> dict:
        """Per series with any mass: the fraction of its (weighted) pixels in each band and the mean
        relative distance."""
        out = {}
        for name, mass in self.mass.items():
            total = mass.sum()
            if total > 0:
                out[name] = {"fraction": (mass / total).tolist(), "mean": self.moment[name] / total}
        return out


@torch.no_grad()
def model_probs(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor]:
    """image (B, 3, H, W) -> p_seg (B, K, H, W) and p_scrib (B, K+1, H, W), the last channel
    "not scribbled"; float32, at scale 1."""
    out = model(image, scribble_head=True)
    return F.softmax(out["seg"].float(), dim=1), F.softmax(out["scrib"].float(), dim=1)


def paired_datasets(
    cfg: dict, num_classes: int, split: str | None = None, mask_dir: str | None = None, scribble_dir: str | None = None
):
    """(full masks, scribbles) of the same images of the config's data, as data sets in one order
    (DataFormat.pairs; split, mask_dir, scribble_dir: other than the config's, where the format
    names such things)."""
    data = cfg["data"]
    return formats.of(data).pairs(data, num_classes, EvalTransform(), split, mask_dir, scribble_dir)


def pairs(masks, scribbles, limit: int | None = None) -> Iterator[dict]:
    """The first `limit` (all: None) items of paired_datasets as dicts with name, image (3, H, W)
    normalised, mask (H, W) int64 and scribbled (H, W) bool."""
    for i in range(len(masks) if limit is None else min(limit, len(masks))):
        m, s = masks[i], scribbles[i]
        yield {
            "name": m["name"],
            "image": m["image"],
            "mask": m["target"].numpy(),
            "scribbled": (s["target"] < masks.num_classes).numpy(),
        }


def paired_items(
    cfg: dict,
    num_classes: int,
    split: str | None = None,
    mask_dir: str | None = None,
    scribble_dir: str | None = None,
    limit: int | None = None,
) -> Iterator[dict]:
    """pairs() of paired_datasets()."""
    return pairs(*paired_datasets(cfg, num_classes, split, mask_dir, scribble_dir), limit)


def annotation_bias(items, bins: int = 10, model: nn.Module | None = None, device="cpu") -> dict:
    """Fig. 1 (and 7a with a model) over `items` from paired_items: {"edges", series -> {fraction, mean}}."""
    hist = BiasHistogram(bins)
    for item in items:
        p_scrib = p_seg = None
        if model is not None:
            seg, scrib = model_probs(model, item["image"][None].to(device))
            p_seg, p_scrib = seg[0].amax(0).cpu().numpy(), scrib[0, :-1].amax(0).cpu().numpy()
        hist.update(item["mask"], item["scribbled"], p_scrib, p_seg)
    return {"edges": hist.edges.tolist(), **hist.result()}
