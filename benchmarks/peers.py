"""The implementations a user would write or pick instead of lam_ops, as benchmark peers.

Each peer is `fn(x, f, sigma, radius, key_mask=None) -> out` with lam_ops' contract (docs/operator.md:
clipped square window, radius None = whole image, key_mask = pixels that may be aggregated from,
out = 0 for a query with no admissible key) and, where `trainable`, differentiable in x, f and a
sigma tensor. tests/test_peers.py checks every one against lam_ops' reference backend, so that the
benchmark compares implementations of the same operator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lam_ops.backends.reference import pair_dist2, window_mask


def _sigma(sigma, like: Tensor) -> Tensor:
    return sigma if isinstance(sigma, Tensor) else torch.tensor(float(sigma), dtype=like.dtype, device=like.device)


def _half_window(H: int, W: int, radius: int | None) -> tuple[int, int]:
    """The window half sizes that can hold a pixel: offsets beyond the image are never admissible."""
    if radius is None:
        return H - 1, W - 1
    return min(radius, H - 1), min(radius, W - 1)


# ---------------------------------------------------------------------------------------- dense
def dense(x, f, sigma, radius=None, key_mask=None):
    """The authors' formulation: P_low = softmax_i(f_i . f_j) over the whole image and P_dis =
    exp(-|s_i - s_j|^2 / (2 sigma^2)), both HW x HW per image, A = P_low P_dis (times the window
    and key masks) normalised over i; autograd through every matrix."""
    B, C, H, W = x.shape
    sigma = _sigma(sigma, x)
    fs = f.flatten(2)
    p_low = torch.softmax(fs.transpose(1, 2) @ fs, dim=-1)  # [b, j, i]: query j, key i
    p_dis = torch.exp(-pair_dist2(H, W, x.device).to(x.dtype) / (2 * sigma**2))
    if radius is not None:
        p_dis = p_dis * window_mask(H, W, radius, x.device)
    a = p_low * p_dis
    if key_mask is not None:
        a = a * key_mask.flatten(1)[:, None, :]
    # A query with no admissible key has a zero row: it stays zero (out = 0, zero gradient).
    norm = a.sum(-1, keepdim=True)
    a = a / torch.where(norm > 0, norm, 1.0)
    return (x.flatten(2) @ a.transpose(1, 2)).view(B, C, H, W)


# --------------------------------------------------------------------------------------- unfold
def _window_offsets_d2(ry: int, rx: int, device) -> Tensor:
    """|offset|^2 of the (2ry+1)(2rx+1) window positions, in F.unfold's (row-major) order."""
    dy = torch.arange(-ry, ry + 1, device=device)
    dx = torch.arange(-rx, rx + 1, device=device)
    return (dy[:, None] ** 2 + dx[None, :] ** 2).flatten()


def unfold(x, f, sigma, radius=None, key_mask=None):
    """Windowed PyTorch: F.unfold copies every pixel's (2r+1)^2 window of f and x (zero padding),
    keys outside the image or the key mask are masked out exactly; autograd."""
    B, C, H, W = x.shape
    ry, rx = _half_window(H, W, radius)
    kw = dict(kernel_size=(2 * ry + 1, 2 * rx + 1), padding=(ry, rx))
    K, N = (2 * ry + 1) * (2 * rx + 1), H * W
    fu = F.unfold(f, **kw).view(B, -1, K, N)
    xu = F.unfold(x, **kw).view(B, C, K, N)
    keys = torch.ones(1, 1, H, W, device=x.device) if key_mask is None else key_mask[:, None].float()
    valid = F.unfold(keys, **kw) > 0.5  # (B or 1, K, N): padding reads 0
    d2 = _window_offsets_d2(ry, rx, x.device).to(x.dtype)
    logits = torch.einsum("bdkn,bdn->bkn", fu, f.flatten(2)) - d2[:, None] / (2 * _sigma(sigma, x) ** 2)
    logits = logits.masked_fill(~valid, float("-inf"))
    empty = ~valid.any(1, keepdim=True)
    a = torch.softmax(logits.masked_fill(empty, 0.0), dim=1).masked_fill(empty, 0.0)
    return torch.einsum("bckn,bkn->bcn", xu, a).view(B, C, H, W)


