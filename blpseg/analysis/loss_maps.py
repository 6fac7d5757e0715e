"""The loss-map panel (the paper's Fig. 8): for an image, p_scrib and p_seg of its ground-truth
class and the BLP weight (1 - p_scrib * p_seg)^gamma they give. In training the weight only
applies on scribbled pixels; the panel shows it on every pixel of the full mask, so one sees how it
would rank the pixels an annotator could have scribbled (low near the object centre, where both
heads are confident; high near boundaries)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..losses import blp_weights
from .bias import model_probs


def loss_maps(model: nn.Module, item: dict, gamma: float = 2.0, device="cpu") -> dict:
    """item from bias.paired_items -> (H, W) float arrays p_scrib, p_seg (of the mask's class; NaN on
    void pixels) and weight (the BLP weight; NaN on void)."""
    p_seg, p_scrib = model_probs(model, item["image"][None].to(device))
    K = p_seg.shape[1]
    y = torch.from_numpy(item["mask"])[None].to(p_seg.device)
    valid = (y < K)[0].cpu().numpy()
    idx = torch.where(y < K, y, torch.zeros_like(y))[:, None]
    tiny = torch.finfo(torch.float32).tiny
    w = blp_weights(p_seg.clamp_min(tiny).log(), p_scrib.clamp_min(tiny).log(), y, gamma)
    maps = {
        "p_scrib": p_scrib[:, :K].gather(1, idx)[0, 0],
        "p_seg": p_seg.gather(1, idx)[0, 0],
        "weight": w[0],
    }
    return {k: np.where(valid, v.cpu().numpy(), np.nan) for k, v in maps.items()}
