"""The reference backend: the contract written in plain PyTorch, gradients by autograd.

It builds the dense HW x HW logits of each image and masks them to the window, which makes it
obviously correct for every radius (None included) and the oracle of the tests; it is also the
fallback where no compiled kernel runs. Memory grows as (HW)^2: use it for small inputs.

Non-finite inputs: its outputs (out, lse) follow the contract exactly; its gradients come from
dense autograd, where a non-finite f of one pixel can reach other pixels' gradients as 0 * NaN
(the `cpp` backward sums such pairs apart and does not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autograd import lse_dtype
from .base import Backend


def pair_dist2(H: int, W: int, device: torch.device) -> Tensor:
    """|s_i - s_j|^2 for all pixel pairs, (HW, HW) int64."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2


def window_mask(H: int, W: int, radius: int | None, device: torch.device) -> Tensor:
    """(HW, HW) bool: pixel i is in the (clipped, square) window of pixel j."""
    if radius is None:
        return torch.ones(H * W, H * W, dtype=torch.bool, device=device)
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


class _DistCoef(torch.autograd.Function):
    """-1 / (2 sigma^2), clamped to the lowest finite value as in csrc/include/lam/math.h: where
    sigma^2 underflows, the unclamped -inf would make the own pixel's term -inf * 0 = NaN; finite,
    that term is exactly 0 for every sigma. The gradient, 1 / sigma^3, is clamped alike: where it
    overflows, every pair with a distance has weight exactly 0, so it multiplies a 0 (the limit),
    never inf * 0 = NaN. Written with differentiable operations, so second derivatives work."""

    @staticmethod
    def forward(ctx, sigma):
        ctx.save_for_backward(sigma)
        return (-0.5 / (sigma * sigma)).clamp(min=-torch.finfo(sigma.dtype).max)

    @staticmethod
    def backward(ctx, grad):
        (sigma,) = ctx.saved_tensors
        return grad * (1 / (sigma * sigma * sigma)).clamp(max=torch.finfo(sigma.dtype).max)


class _FinitePart(torch.autograd.Function):
    """x with its non-finite entries replaced by 0, gradient passed through unchanged: the dense
    product A x adds 0 * x_i for every key i a query may not use, and 0 * inf is NaN, so the
    non-finite entries are summed apart (see _nonfinite_sum). The gradient of A x with respect to
    x, A^T g, does not depend on x, so passing it through is exact."""

    @staticmethod
    def forward(ctx, x):
        return torch.where(torch.isfinite(x), x, 0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _nonfinite_sum(xs: Tensor, attn: Tensor, admissible: Tensor) -> Tensor:
    """The IEEE value of sum_i A(i, j) x_i over the admissible keys i whose x_i is not finite, as
    (B, C, N): 0 where there is none, else NaN (a NaN, 0 * inf, or inf - inf), +inf or -inf. Counted
    with products of indicator matrices, so it costs what the dense product costs, without a host
    read (no branch on whether any entry is non-finite)."""

    def count(values: Tensor, pairs: Tensor) -> Tensor:  # [b, c, j] = #{i : values[b, c, i] and pairs[b, j, i]}
        return values.to(attn.dtype) @ pairs.transpose(1, 2).to(attn.dtype)

    positive = attn > 0  # only admissible pairs have a weight
    nan = count(xs.isnan(), admissible) + count(xs.isinf(), admissible & (attn == 0))
    pos, neg = count(xs == float("inf"), positive), count(xs == float("-inf"), positive)
    out = torch.where(pos > 0, float("inf"), 0.0) + torch.where(neg > 0, float("-inf"), 0.0)  # both: NaN
    return torch.where(nan > 0, float("nan"), out).to(attn.dtype)


def reference_forward(
    x: Tensor, f: Tensor, sigma: Tensor, radius: int | None, key_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    # Half inputs are computed in float32: this is the oracle the GPU kernels are compared with.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(dtype).flatten(2)  # (B, C, N)
    fs = f.to(dtype).flatten(2)  # (B, D, N)
    admissible = window_mask(H, W, radius, x.device).expand(B, -1, -1)
    fk = fs
    if key_mask is not None:
        km = key_mask.flatten(1)[:, None, :]
        admissible = admissible & km
        # Masked keys enter the product as 0, so that a non-finite f there cannot reach another
        # query's gradient through 0 * NaN (their logits are replaced by -inf below anyway).
        fk = torch.where(km, fs, 0)
    # logits[b, j, i]: query j (rows) against key i (columns); each entry is one pair's IEEE value
    logits = fs.transpose(1, 2) @ fk + pair_dist2(H, W, x.device).to(dtype) * _DistCoef.apply(sigma.to(dtype))
    logits = logits.masked_fill(~admissible, float("-inf"))
    # A query with no admissible key, or whose keys' weights all underflow (logits all -inf), gets a
    # constant row (no NaN in softmax or its gradient) and is zeroed afterwards: out = 0, zero
    # gradients, lse = -inf. A NaN logit is not -inf: it reaches out and lse, as the contract says.
    empty = (logits == float("-inf")).all(-1, keepdim=True)
    logits = logits.masked_fill(empty, 0.0)
    attn = torch.softmax(logits, dim=-1).masked_fill(empty, 0.0)
    used = admissible & ~empty
    out = _FinitePart.apply(xs) @ attn.transpose(1, 2) + _nonfinite_sum(xs, attn.detach(), used)
    lse = torch.logsumexp(logits, dim=-1).masked_fill(empty[..., 0], float("-inf"))
    return out.view(B, C, H, W).to(x.dtype), lse.view(B, H, W).to(lse_dtype(x.dtype))


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable(self, device):
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None

    def forward(self, x, f, sigma, radius, key_mask):
        return reference_forward(x, f, sigma, radius, key_mask)
