"""The triton backend: tiled, fused LAM kernels for CUDA tensors (and CPU tensors under the
Triton interpreter, TRITON_INTERPRET=1). kernels.py holds the kernels, ops.py the operators and
the Backend."""

from .ops import TritonBackend

__all__ = ["TritonBackend"]
