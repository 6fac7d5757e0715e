"""The triton backend: the kernels of kernels.py as the torch operators lam_ops::triton_forward /
lam_ops::triton_backward (csrc/ops.cpp's signatures), their launch parameters, and the Backend.

The operators are torch.library.triton_ops, so torch.compile sees the kernels themselves; the
autograd formula and the fake kernels are the shared ones of ../autograd.py.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..autograd import lse_dtype, register_backward_fake, register_lam_op
from ..base import Backend

try:
    import triton
    from torch.library import triton_op, wrap_triton
    from triton.runtime.interpreter import InterpretedFunction

    from . import kernels

    _IMPORT_ERROR = None
except ImportError as e:
    _IMPORT_ERROR = e

# The kernels hold a tile's channels in registers, padded to a power of two.
MAX_CHANNELS = 256
# Fixed tiles under the interpreter (autotuning there would only time Python); tl.dot needs >= 16.
INTERPRETER_TILES = dict(TH=4, TW=4, TKH=4, TKW=4)


def _tuned(kernel, configs):
    """Autotuned over (TH, TW, TKH, TKW, num_warps, num_stages), per (C, D, R) and dtype."""
    configs = [triton.Config(dict(TH=th, TW=tw, TKH=kh, TKW=kw), num_warps=w, num_stages=s) for th, tw, kh, kw, w, s in configs]
    return triton.autotune(configs, key=["C", "D", "R"])(kernel)


if _IMPORT_ERROR is None:
    # triton reads TRITON_INTERPRET when a function is decorated with @triton.jit, its own
    # tl.sum / tl.max / tl.cdiv included (at `import triton`): the mode is fixed per process.
    INTERPRETED = isinstance(kernels.lam_forward_kernel, InterpretedFunction)
    DELTA = kernels.lam_delta_kernel
    if INTERPRETED:
        FORWARD, BACKWARD = kernels.lam_forward_kernel, kernels.lam_backward_kernel
        TILES, DELTA_TILES = INTERPRETER_TILES, dict(TH=4, TW=4)
    else:
        # A few configurations only: each one is compiled on first use, and float32 with D = 256
        # takes tens of seconds. Chosen by compiling for sm_80 / sm_90 (registers, spills, shared
        # memory), not yet by timing on a GPU. The backward holds more per pixel (dx and df
        # accumulators), hence its smaller query tiles.
        FORWARD = _tuned(
            kernels.lam_forward_kernel,
            [(8, 8, 8, 8, 4, 2), (8, 8, 8, 8, 8, 2), (4, 16, 4, 16, 4, 2), (8, 16, 8, 8, 8, 2), (8, 8, 4, 16, 8, 1)],
        )
        BACKWARD = _tuned(
            kernels.lam_backward_kernel, [(4, 4, 8, 8, 4, 1), (4, 4, 8, 8, 8, 2), (4, 8, 8, 8, 4, 2), (8, 8, 8, 8, 8, 2)]
        )
        TILES, DELTA_TILES = {}, dict(TH=8, TW=32)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _kernel_radius(radius: Optional[int], H: int, W: int) -> int:
    """-1 for a window that covers the image from every pixel (radius None or >= the image)."""
    return -1 if radius is None or radius >= max(H, W) - 1 else radius


def _grid(B: int, H: int, W: int):
    return lambda meta: (triton.cdiv(H, meta["TH"]) * triton.cdiv(W, meta["TW"]), B)


def _mask_args(key_mask: Optional[Tensor], x: Tensor):
    """The mask pointer and its strides; without a mask, any tensor (it is never read)."""
    if key_mask is None:
        return dict(mask=x, smb=0, smh=0, smw=0, HAS_MASK=False)
    smb, smh, smw = key_mask.stride()
    return dict(mask=key_mask, smb=smb, smh=smh, smw=smw, HAS_MASK=True)


def _dot_args(dtype: torch.dtype) -> dict:
    # float32 must not drop to TF32 (the contract's float32 tolerance); halves ignore it.
    return dict(PRECISION="ieee" if dtype in (torch.float32, torch.float64) else "tf32", UPCAST=INTERPRETED and dtype == torch.bfloat16)


def _strides(prefix: str, t: Tensor) -> dict:
    return {f"s{prefix}{axis}": s for axis, s in zip("bchw", t.stride())}


_FORWARD_SCHEMA = "(Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask) -> (Tensor out, Tensor lse)"
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask, Tensor out, Tensor lse)"
    " -> (Tensor dx, Tensor df, Tensor dsigma)"
)


def triton_forward(x: Tensor, f: Tensor, sigma: Tensor, radius: Optional[int], key_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    D = f.shape[1]
    out = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    lse = torch.empty((B, H, W), dtype=lse_dtype(x.dtype), device=x.device)
    if B * H * W == 0:
        return out, lse
    wrap_triton(FORWARD)[_grid(B, H, W)](
        x=x, f=f, sigma=sigma.to(lse.dtype), out=out, lse=lse, H=H, W=W, C=C, D=D, R=_kernel_radius(radius, H, W),
        **_strides("x", x), **_strides("f", f), **_mask_args(key_mask, x),
        BLOCK_C=_block(C), BLOCK_D=_block(D), **_dot_args(x.dtype), **TILES,
    )
    return out, lse


def triton_backward(
    grad_out: Tensor, x: Tensor, f: Tensor, sigma: Tensor, radius: Optional[int], key_mask: Optional[Tensor],
    out: Tensor, lse: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    B, C, H, W = x.shape
    D = f.shape[1]
    dx = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    df = torch.empty((B, D, H, W), dtype=f.dtype, device=f.device)
    if B * H * W == 0:
        return dx, df, torch.zeros_like(sigma)
    sig = sigma.to(lse.dtype)
    delta = torch.empty_like(lse)
    wrap_triton(DELTA)[_grid(B, H, W)](
        g=grad_out, out=out.contiguous(), delta=delta, H=H, W=W, C=C, **_strides("g", grad_out),
        BLOCK_C=_block(C), **DELTA_TILES,
    )
    # dsig[b, j] = sum_i dS(i, j) |s_i - s_j|^2: per-pixel partials, summed below in a fixed order
    # (no float atomics, so the backward is bitwise reproducible).
    dsig = torch.empty_like(lse)
    wrap_triton(BACKWARD)[_grid(B, H, W)](
        g=grad_out, x=x, f=f, sigma=sig, lse=lse.contiguous(), delta=delta, dx=dx, df=df, dsig=dsig,
        H=H, W=W, C=C, D=D, R=_kernel_radius(radius, H, W),
        **_strides("g", grad_out), **_strides("x", x), **_strides("f", f), **_mask_args(key_mask, x),
        BLOCK_C=_block(C), BLOCK_D=_block(D), **_dot_args(x.dtype), **TILES,
    )
    dsigma = dsig.sum() / (sig * sig * sig)
    return dx, df, dsigma.to(sigma.dtype)


if _IMPORT_ERROR is None:
    triton_forward = triton_op("lam_ops::triton_forward", triton_forward, mutates_args=(), schema=_FORWARD_SCHEMA)
    triton_backward = triton_op("lam_ops::triton_backward", triton_backward, mutates_args=(), schema=_BACKWARD_SCHEMA)
    register_lam_op("lam_ops::triton_forward", torch.ops.lam_ops.triton_backward)
    register_backward_fake("lam_ops::triton_backward")


class TritonBackend(Backend):
    name = "triton"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable(self, device):
        device = torch.device(device)
        if _IMPORT_ERROR is not None:
            return f"triton is not installed ({_IMPORT_ERROR})"
        if device.type == "cpu":
            if INTERPRETED:
                return None
            return (
                "runs on CUDA tensors; CPU tensors only under the Triton interpreter "
                "(TRITON_INTERPRET=1 in the environment before lam_ops is imported)"
            )
        if device.type != "cuda":
            return f"runs on CUDA tensors, got {device.type}"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None

    def picked_by_auto(self, device):
        # The interpreter is for tests and debugging: far slower than the cpp kernels on CPU tensors.
        return torch.device(device).type == "cuda"

    def unsupported(self, x, f, sigma, radius, key_mask):
        why = self.unavailable(x.device)
        if why is None and x.dtype not in self.dtypes and not (INTERPRETED and x.dtype == torch.float64):
            why = f"supports x of dtype {', '.join(str(d) for d in self.dtypes)}, got {x.dtype}"
            if x.dtype == torch.float64:
                # Seen compiling for sm_90: an assertion in MMAv2 ("fp64 don't support largeK")
                # aborts the process, and D = 256 tiles outgrow shared memory.
                why += " (float64 only under the interpreter: triton 3.8 cannot compile float64 tl.dot for these tiles)"
        if why is None and max(x.shape[1], f.shape[1]) > MAX_CHANNELS:
            why = (
                f"x's C = {x.shape[1]} and f's D = {f.shape[1]} must be <= {MAX_CHANNELS} "
                "(a tile's channels are held in registers)"
            )
        return why

    def forward(self, x, f, sigma, radius, key_mask):
        return torch.ops.lam_ops.triton_forward(x, f, sigma, radius, key_mask)
