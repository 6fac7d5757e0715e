"""The triton backend: the kernels of kernels.py as the torch operators lam_ops::triton_forward /
lam_ops::triton_backward (csrc/ops.cpp's signatures), their launch parameters, and the Backend.

The operators are torch.library.triton_ops, so torch.compile sees the kernels themselves; the
autograd formula and the fake kernels are the shared ones of ../autograd.py.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os

import torch
from torch import Tensor

from ..autograd import lse_dtype, register_backward_fake, register_first_order_only, register_lam_op
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
# Grid: one program per tile of every image, on the first grid axis (at most 2^31 - 1 programs).
MAX_PROGRAMS = 2**31 - 1
AUTOTUNE_ENV = "LAM_OPS_TRITON_AUTOTUNE"

# The configuration, by the compiler's report (ptxas -v of triton 3.6 and 3.8 for sm_80 and
# sm_90, C = 21, a key mask, D padded to 64, 128, 256): no register spills, shared memory within
# bounds (test_chosen_configurations_fit_the_gpus). Larger tiles share each loaded key among more
# queries, but every 8 x 8 one tried spilled at D = 256 (float32's exact FMA tl.dot holds whole
# f tiles in registers; the backward holds dx and df accumulators besides). ptxas also caps these
# kernels at 128 registers unless told otherwise, and then spills a few bytes in cases that vary
# with the triton version, the warps and the stages: maxnreg = 255 lifts the cap (8 warps x 255
# registers fit an SM's 64 Ki registers).
# The forward's float32 spills 16 B on sm_90 at D >= 128 with triton 3.8 in one stage, not in two.
TILES = dict(TH=4, TW=4, TKH=4, TKW=4)
LAUNCH = {
    "forward": dict(num_warps=8, num_stages=2, maxnreg=255),
    "backward": dict(num_warps=8, num_stages=1, maxnreg=255),
}
# The opt-in autotuner times these (larger ones may spill: speed decides there).
FORWARD_CONFIGS = [(4, 4, 4, 4, 8, 1), (4, 4, 4, 4, 4, 1), (8, 8, 8, 8, 8, 2), (8, 8, 8, 8, 4, 2), (4, 16, 4, 16, 4, 2)]
BACKWARD_CONFIGS = [(4, 4, 4, 4, 8, 1), (4, 4, 4, 4, 4, 1), (4, 4, 8, 8, 8, 2), (4, 8, 8, 8, 4, 2)]
DELTA_TILES = dict(TH=8, TW=32)


def _fixed(kernel, kind: str):
    """kernel with the fixed configuration attached (docs/operator.md's determinism: a rule, not
    timing), as a one-configuration autotuner: triton times nothing with a single configuration,
    and torch.compile passes its launch options (maxnreg included) to the kernel it compiles,
    which launch keywords would not all reach. One configuration fits every case checked (dtype,
    D, sm_80 / sm_90); a GPU's timings may refine it per dtype, D, radius or architecture."""
    return triton.autotune([triton.Config(dict(TILES), **LAUNCH[kind])], key=[])(kernel)


def _autotuned(kernel, configs):
    """Opt-in (LAM_OPS_TRITON_AUTOTUNE=1): the fastest of `configs`, timed in this process per
    (C, D, R) and dtype. Not deterministic across processes: see docs/backends.md."""
    configs = [
        triton.Config(dict(TH=th, TW=tw, TKH=kh, TKW=kw), num_warps=w, num_stages=s, maxnreg=255)
        for th, tw, kh, kw, w, s in configs
    ]
    return triton.autotune(configs, key=["C", "D", "R"])(kernel)


if _IMPORT_ERROR is None:
    # triton reads TRITON_INTERPRET when a function is decorated with @triton.jit, its own
    # tl.sum / tl.max / tl.cdiv included (at `import triton`): the mode is fixed per process.
    INTERPRETED = isinstance(kernels.lam_forward_kernel, InterpretedFunction)
    AUTOTUNE = os.environ.get(AUTOTUNE_ENV, "0") == "1" and not INTERPRETED
    FORWARD, BACKWARD, DELTA = kernels.lam_forward_kernel, kernels.lam_backward_kernel, kernels.lam_delta_kernel
    if AUTOTUNE:
        FORWARD, BACKWARD = _autotuned(FORWARD, FORWARD_CONFIGS), _autotuned(BACKWARD, BACKWARD_CONFIGS)
    elif not INTERPRETED:
        FORWARD, BACKWARD = _fixed(FORWARD, "forward"), _fixed(BACKWARD, "backward")
    if INTERPRETED:
        DELTA_TILES = dict(TH=4, TW=4)


