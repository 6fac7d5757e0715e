"""The backends, in the order `backend="auto"` tries them (fastest first)."""

from __future__ import annotations

from .base import Backend
from .extension import CppBackend, CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

BACKENDS: dict[str, Backend] = {b.name: b for b in (TritonBackend(), CudaBackend(), CppBackend(), ReferenceBackend())}

__all__ = ["Backend", "BACKENDS"]
