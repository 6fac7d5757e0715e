"""local_aggregate: argument validation, backend choice, and the call into the backend."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .backends import BACKENDS

BACKEND_NAMES = ("auto",) + tuple(BACKENDS)


def available_backends(device: Union[str, torch.device] = "cpu") -> list[str]:
    """The backends that can run on `device`, fastest first."""
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.unavailable(device) is None]


def _validate(x, f, sigma, radius, key_mask) -> Tensor:
    """Checks every argument against the contract (LAM_SPEC.md) and returns sigma as a 0-dim tensor."""
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
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"radius must be an int >= 0 or None, got {radius!r}")
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
        # Reading the value syncs a GPU and cannot be traced: skip it inside torch.compile.
        if not torch.compiler.is_compiling():
            _check_sigma_value(float(sigma.detach()))
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"sigma must be a float or a 0-dim floating tensor, got {type(sigma).__name__}")
    _check_sigma_value(float(sigma))
    return torch.tensor(float(sigma), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)


def _check_sigma_value(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma must be finite and > 0, got {value}")


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def select_backend(name: str, x: Tensor, f: Tensor, sigma: Tensor, radius, key_mask):
    if name == "auto":
        for backend in BACKENDS.values():
            if backend.picked_by_auto(x.device) and backend.unsupported(x, f, sigma, radius, key_mask) is None:
                return backend
        raise AssertionError("unreachable: the reference backend runs every input")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    backend = BACKENDS[name]
    why = backend.unsupported(x, f, sigma, radius, key_mask)
    if why is not None:
        raise RuntimeError(f"backend {name!r} cannot run this input: {why}")
    return backend


def local_aggregate_with_lse(x, f, sigma, radius=None, key_mask=None, backend="auto") -> tuple[Tensor, Tensor]:
    """local_aggregate that also returns the per-query log-sum-exp, (B, H, W), float32 (float64
    for float64 inputs)."""
    sigma = _validate(x, f, sigma, radius, key_mask)
    return select_backend(backend, x, f, sigma, radius, key_mask).forward(x, f, sigma, radius, key_mask)


def local_aggregate(
    x: Tensor,
    f: Tensor,
    sigma: Union[float, Tensor],
    radius: Optional[int] = None,
    key_mask: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """Local Aggregation (BLPSeg's LAM): for every pixel j,

        out_j = sum_{i in window(j), key_mask[i]} softmax_i(f_i . f_j - |s_i - s_j|^2 / (2 sigma^2)) x_i

    x: (B, C, H, W) values; f: (B, D, H, W) guidance features (same dtype and device); sigma: float
    or 0-dim tensor (> 0; a gradient flows into a tensor that requires grad); radius: the square
    window's half size, None for the whole image; key_mask: optional bool (B, H, W), the pixels that
    may be aggregated from. backend: "auto" (the fastest that runs the input), "reference", "cpp",
    "cuda" or "triton". See LAM_SPEC.md for the full contract.
    """
    return local_aggregate_with_lse(x, f, sigma, radius, key_mask, backend)[0]