def patch_interpreter_scalar_index() -> bool:
    """Version shim, triton before 3.8 (3.6 here) with numpy >= 2.4: the interpreter turns a scalar
    (a 1-element array) into a Python int with int(array), which numpy 2.4 rejects ("only
    0-dimensional arrays can be converted to Python scalars"), so a loop over runtime bounds fails.
    triton 3.8 squeezes the array first; this does the same for older interpreters. Returns
    whether it patched."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if "squeeze" in inspect.getsource(original) or getattr(original, "lam_ops_shim", False):
        return False

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.lam_ops_shim = True
    interpreter._patch_lang_tensor = patched
    return True


if _IMPORT_ERROR is None and INTERPRETED:
    patch_interpreter_scalar_index()


def launchable(kernel):
    """kernel as launched from a triton_op: through wrap_triton, so that torch.compile traces it.
    Version shim: torch 2.11's wrap_triton rejects the interpreter's kernels ("wrap_triton only
    works on functions annotated with triton.jit or triton.autotune"), newer torch (2.14) returns
    them unwrapped. Interpreted kernels cannot be traced anyway, so they are launched directly on
    every torch version."""
    return kernel if INTERPRETED else wrap_triton(kernel)


def _launch_config() -> dict:
    """What a launch passes besides the arguments: the interpreter's tiles; on a GPU nothing, the
    (fixed or autotuned) configuration is attached to the kernel."""
    return dict(INTERPRETER_TILES) if INTERPRETED else {}


def _grid_tiles(config: dict) -> dict:
    """The pixel tile that sizes the grid; an autotuned launch's smallest candidate bounds it."""
    return config or (dict(TH=1, TW=1) if AUTOTUNE else TILES)


def _device_guard(t: Tensor):
    """Launches (and the opt-in autotuner's timing runs) on t's GPU, not the current one."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _block(n: int) -> int:
    # int(): a constexpr, so a symbolic channel count (torch.compile, dynamic=True) is specialised.
    return max(16, triton.next_power_of_2(int(n)))


def _kernel_radius(radius: int | None, H: int, W: int) -> int:
    """The kernels' R: radius, or max(H, W) where the window holds the whole image from every
    pixel (radius None or >= the image), which needs no special case in the kernels."""
    return max(H, W) if radius is None or radius >= max(H, W) - 1 else radius


def needs_int64(*tensors: Tensor) -> bool:
    """Whether an offset within one image of any of `tensors` (inputs through their strides, or a
    contiguous output of the same shape) may reach 2^31: then the kernels use 64-bit offsets."""
    for t in tensors:
        per_image = math.prod(t.shape[1:])
        reach = sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:], strict=True) if n > 0)
        if max(per_image, reach + 1) >= 2**31:
            return True
    return False


def check_grid(B: int, H: int, W: int, tiles: dict) -> None:
    """The one-dimensional grid of a launch must stay within CUDA's 2^31 - 1 blocks."""
    programs = triton.cdiv(H, tiles["TH"]) * triton.cdiv(W, tiles["TW"]) * B
    if programs > MAX_PROGRAMS:
        raise ValueError(
            f"lam_ops triton: x of batch {B} and {H} x {W} pixels needs {programs} programs of "
            f"{tiles['TH']} x {tiles['TW']} pixels, over the GPU's grid limit of {MAX_PROGRAMS}; split the batch"
        )


def _grid(B: int, H: int, W: int):
    return lambda meta: (triton.cdiv(H, meta["TH"]) * triton.cdiv(W, meta["TW"]) * B,)


def _mask_args(key_mask: Tensor | None, x: Tensor):
    """The mask pointer and its strides; without a mask, any tensor (it is never read)."""
    if key_mask is None:
        return dict(mask=x, smb=0, smh=0, smw=0, HAS_MASK=False)
    smb, smh, smw = key_mask.stride()
    return dict(mask=key_mask, smb=smb, smh=smh, smw=smw, HAS_MASK=True)


def _dot_args(dtype: torch.dtype) -> dict:
    # float32 must not drop to TF32 (the contract's float32 tolerance); halves ignore it.
    return dict(
        PRECISION="ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        UPCAST=INTERPRETED and dtype == torch.bfloat16,
    )


def _strides(prefix: str, t: Tensor) -> dict:
    return {f"s{prefix}{axis}": s for axis, s in zip("bchw", t.stride(), strict=True)}


def _window_args(x: Tensor, f: Tensor, radius: int | None, key_mask: Tensor | None, wide: bool) -> dict:
    """The arguments the forward and backward kernels share: sizes, radius, x/f/mask strides, channel
    blocks, dot precision and the pixel tiles (whose grid is checked against the launch limit here)."""
    B, C, H, W = x.shape
    D = f.shape[1]
    config = _launch_config()
    check_grid(B, H, W, _grid_tiles(config))
    return dict(
        H=H,
        W=W,
        C=C,
        D=D,
        R=_kernel_radius(radius, H, W),
        **_strides("x", x),
        **_strides("f", f),
        **_mask_args(key_mask, x),
        BLOCK_C=_block(C),
        BLOCK_D=_block(D),
        I64=wide,
        **_dot_args(x.dtype),
        **config,
    )


_FORWARD_SCHEMA = "(Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask) -> (Tensor out, Tensor lse)"
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask, Tensor out, Tensor lse)"
    " -> (Tensor dx, Tensor df, Tensor dsigma)"
)