# ---------------------------------------------------------------------------------- offset loop
class _OffsetLoop(torch.autograd.Function):
    """A loop over the window offsets on shifted slices of zero-padded x and f; the forward saves
    the window weights A (B, K, H, W) and the backward is written by hand from them (the gathers
    of docs/operator.md as scatters into padded buffers)."""

    @staticmethod
    def forward(ctx, x, f, sigma, radius, key_mask):
        B, C, H, W = x.shape
        ry, rx = _half_window(H, W, radius)
        pad = (rx, rx, ry, ry)
        xp, fp = F.pad(x, pad), F.pad(f, pad)
        keys = torch.ones(1, H, W, dtype=torch.bool, device=x.device) if key_mask is None else key_mask
        vp = F.pad(keys, pad)  # bool padding is False: keys outside the image do not exist
        inv = 1 / (2 * sigma.to(x.dtype) ** 2)
        offsets = [(dy, dx) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]
        logits = x.new_empty(B, len(offsets), H, W)
        for k, (dy, dx) in enumerate(offsets):
            sl = (slice(ry + dy, ry + dy + H), slice(rx + dx, rx + dx + W))
            lk = logits[:, k]
            torch.sum(f * fp[(..., *sl)], 1, out=lk)
            lk.sub_((dy * dy + dx * dx) * inv).masked_fill_(~vp[(..., *sl)], float("-inf"))
        empty = logits.amax(1, keepdim=True) == float("-inf")
        a = torch.softmax(logits.masked_fill_(empty, 0.0), dim=1).masked_fill_(empty, 0.0)
        del logits
        out = torch.zeros_like(x)
        for k, (dy, dx) in enumerate(offsets):
            out.addcmul_(a[:, k, None], xp[:, :, ry + dy : ry + dy + H, rx + dx : rx + dx + W])
        ctx.save_for_backward(x, f, sigma, a, out)
        ctx.window = (ry, rx, offsets)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, f, sigma, a, out = ctx.saved_tensors
        ry, rx, offsets = ctx.window
        H, W = x.shape[2:]
        pad = (rx, rx, ry, ry)
        xp, fp = F.pad(x, pad), F.pad(f, pad)
        dxp, dfp = torch.zeros_like(xp), torch.zeros_like(fp)
        df = torch.zeros_like(f)
        delta = (g * out).sum(1)
        dsigma = x.new_zeros(())
        for k, (dy, dx) in enumerate(offsets):
            sl = (..., slice(ry + dy, ry + dy + H), slice(rx + dx, rx + dx + W))
            ak = a[:, k]
            dxp[sl].addcmul_(ak[:, None], g)  # dx_i += A(i, j) g_j
            ds = ak * ((g * xp[sl]).sum(1) - delta)  # dS(i, j)
            df.addcmul_(ds[:, None], fp[sl])  # query side
            dfp[sl].addcmul_(ds[:, None], f)  # key side
            dsigma += (dy * dy + dx * dx) * ds.sum()
        crop = (..., slice(ry, ry + H), slice(rx, rx + W))
        df += dfp[crop]
        need = ctx.needs_input_grad
        dsigma = (dsigma / sigma.to(x.dtype) ** 3).to(sigma.dtype) if need[2] else None
        return dxp[crop] if need[0] else None, df if need[1] else None, dsigma, None, None


def offset_loop(x, f, sigma, radius=None, key_mask=None):
    return _OffsetLoop.apply(x, f, _sigma(sigma, x), radius, key_mask)


# -------------------------------------------------------------------------------- FlexAttention
@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _pixel_delta(q_idx, kv_idx, W: int):
    return q_idx // W - kv_idx // W, q_idx % W - kv_idx % W


