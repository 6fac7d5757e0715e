"""Class probabilities for one image: single or multi-scale with flip, optionally refined by a
dense CRF (pydensecrf2, an optional extra)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CRFConfig
from ..data.transforms import EvalTransform


@torch.no_grad()
def predict_probs(model: nn.Module, image: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """image (B, 3, H, W) normalised -> (B, K, H, W) softmax probabilities averaged over the scales
    and, with `flip`, their horizontal mirrors (the paper tests at 0.5, 0.75, 1, 1.25 with flip)."""
    H, W = image.shape[-2:]
    check_scales(scales, H, W)
    total = 0
    for s in scales:
        x = image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            xi = x.flip(-1) if mirrored else x
            logits = model(xi, scribble_head=False)["seg"].float()
            p = F.softmax(logits, dim=1)
            p = p.flip(-1) if mirrored else p
            total = total + F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)
    return total / (len(scales) * (2 if flip else 1))


def predict_image(model: nn.Module, image: np.ndarray, cfg: dict, device: torch.device) -> Tensor:
    """(K, H, W) float32 probabilities, on the CPU, of an (H, W, 3) uint8 image, made as evaluation
    makes them (`cfg`: a resolved config): at data.resize's size when set, with eval.scales and
    eval.flip, then scaled back to the image's size."""
    x = EvalTransform(cfg["data"]["resize"]).image(image)[None].to(device)
    probs = predict_probs(model, x, cfg["eval"]["scales"], cfg["eval"]["flip"])[0].cpu()
    return to_size(probs, image.shape[:2])


def to_size(probs: Tensor, size: Sequence[int]) -> Tensor:
    """(K, h, w) probabilities at `size` (H, W), bilinearly: the prediction of an image resized for
    the network (data.resize) back at the image's own size, as mmsegmentation scales its test
    predictions back to the original image."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


MIN_SIDE = 32  # the backbone's coarsest stride: below it the deepest features hold one cell


def check_scales(scales: Sequence[float], H: int, W: int) -> None:
    """A test scale below 1 may not shrink an H x W image below MIN_SIDE px (an image smaller than
    that already is read at scales >= 1 only): its prediction would be the upsampled guess of a
    network that sees next to nothing."""
    for s in scales:
        h, w = int(H * s), int(W * s)  # F.interpolate's size for scale_factor
        if s < 1 and min(h, w) < MIN_SIDE:
            raise ValueError(
                f"eval.scales: {s} makes the {H}x{W} image {h}x{w} px, below the {MIN_SIDE} px of the network's "
                f"coarsest stride; use scales >= {min(1.0, MIN_SIDE / min(H, W)):.2f} for these images"
            )


CRF_DEFAULTS = dataclasses.asdict(CRFConfig())


def dense_crf(image: np.ndarray, probs: np.ndarray, **params) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl and Koltun) on (H, W, 3) uint8 and (K, H, W) probabilities."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ImportError(
            "eval.crf needs pydensecrf2 (the crf extra): pip install pydensecrf2, in the venv that runs blpseg"
        ) from e
    p = {**CRF_DEFAULTS, **params}
    K, H, W = probs.shape
    d = dcrf.DenseCRF2D(W, H, K)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=p["gaussian_sxy"], compat=p["gaussian_compat"])
    d.addPairwiseBilateral(
        sxy=p["bilateral_sxy"],
        srgb=p["bilateral_srgb"],
        rgbim=np.ascontiguousarray(image),
        compat=p["bilateral_compat"],
    )
    return np.asarray(d.inference(p["iterations"]), dtype=np.float32).reshape(K, H, W)
