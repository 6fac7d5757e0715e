"""BLPSeg's losses on scribble targets.

Targets are (B, H, W) int64: a class id 0..K-1 where scribbled, K where not scribbled, and
`ignore_index` (255) for padding.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMALIZATIONS = ("weights", "pixels")


class ScribbleLoss(nn.Module):
    """Cross entropy of the scribble head over K+1 classes, the "not scribbled" class K weighted by
    `unlabeled_weight` (paper Eq. 1-2); the weighted mean, as torch's cross entropy takes it."""

    def __init__(self, num_classes: int, unlabeled_weight: float = 0.02, ignore_index: int = 255):
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[num_classes] = unlabeled_weight
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, scrib_logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.ignore_index).any():  # torch's weighted mean would be 0/0
            return scrib_logits.sum() * 0
        return F.cross_entropy(scrib_logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


def _labeled_nll(seg_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-log p_seg(target), log p_seg (B, K, H, W), and the mask of pixels with a class target (< K)."""
    K = seg_logits.shape[1]
    logp = F.log_softmax(seg_logits.float(), dim=1)
    labeled = (target >= 0) & (target < K)
    idx = torch.where(labeled, target, torch.zeros_like(target))
    nll = -logp.gather(1, idx[:, None])[:, 0]
    return torch.where(labeled, nll, torch.zeros_like(nll)), logp, labeled


class BLPLoss(nn.Module):
    """The balanced label-preference loss (paper Eq. 9-11):

        w = (1 - p_scrib(y) * p_seg(y))^gamma   (detached),   loss = w * -log p_seg(y)

    over pixels whose target y is a class (< K). p_scrib is the scribble head's softmax over K+1
    classes. normalize="weights": sum(w * -log p) / sum(w) per image, averaged over the images
    (the authors' release; an image without a labeled pixel adds 0); "pixels": divided by the
    number of labeled pixels in the batch (the paper's 1/N_seg).
    """

    def __init__(self, gamma: float = 2.0, ignore_index: int = 255, normalize: str = "weights"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.normalize = normalize

    def forward(self, seg_logits: Tensor, scrib_logits: Tensor, target: Tensor) -> Tensor:
        nll, logp, labeled = _labeled_nll(seg_logits, target)
        w = blp_weights(logp, scrib_logits, target, self.gamma)
        return _normalize(w * nll, w, labeled, self.normalize)


@torch.no_grad()
def blp_weights(seg_logp: Tensor, scrib_logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """(1 - p_scrib(y) * p_seg(y))^gamma per pixel from log p_seg (B, K, H, W), the scribble logits
    (B, K+1, H, W) and y = target (B, H, W); pixels whose target is not a class (>= K) get 0."""
    K = seg_logp.shape[1]
    labeled = (target >= 0) & (target < K)
    idx = torch.where(labeled, target, torch.zeros_like(target))[:, None]
    p_scrib = F.softmax(scrib_logits.float(), dim=1)[:, :K].gather(1, idx)[:, 0]
    p_seg = seg_logp.float().gather(1, idx)[:, 0].exp()
    return (1 - p_scrib * p_seg).clamp_min(0) ** gamma * labeled


class PartialCrossEntropy(nn.Module):
    """Cross entropy on the scribbled pixels only (the baseline of Table II)."""

    def forward(self, seg_logits: Tensor, scrib_logits: Tensor, target: Tensor) -> Tensor:
        nll, _, labeled = _labeled_nll(seg_logits, target)
        return _normalize(nll, labeled.float(), labeled, "pixels")


class FocalLoss(nn.Module):
    """Focal loss (1 - p_seg(y))^gamma * -log p_seg(y) on the scribbled pixels, mean over them
    (Table II): the BLP weight without the scribble head."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, seg_logits: Tensor, scrib_logits: Tensor, target: Tensor) -> Tensor:
        nll, _, labeled = _labeled_nll(seg_logits, target)
        w = (1 - (-nll).exp()) ** self.gamma * labeled
        return _normalize(w * nll, labeled.float(), labeled, "pixels")


def _normalize(loss: Tensor, w: Tensor, labeled: Tensor, normalize: str) -> Tensor:
    if normalize == "pixels":
        return loss.sum() / labeled.sum().clamp_min(1)
    per_image = loss.flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(torch.finfo(w.dtype).tiny)
    return per_image.mean()


SEG_LOSSES = {"blp": BLPLoss, "ce": PartialCrossEntropy, "focal": FocalLoss}


def build_seg_loss(name: str, **options) -> nn.Module:
    if name not in SEG_LOSSES:
        raise ValueError(f"loss.seg must be one of {tuple(SEG_LOSSES)}, got {name!r}")
    accepted = set(inspect.signature(SEG_LOSSES[name]).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        # e.g. loss.seg=ce on a config whose seg_options were written for blp
        raise ValueError(
            f"loss.seg_options {unknown} do not apply to loss.seg={name!r} (it takes {sorted(accepted)}); "
            f"override loss.seg_options too"
        )
    return SEG_LOSSES[name](**options)


@torch.no_grad()
def pseudo_labels(seg_logits: Tensor, target: Tensor, threshold: float = 0.9, present: Tensor | None = None) -> Tensor:
    """Self-training targets (the authors' release): each unscribbled pixel (target K) takes the
    argmax of p_seg over the classes present in its image's scribbles where that probability is
    >= threshold; scribbled and padding pixels keep their target. `present` (B, K) bool gives those
    classes (the data sets derive it from the whole scribble image); by default they are read
    from `target`, which after a crop may miss some."""
    B, K = seg_logits.shape[:2]
    p = F.softmax(seg_logits.float(), dim=1)
    if present is None:
        present = torch.zeros(B, K + 1, dtype=torch.bool, device=target.device)
        present.scatter_(1, torch.where(target < K, target, K).flatten(1), True)
        present = present[:, :K]
    p = p * present[:, :, None, None]
    conf, label = p.max(dim=1)
    take = (target == K) & (conf >= threshold)
    return torch.where(take, label, target)