@functools.lru_cache(maxsize=16)
def _window_block_mask(H: int, W: int, radius: int | None, device: str):
    """The 2D neighbourhood block mask of one image size, built once (as a user would)."""
    return _block_mask(H, W, radius, None, device)


def _block_mask(H, W, radius, key_mask, device):
    from torch.nn.attention.flex_attention import create_block_mask

    ry, rx = _half_window(H, W, radius)
    keys = None if key_mask is None else key_mask.flatten(1)

    def mask_mod(b, h, q_idx, kv_idx):
        dy, dx = _pixel_delta(q_idx, kv_idx, W)
        inside = (dy.abs() <= ry) & (dx.abs() <= rx)
        return inside if keys is None else inside & keys[b, kv_idx]

    return create_block_mask(mask_mod, None if keys is None else keys.shape[0], None, H * W, H * W, device=device)


def flex(x, f, sigma, radius=None, key_mask=None):
    """torch.nn.attention.flex_attention, compiled: one head, q = k = f (scale 1), v = x, a
    score_mod adding the Gaussian bias -|s_i - s_j|^2 / (2 sigma^2) and a block mask for the 2D
    window (and the key mask). torch 2.14 has no FlexAttention backward on CPU."""
    B, C, H, W = x.shape
    sigma = _sigma(sigma, x)
    if key_mask is None:
        block_mask = _window_block_mask(H, W, radius, str(x.device))
    else:
        block_mask = _block_mask(H, W, radius, key_mask, str(x.device))

    def score_mod(score, b, h, q_idx, kv_idx):
        dy, dx = _pixel_delta(q_idx, kv_idx, W)
        return score - (dy * dy + dx * dx).to(score.dtype) / (2 * sigma * sigma)

    q = f.flatten(2).transpose(1, 2)[:, None].contiguous()  # (B, 1, HW, D)
    v = x.flatten(2).transpose(1, 2)[:, None].contiguous()  # (B, 1, HW, C)
    # One compilation per shape and window: a benchmark needs more than dynamo's default 8, after
    # which torch would silently fall back to the unfused flex_attention.
    with torch._dynamo.config.patch(recompile_limit=256):
        out = _compiled_flex_attention()(q, q, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(B, C, H, W)


# ---------------------------------------------------------------------------------------- NATTEN
def natten_peer(x, f, sigma, radius=None, key_mask=None):
    """NATTEN's na2d (neighbourhood attention). Natively it has no additive bias (so neither the
    Gaussian term nor a trainable sigma), no key mask, and it shifts border windows to stay
    full-size. All three are folded into the inputs here so that it computes the LAM exactly:
    q_j = [f_j, s_j / sigma, 1] and k_i = [f_i, s_i / sigma, -|s_i|^2 / (2 sigma^2)] give
    q_j . k_i = logit(i, j) + |s_j|^2 / (2 sigma^2), a per-query constant the softmax cancels; the
    image is padded by the radius with keys whose last channel is -1e9 (so no window is shifted),
    and masked keys get -1e9 too (queries with no admissible key are zeroed afterwards)."""
    import natten

    B, C, H, W = x.shape
    D = f.shape[1]
    ry, rx = _half_window(H, W, radius)
    sigma = _sigma(sigma, x).to(x.dtype)
    ys = torch.arange(H, dtype=x.dtype, device=x.device) - (H - 1) / 2  # centred: smaller constants
    xs = torch.arange(W, dtype=x.dtype, device=x.device) - (W - 1) / 2
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(B, 2, H, W) / sigma
    bias = -(pos * pos).sum(1, keepdim=True) / 2
    if key_mask is not None:
        bias = bias.masked_fill(~key_mask[:, None], -1e9)
    if min(ry, rx) < 1:
        raise ValueError(f"NATTEN needs a window of at least 3 x 3 pixels, got radius {radius} on {H}x{W}")
    # NATTEN needs one head dim for q, k and v, a power of two >= 8: zero channels change nothing
    dim = max(8, 1 << (max(D + 3, C) - 1).bit_length())
    q = torch.cat([f, pos, torch.ones_like(bias), f.new_zeros(B, dim - D - 3, H, W)], 1)
    k = torch.cat([f, pos, bias, f.new_zeros(B, dim - D - 3, H, W)], 1)
    v = torch.cat([x, x.new_zeros(B, dim - C, H, W)], 1)
    pad = (rx, rx, ry, ry)
    k = F.pad(k, pad)
    k[:, D + 2].masked_fill_(F.pad(torch.ones(H, W, dtype=torch.bool, device=x.device), pad) == 0, -1e9)
    q, k, v = (F.pad(t, pad) if t is not k else t for t in (q, k, v))
    layout = lambda t: t.permute(0, 2, 3, 1)[:, :, :, None]  # (B, H, W, heads=1, dim)
    # On CPU NATTEN has only its flex-fna backend, uncompiled (it refuses torch.compile there).
    backend = None if x.is_cuda else "flex-fna"
    out = natten.na2d(
        layout(q).contiguous(),
        layout(k).contiguous(),
        layout(v).contiguous(),
        kernel_size=(2 * ry + 1, 2 * rx + 1),
        scale=1.0,
        backend=backend,
    )
    out = out[:, ry : ry + H, rx : rx + W, 0, :C].permute(0, 3, 1, 2)
    if key_mask is not None:
        seen = F.max_pool2d(key_mask[:, None].to(x.dtype), (2 * ry + 1, 2 * rx + 1), 1, (ry, rx)) > 0
        out = out * seen
    return out


def natten_unavailable() -> str | None:
    try:
        import natten  # noqa: F401
    except ImportError as e:
        return f"not installed ({e}); `pip install natten` builds it (without CUDA kernels on a CPU-only machine)"
    return None


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Peer:
    name: str
    fn: Callable
    trainable: bool  # has a backward on every device
    summary: str
    # Bytes of the largest intermediates of one forward+backward (B, C, D, H, W, K = window
    # positions), used to skip configurations over the memory budget before running them.
    memory_estimate: Callable[[int, int, int, int, int, int], float]
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    # Device types where it has no backward. Declared rather than probed: a failed compiled
    # FlexAttention backward leaves torch.compile falling back to the unfused forward afterwards.
    no_backward_on: tuple = ()


def _natten_memory(B, C, D, H, W, K):
    # uncompiled FlexAttention (its CPU path) materialises the scores of the padded image
    side = int(round(K**0.5))
    return 4 * 4 * B * ((H + side - 1) * (W + side - 1)) ** 2


PEERS = {
    p.name: p
    for p in (
        Peer(
            "dense",
            dense,
            True,
            "authors' HW x HW P_low * P_dis, window as a mask (autograd)",
            lambda B, C, D, H, W, K: 4 * 8 * B * (H * W) ** 2,
        ),
        Peer(
            "unfold",
            unfold,
            True,
            "F.unfold of f and x over the window (autograd)",
            lambda B, C, D, H, W, K: 4 * 3 * B * K * H * W * (D + C + 4),
        ),
        Peer(
            "offset_loop",
            offset_loop,
            True,
            "loop over window offsets, hand-written backward saving A",
            lambda B, C, D, H, W, K: 4 * 3 * B * K * H * W,
        ),
        Peer(
            "flex",
            flex,
            False,
            "compiled FlexAttention, score_mod bias + 2D block mask",
            lambda B, C, D, H, W, K: 4 * 4 * B * H * W * (D + C),
            no_backward_on=("cpu",),
        ),
        Peer(
            "natten",
            natten_peer,
            False,
            "NATTEN na2d, bias, clipping and key mask folded into extra channels and padding",
            _natten_memory,
            natten_unavailable,
            no_backward_on=("cpu",),
        ),
    )
}
