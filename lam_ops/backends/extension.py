"""The C++ (`cpp`, CPU) and CUDA (`cuda`) backends: kernels of the lam_ops._C extension,
registered per dispatch key under one schema (csrc/ops.cpp)."""

from __future__ import annotations

import torch

# Importing lam_ops._C registers the operators; None, or why not (not built, or built for another
# torch: then a warning with the command that rebuilds it).
from ..versions import load_extension  # noqa: E402
from .autograd import register_backward_fake, register_first_order_only, register_lam_op
from .base import Backend

_IMPORT_ERROR = load_extension()

if _IMPORT_ERROR is None:
    register_lam_op("lam_ops::forward", torch.ops.lam_ops.backward)
    register_backward_fake("lam_ops::backward")
    register_first_order_only("lam_ops::backward", {"cpu": "cpp", "cuda": "cuda"})


# The operators of the extension's schema (csrc/ops.cpp); other lam_ops:: operators (triton) are
# defined in Python.
OPS = ("lam_ops::forward", "lam_ops::backward")

# Read once at import: torch.compile cannot trace the dispatcher query.
_HAS_KERNEL = {
    key: _IMPORT_ERROR is None and all(torch._C._dispatch_has_kernel_for_dispatch_key(op, key) for op in OPS)
    for key in ("CPU", "CUDA")
}


class _CompiledBackend(Backend):
    device_type = ""
    dispatch_key = ""
    dtypes: tuple = ()

    def unavailable(self, device):
        device = torch.device(device)
        if _IMPORT_ERROR is not None:
            if isinstance(_IMPORT_ERROR, ModuleNotFoundError):
                return f"the lam_ops._C extension is not built ({_IMPORT_ERROR}); run `pip install "
                "--no-build-isolation -e .`"
            return str(_IMPORT_ERROR)
        if device.type != self.device_type:
            return f"runs on {self.device_type} tensors, got {device.type}"
        if not _HAS_KERNEL[self.dispatch_key]:
            return f"lam_ops._C was built without {self.dispatch_key} kernels"
        return None

    def unsupported(self, x, f, sigma, radius, key_mask):
        why = self.unavailable(x.device)
        if why is None and x.dtype not in self.dtypes:
            why = f"supports x of dtype {', '.join(str(d) for d in self.dtypes)}, got {x.dtype}"
        return why

    def forward(self, x, f, sigma, radius, key_mask):
        return torch.ops.lam_ops.forward(x, f, sigma, radius, key_mask)


class CppBackend(_CompiledBackend):
    name = "cpp"
    device_type = "cpu"
    dispatch_key = "CPU"
    dtypes = (torch.float32, torch.float64)


class CudaBackend(_CompiledBackend):
    name = "cuda"
    device_type = "cuda"
    dispatch_key = "CUDA"
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def unavailable(self, device):
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return super().unavailable(device)
