"""The reference backend: the contract written in plain PyTorch, gradients by autograd.

It builds the dense HW x HW logits of each image and masks them to the window, which makes it
obviously correct for every radius (None included) and the oracle of the tests; it is also the
fallback where no compiled kernel runs. Memory grows as (HW)^2: use it for small inputs.

Non-finite inputs: outputs and gradients follow the contract's IEEE arithmetic over the admissible
pairs only. Every dense product whose sum runs over pixels (the aggregation, and the gradients of
the logits with respect to f) leaves the other pairs out rather than adding 0 * value for them
(pair_sum), so a non-finite value outside a window or masked out reaches nothing.
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


def _nonfinite_part(values: Tensor, weights: Tensor, admissible: Tensor) -> Tensor:
    """The IEEE value of sum_i weights[b, j, i] values[b, k, i] over the admissible pairs (j, i) whose
    value is not finite, as (B, K, N): 0 where there is none, else NaN (a NaN, 0 * inf, or inf -
    inf), +inf or -inf. `weights` is 0 outside the admissible pairs. Counted with products of
    indicator matrices, so it costs what the dense product costs, without a host read (no branch on
    whether any entry is non-finite)."""

    def count(indicator: Tensor, pairs: Tensor) -> Tensor:  # [b, k, j] = #{i : indicator[b, k, i] and pairs[b, j, i]}
        return indicator.to(weights.dtype) @ pairs.transpose(1, 2).to(weights.dtype)

    zero_or_nan = (weights == 0) | weights.isnan()
    nan = count(values.isnan(), admissible) + count(values.isinf(), admissible & zero_or_nan)
    plus, minus = values == float("inf"), values == float("-inf")
    pos = count(plus, weights > 0) + count(minus, weights < 0)
    neg = count(minus, weights > 0) + count(plus, weights < 0)
    out = torch.where(pos > 0, float("inf"), 0.0) + torch.where(neg > 0, float("-inf"), 0.0)  # both: NaN
    return torch.where(nan > 0, float("nan"), out).to(weights.dtype)


class _PairSum(torch.autograd.Function):
    """sum over the admissible pairs (j, i) of weights[b, j, i] values[b, k, i], as (B, K, N) indexed by
    j: a dense product that leaves out the other pairs rather than adding 0 * value for them, which
    is NaN for a non-finite value (a key outside the window or masked out must not reach anything).
    The backward is two such sums (dvalues gathers over j, the transposed pairs) and the pairs'
    products of the incoming gradient with the values; written with differentiable operations, so
    second derivatives work."""

    @staticmethod
    def forward(ctx, values, weights, admissible):
        ctx.save_for_backward(values, weights, admissible)
        weights = torch.where(admissible, weights, 0)  # what a pair outside contributes: nothing
        finite = torch.where(torch.isfinite(values), values, 0)
        return finite @ weights.transpose(1, 2) + _nonfinite_part(values, weights, admissible)

    @staticmethod
    def backward(ctx, grad):
        values, weights, admissible = ctx.saved_tensors
        # pair_sum leaves out the other pairs itself; the weights' own value there (NaN in the row of
        # a query with a non-finite logit) is not one of its terms
        dvalues = pair_sum(grad, weights.transpose(1, 2), admissible.transpose(1, 2))
        dweights = torch.where(admissible, grad.transpose(1, 2) @ values, 0)
        return dvalues, dweights, None


def pair_sum(values: Tensor, weights: Tensor, admissible: Tensor) -> Tensor:
    return _PairSum.apply(values, weights, admissible)


class _PairDot(torch.autograd.Function):
    """The logits' feature term f_j . f_i of every pair, given as `dots` (computed without autograd),
    with the gradient with respect to f summed over `pairs` only (pair_sum): a non-finite f never
    reaches the gradient of a pixel through a pair that is not in the sums (the dense product's
    0 * inf), such as the pairs of a query without weight."""

    @staticmethod
    def forward(ctx, f, dots, pairs):
        ctx.save_for_backward(f, pairs)
        return dots

    @staticmethod
    def backward(ctx, grad):
        f, pairs = ctx.saved_tensors
        # f_j as the query of its keys i, plus f_i as the key of its queries j
        return pair_sum(f, grad, pairs) + pair_sum(f, grad.transpose(1, 2), pairs.transpose(1, 2)), None, None


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
    out = pair_sum(xs, attn, used)
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
