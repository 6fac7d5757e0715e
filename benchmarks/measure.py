"""Timing, peak memory and machine facts for the benchmarks.

Peak memory of a call is the extra memory it needs above what existed before it (inputs are not
counted; outputs, saved tensors and gradients are):
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the allocated
  bytes before the call.
- CPU, `torch_mb`: the high-water mark of torch's CPU allocator, replayed from the allocation and
  free events that torch.profiler(profile_memory=True) records for every tensor (exact for tensors;
  blind to memory a kernel takes with malloc/new outside torch).
- CPU, `rss_mb`: the process's resident-set high-water mark (VmHWM, reset through
  /proc/self/clear_refs) minus the resident set before the call, after returning freed heap to the
  OS (malloc_trim). It sees everything, kernel scratch included, but it is page-granular and can
  read low when the call reuses memory that was already resident; None where the kernel does not
  allow resetting it.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Sets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_peak_mb(fn: Callable[[], object]) -> float | None:
    """Resident-set growth (MB) at the peak of fn(), or None where it cannot be measured."""
    _release_free_memory()
    before = _status_kb("VmRSS")
    if before is None or not _reset_rss_peak():
        return None
    fn()
    peak = _status_kb("VmHWM")
    return None if peak is None else max(0, peak - before) / 1024


def allocator_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak extra memory (MB) held by torch's allocator during fn()."""
    _release_free_memory()
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate (n x n x n, median of `repeats`), the roofline's ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    times = [time_call(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times) / 1e9


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
