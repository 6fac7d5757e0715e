"""local_aggregate: argument validation, backend choice, and the call into the backend."""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import Tensor

from .backends import BACKENDS

BACKEND_NAMES = ("auto",) + tuple(BACKENDS)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device`, fastest first."""
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.unavailable(device) is None]


# The largest radius: the operators take it as a 64-bit int. Any radius of at least the image's
# side already gives the whole image, as None does.
MAX_RADIUS = 2**63 - 1


def check_radius(radius) -> None:
    """radius: an int >= 0 or None (a bool is not a radius, though Python counts it an int)."""
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"radius must be an int >= 0 or None, got {radius!r}")
    if radius is not None and radius > MAX_RADIUS:
        raise ValueError(f"radius must be at most 2**63 - 1 (None for the whole image), got {radius}")


def check_sigma_value(sigma) -> None:
    """sigma given as a Python number: finite and > 0, checked on the host (it is already there)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"sigma must be a float or a 0-dim floating tensor, got {type(sigma).__name__}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")


def check_backend_name(name) -> None:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")


def _validate(x, f, sigma, radius, key_mask) -> Tensor:
    """Checks every argument against the contract (docs/operator.md) and returns sigma as a 0-dim tensor.

    Nothing here reads a tensor's value on the host (a GPU sync, and a graph break under
    torch.compile): a sigma tensor is checked on its device by an asynchronous assert, which raises
    at once on the CPU and at the next synchronisation on a GPU, in eager mode and compiled alike."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (B, C, H, W) tensor, got {_describe(x)}")
    if not isinstance(f, Tensor) or f.dim() != 4 or not f.is_floating_point():
        raise ValueError(f"f must be a floating (B, D, H, W) tensor, got {_describe(f)}")
    if f.device != x.device:
        raise ValueError(f"f must be on x's device {x.device}, got {f.device}")
    if f.dtype != x.dtype:
        raise ValueError(f"f must have x's dtype {x.dtype}, got {f.dtype}")
    B, _, H, W = x.shape
    if f.shape[0] != B or f.shape[2:] != x.shape[2:]:
        raise ValueError(f"f must be (B, D, H, W) = ({B}, D, {H}, {W}) like x, got {tuple(f.shape)}")
    check_radius(radius)
    if key_mask is not None:
        if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be a bool tensor, got {_describe(key_mask)}")
        if tuple(key_mask.shape) != (B, H, W):
            raise ValueError(f"key_mask must be (B, H, W) = ({B}, {H}, {W}), got {tuple(key_mask.shape)}")
        if key_mask.device != x.device:
            raise ValueError(f"key_mask must be on x's device {x.device}, got {key_mask.device}")
    if isinstance(sigma, Tensor):
        if sigma.dim() != 0 or not sigma.is_floating_point():
            raise ValueError(f"sigma must be a float or a 0-dim floating tensor, got {_describe(sigma)}")
        if sigma.device != x.device:
            raise ValueError(f"sigma must be on x's device {x.device}, got {sigma.device}")
        s = sigma.detach()
        torch._assert_async(torch.isfinite(s) & (s > 0), SIGMA_ERROR)
        return sigma
    check_sigma_value(sigma)
    # torch.full fills on the device (a kernel launch with the value as its argument), where
    # torch.tensor(value, device=...) would copy from the host and wait for it.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((), float(sigma), dtype=dtype, device=x.device)


# The device-side check's message (a RuntimeError; a Python-number sigma gets a ValueError).
SIGMA_ERROR = "lam_ops: sigma must be finite and > 0"


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


# backend="auto" warns when it falls back to `reference` on an input whose dense B x HW x HW logits
# reach this many entries (64 MiB in float32, and autograd keeps several such tensors): below it
# the reference is cheap enough to be a sensible fallback (tests, small crops).
DENSE_WARN_ENTRIES = 1 << 24

HALF_DTYPES = (torch.float16, torch.bfloat16)  # computed in float32 where a device has no half kernels
_logger = logging.getLogger("lam_ops")
_auto_choices_logged: set = set()


def _auto(x: Tensor, f: Tensor, sigma: Tensor, radius, key_mask):
    """(backend, x, f to compute with): the first fused backend of BACKENDS (fastest first) that runs
    the input, else the dense reference, which runs every input. Half inputs on a device without
    half kernels (the CPU) are computed in float32 by a fused kernel rather than by the reference
    (which computes them in float32 itself)."""
    fused = [b for b in BACKENDS.values() if b.name != "reference" and b.picked_by_auto(x.device)]
    for xc, fc in [(x, f)] + ([(x.float(), f.float())] if x.dtype in HALF_DTYPES else []):
        for backend in fused:
            if backend.unsupported(xc, fc, sigma, radius, key_mask) is None:
                return backend, xc, fc
    return BACKENDS["reference"], x, f


def _report_auto_choice(backend, dtype: torch.dtype, x, f, sigma, radius, key_mask) -> None:
    """Says what backend="auto" chose: a debug line per first (device, input dtype, backend), and a
    warning when the dense reference runs an input large enough for its (HW)^2 cost to matter."""
    key = (x.device, x.dtype, backend.name, dtype)
    if key not in _auto_choices_logged:
        _auto_choices_logged.add(key)
        _logger.debug(
            "backend='auto' chose %r for %s inputs on %s, computing in %s", backend.name, x.dtype, x.device, dtype
        )
    B, _, H, W = x.shape
    if backend.name == "reference" and B * (H * W) ** 2 >= DENSE_WARN_ENTRIES:
        fused = [b for b in BACKENDS.values() if b.name != "reference"]
        why = "; ".join(f"{b.name}: {b.unsupported(x, f, sigma, radius, key_mask)}" for b in fused)
        warnings.warn(
            f"lam_ops: backend='auto' fell back to the dense 'reference' backend for a {tuple(x.shape)} "
            f"{x.dtype} input "
            f"on {x.device}: it stores B x HW x HW = {B * (H * W) ** 2:,} logits. No fused backend runs it ({why}).",
            stacklevel=4,
        )


def select_backend(name: str, x: Tensor, f: Tensor, sigma: Tensor, radius, key_mask):
    """The backend that runs an already validated input."""
    return _select(name, x, f, sigma, radius, key_mask)[0]


def _select(name: str, x: Tensor, f: Tensor, sigma: Tensor, radius, key_mask):
    """(backend, x, f to compute with) for an already validated input."""
    if name == "auto":
        backend, xc, fc = _auto(x, f, sigma, radius, key_mask)
        if not torch.compiler.is_compiling():  # traced once; logging state is not graph material
            _report_auto_choice(backend, xc.dtype, x, f, sigma, radius, key_mask)
        return backend, xc, fc
    check_backend_name(name)
    backend = BACKENDS[name]
    why = backend.unsupported(x, f, sigma, radius, key_mask)
    if why is not None:
        raise RuntimeError(f"backend {name!r} cannot run this input: {why}")
    return backend, x, f


def local_aggregate_with_lse(x, f, sigma, radius=None, key_mask=None, backend="auto") -> tuple[Tensor, Tensor]:
    """local_aggregate that also returns the per-query log-sum-exp, (B, H, W), float32 (float64
    for float64 inputs)."""
    sigma = _validate(x, f, sigma, radius, key_mask)
    chosen, xc, fc = _select(backend, x, f, sigma, radius, key_mask)
    out, lse = chosen.forward(xc, fc, sigma, radius, key_mask)
    return (out, lse) if xc is x else (out.to(x.dtype), lse)


def local_aggregate(
    x: Tensor,
    f: Tensor,
    sigma: float | Tensor,
    radius: int | None = None,
    key_mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Local Aggregation (BLPSeg's LAM): for every pixel j,

        out_j = sum_{i in window(j), key_mask[i]} softmax_i(f_i . f_j - |s_i - s_j|^2 / (2 sigma^2)) x_i

    x: (B, C, H, W) values; f: (B, D, H, W) guidance features (same dtype and device); sigma: float
    or 0-dim tensor (> 0; a gradient flows into a tensor that requires grad); radius: the square
    window's half size, None for the whole image; key_mask: optional bool (B, H, W), the pixels that
    may be aggregated from. backend: "auto" (the fastest that runs the input), "reference", "cpp",
    "cuda" or "triton"; "auto" computes half inputs on the CPU in float32 with the fused kernel,
    logs its choice (logger "lam_ops", debug) and warns when it falls back to the dense reference
    on a large input. See docs/operator.md for the full contract.
    """
    return local_aggregate_with_lse(x, f, sigma, radius, key_mask, backend)[0]
