"""The reference backend: the contract written in plain PyTorch, gradients by autograd.

It builds the dense HW x HW logits of each image and masks them to the window, which makes it
obviously correct for every radius (None included) and the oracle of the tests; it is also the
fallback where no compiled kernel runs. Memory grows as (HW)^2: use it for small inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .autograd import lse_dtype
from .base import Backend


def pair_dist2(H: int, W: int, device: torch.device) -> Tensor:
    """|s_i - s_j|^2 for all pixel pairs, (HW, HW) int64."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2


def window_mask(H: int, W: int, radius: Optional[int], device: torch.device) -> Tensor:
    """(HW, HW) bool: pixel i is in the (clipped, square) window of pixel j."""
    if radius is None:
        return torch.ones(H * W, H * W, dtype=torch.bool, device=device)
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def reference_forward(x: Tensor, f: Tensor, sigma: Tensor, radius: Optional[int], key_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    # Half inputs are computed in float32: this is the oracle the GPU kernels are compared with.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(dtype).flatten(2)  # (B, C, N)
    fs = f.to(dtype).flatten(2)  # (B, D, N)
    # logits[b, j, i]: query j (rows) against key i (columns)
    logits = fs.transpose(1, 2) @ fs - pair_dist2(H, W, x.device).to(dtype) / (2 * sigma.to(dtype) ** 2)
    admissible = window_mask(H, W, radius, x.device).expand(B, -1, -1)
    if key_mask is not None:
        admissible = admissible & key_mask.flatten(1)[:, None, :]
    logits = logits.masked_fill(~admissible, float("-inf"))
    # A query with no admissible key gets a constant row (no NaN in softmax or its gradient) and
    # is zeroed afterwards: out = 0, zero gradients, lse = -inf.
    empty = ~admissible.any(-1, keepdim=True)
    logits = logits.masked_fill(empty, 0.0)
    attn = torch.softmax(logits, dim=-1).masked_fill(empty, 0.0)
    out = (xs @ attn.transpose(1, 2)).view(B, C, H, W).to(x.dtype)
    lse = torch.logsumexp(logits, dim=-1).masked_fill(empty[..., 0], float("-inf"))
    return out, lse.view(B, H, W).to(lse_dtype(x.dtype))


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable(self, device):
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None

    def forward(self, x, f, sigma, radius, key_mask):
        return reference_forward(x, f, sigma, radius, key_mask)
