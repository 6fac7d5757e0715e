"""LAM fidelity: how far the windowed operator (radius r) is from the exact global one
(radius=None) on a trained model's own inputs, as a function of r and of the guidance features'
scale. The LAM's logit is f_i . f_j - |s_i - s_j|^2 / (2 sigma^2): multiplying f by s multiplies the
feature term by s^2, so a larger s lets far pixels with a larger dot product outweigh the distance
term (a window must reach further), and s -> 0 leaves the Gaussian alone (whose mass outside r is
the floor of the error)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lam_ops import local_aggregate


@torch.no_grad()
def lam_inputs(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The LAM's inputs in `model` for image (1, 3, H, W): the logits x, the guidance features f
    (float32, on the logits' grid) and sigma."""
    if model.lam is None:
        raise ValueError("the model has no LAM (model.lam=false)")
    captured = {}

    def hook(module, args):
        captured["x"], captured["image"] = args[0], args[1]

    handle = model.lam.register_forward_pre_hook(hook)
    try:
        model(image, scribble_head=False)
    finally:
        handle.remove()
    x = captured["x"].float()
    f = model.lam.guidance(captured["image"], x.shape[-2:]).float()
    return x, f, model.lam.sigma.detach().float()


@torch.no_grad()
def window_errors(
    x: Tensor, f: Tensor, sigma: Tensor, radii: Sequence[int | None], scales: Sequence[float], backend: str = "auto"
) -> list[dict]:
    """One row per (scale, radius): the relative L2 error ||out_r - out|| / ||out||, the largest
    absolute error, and the share of pixels whose argmax class differs from the global operator's."""
    rows = []
    for s in scales:
        exact = local_aggregate(x, f * s, sigma, None, None, backend)
        label = exact.argmax(1)
        for r in radii:
            out = local_aggregate(x, f * s, sigma, r, None, backend)
            diff = out - exact
            rows.append(
                {
                    "scale": s,
                    "radius": "global" if r is None else r,
                    "radius_over_sigma": float("nan") if r is None else r / float(sigma),
                    "rel_l2": float(diff.norm() / exact.norm()),
                    "max_abs": float(diff.abs().max()),
                    "label_flips": float((out.argmax(1) != label).float().mean()),
                }
            )
    return rows
