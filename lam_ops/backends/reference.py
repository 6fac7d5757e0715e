"""The reference backend: the contract written in plain PyTorch, gradients by autograd (two small
autograd Functions keep the sums of its dense products to the admissible pairs).

It builds the dense HW x HW logits of each image and masks them to the window, which makes it
obviously correct for every radius (None included) and the oracle of the tests; it is also the
fallback where no compiled kernel runs. Memory grows as (HW)^2: use it for small inputs.

Non-finite inputs: outputs and gradients follow the contract's IEEE arithmetic over the admissible
pairs only. Every dense product whose sum runs over pixels (the aggregation, and the gradients of
the logits with respect to f) leaves the other pairs out rather than adding 0 * value for them
(_PairSum, _PairDot), so a non-finite value outside a window or masked out reaches nothing.
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


def _count(indicator: Tensor, pairs: Tensor, dtype: torch.dtype) -> Tensor:
    """[b, k, j] = #{i : indicator[b, k, i] and pairs[b, j, i]}, as a product of indicator matrices:
    the cost of the dense product, without a host read (no branch on whether any entry is set)."""
    return indicator.to(dtype) @ pairs.transpose(1, 2).to(dtype)


def _nonfinite_part(values: Tensor, attn: Tensor, pairs: Tensor) -> Tensor:
    """The IEEE value of sum over the pairs (j, i) of attn[b, j, i] values[b, k, i] restricted to the
    values that are not finite, as (B, K, N): 0 where there is none, else NaN (a NaN, 0 * inf,
    NaN * inf or inf - inf), +inf or -inf. attn is >= 0 or NaN, and 0 outside the pairs."""
    weighted = attn > 0
    nan = _count(values.isnan(), pairs, attn.dtype) + _count(values.isinf(), pairs & ~weighted, attn.dtype)
    pos, neg = (_count(values == v, weighted, attn.dtype) for v in (float("inf"), float("-inf")))
    out = torch.where(pos > 0, float("inf"), 0.0) + torch.where(neg > 0, float("-inf"), 0.0)  # both: NaN
    return torch.where(nan > 0, float("nan"), out).to(attn.dtype)


class _PairSum(torch.autograd.Function):
    """out[b, k, j] = sum over the pairs (j, i) of attn[b, j, i] values[b, k, i]: a dense product
    that leaves out the other pairs rather than adding 0 * value for them, which is NaN for a
    non-finite value (a key outside the window or masked out must reach nothing). Its gradient
    with respect to values, attn^T g, does not depend on them; the incoming gradient g (the
    caller's grad_out) is finite in the contract, so both gradients are plain products, written
    with differentiable operations: second derivatives work."""

    @staticmethod
    def forward(ctx, values, attn, pairs):
        ctx.save_for_backward(values, attn, pairs)
        attn = torch.where(pairs, attn, 0)  # a pair outside contributes nothing (NaN rows included)
        finite = torch.where(torch.isfinite(values), values, 0)
        return finite @ attn.transpose(1, 2) + _nonfinite_part(values, attn, pairs)

    @staticmethod
    def backward(ctx, grad):
        values, attn, pairs = ctx.saved_tensors
        return grad @ torch.where(pairs, attn, 0), torch.where(pairs, grad.transpose(1, 2) @ values, 0), None


class _PairDot(torch.autograd.Function):
    """The logits' feature term f_j . f_i of every pair, given as `dots` (computed without autograd),
    with the gradient with respect to f summed over `pairs` only: a non-finite f never reaches the
    gradient of a pixel through a pair that is not in the sums (the dense product's 0 * inf), such
    as the pairs of a query without weight. Where a non-finite f_i meets a pair of the sums, the
    term is NaN: its logit is +-inf or NaN, so the pair's gradient is NaN (the row's softmax), or 0
    at weight 0, and 0 * inf is NaN."""

    @staticmethod
    def forward(ctx, f, dots, pairs):
        ctx.save_for_backward(f, pairs)
        return dots

    @staticmethod
    def backward(ctx, grad):
        f, pairs = ctx.saved_tensors
        grad = torch.where(pairs, grad, 0)
        finite = torch.where(torch.isfinite(f), f, 0)
        # f_j as the query of its keys i, plus f_i as the key of its queries j
        df = finite @ grad.transpose(1, 2) + finite @ grad
        meets = _count(~torch.isfinite(f), pairs | pairs.transpose(1, 2), f.dtype)
        return torch.where(meets > 0, float("nan"), df), None, None


def reference_forward(
    x: Tensor, f: Tensor, sigma: Tensor, radius: int | None, key_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    # Half inputs are computed in float32: this is the oracle the GPU kernels are compared with.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(dtype).flatten(2)  # (B, C, N)
    fs = f.to(dtype).flatten(2)  # (B, D, N)
    admissible = window_mask(H, W, radius, x.device).expand(B, -1, -1)
    if key_mask is not None:
        admissible = admissible & key_mask.flatten(1)[:, None, :]
    # [b, j, i]: query j (rows) against key i (columns); each entry is one pair's IEEE value
    distance = pair_dist2(H, W, x.device).to(dtype) * _DistCoef.apply(sigma.to(dtype))
    with torch.no_grad():
        dots = fs.transpose(1, 2) @ fs
        # A query with no admissible key, or whose keys' weights all underflow (logits all -inf),
        # has out = 0, lse = -inf and no pair in any gradient. A NaN logit is not -inf: it reaches
        # out and lse, as the contract says.
        empty = ((dots + distance).masked_fill(~admissible, float("-inf")) == float("-inf")).all(-1, keepdim=True)
    used = admissible & ~empty
    # The rows of the queries without weight are constant (no NaN in softmax or its gradient) and
    # zeroed afterwards.
    logits = (_PairDot.apply(fs, dots, used) + distance).masked_fill(~admissible, float("-inf"))
    logits = logits.masked_fill(empty, 0.0)
    attn = torch.softmax(logits, dim=-1).masked_fill(empty, 0.0)
    out = _PairSum.apply(xs, attn, used)
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