def triton_forward(
    x: Tensor, f: Tensor, sigma: Tensor, radius: int | None, key_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    out = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    lse = torch.empty((B, H, W), dtype=lse_dtype(x.dtype), device=x.device)
    if B * H * W == 0:  # no program to launch; C = 0 or D = 0 run the kernel (the logits are distances)
        return out, lse
    shared = _window_args(x, f, radius, key_mask, wide=needs_int64(x, f))
    with _device_guard(x):
        launchable(FORWARD)[_grid(B, H, W)](x=x, f=f, sigma=sigma.to(lse.dtype), out=out, lse=lse, **shared)
    return out, lse


def triton_backward(
    grad_out: Tensor,
    x: Tensor,
    f: Tensor,
    sigma: Tensor,
    radius: int | None,
    key_mask: Tensor | None,
    out: Tensor,
    lse: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    B, C, H, W = x.shape
    D = f.shape[1]
    dx = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    df = torch.empty((B, D, H, W), dtype=f.dtype, device=f.device)
    if B * H * W == 0:
        return dx, df, torch.zeros_like(sigma)
    sig = sigma.to(lse.dtype)
    wide = needs_int64(x, f, grad_out)
    shared = _window_args(x, f, radius, key_mask, wide)
    delta = torch.empty_like(lse)
    dsig = torch.empty_like(lse)
    with _device_guard(x):
        launchable(DELTA)[_grid(B, H, W)](
            g=grad_out,
            out=out.contiguous(),
            delta=delta,
            H=H,
            W=W,
            C=C,
            **_strides("g", grad_out),
            BLOCK_C=_block(C),
            I64=wide,
            **DELTA_TILES,
        )
        # dsig[b, j] = sum_i dS(i, j) |s_i - s_j|^2: per-pixel partials, summed below in a fixed
        # order (no float atomics, so the backward is bitwise reproducible).
        launchable(BACKWARD)[_grid(B, H, W)](
            g=grad_out,
            x=x,
            f=f,
            sigma=sig,
            lse=lse.contiguous(),
            delta=delta,
            dx=dx,
            df=df,
            dsig=dsig,
            # whether f holds a non-finite value anywhere, found on the device (no host sync): the
            # kernel then takes its second pass (a check inside its key loop spilled registers)
            nonfinite_f=(~torch.isfinite(f)).any().to(torch.int32),
            **_strides("g", grad_out),
            **shared,
        )
    # 1 / sigma^3 clamped to the largest finite value, as in csrc/include/lam/math.h: where it
    # overflows, every distance weight and so the sum is 0, and the derivative 0, not 0 * inf.
    dsigma = dsig.sum() * (1 / (sig * sig * sig)).clamp(max=torch.finfo(sig.dtype).max)
    return dx, df, dsigma.to(sigma.dtype)


if _IMPORT_ERROR is None:
    triton_forward = triton_op("lam_ops::triton_forward", triton_forward, mutates_args=(), schema=_FORWARD_SCHEMA)
    triton_backward = triton_op("lam_ops::triton_backward", triton_backward, mutates_args=(), schema=_BACKWARD_SCHEMA)
    register_lam_op("lam_ops::triton_forward", torch.ops.lam_ops.triton_backward)
    register_backward_fake("lam_ops::triton_backward")
    register_first_order_only("lam_ops::triton_backward", {"cpu": "triton", "cuda": "triton"})


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
