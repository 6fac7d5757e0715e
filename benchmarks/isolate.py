"""One benchmark row in a child process under a memory limit: a row that runs out of memory,
crashes or hangs becomes a row that says so, instead of a run lost to the kernel's OOM killer (or
a shared machine pushed into swap). Memory estimates can only skip what they foresee; the limit
catches the rest (e.g. an implementation that falls back to an unfused path).

The child is the benchmark script itself, called with the parent's arguments plus `--row SPEC`; it
prints the row's JSON as its last line of standard output."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import measure
import torch

# torch's allocator, Python's, OpenMP's threads (their stacks) or oneDNN over the address-space
# limit. oneDNN's message names no cause, but under the limit a convolution that runs without it
# fails for want of memory (its scratchpad): which allocation fails first varies from run to run.
_OOM_MESSAGES = (
    "MemoryError",
    "can't allocate",
    "Thread creation failed",
    "out of memory",
    "could not create a primitive",
)


def limit_memory(budget_gb: float, device: torch.device) -> None:
    """Caps this process's memory at the budget: an allocation past it fails (torch raises) instead
    of reaching the OOM killer. CPU: the address space it maps now plus the budget. CUDA: torch's
    caching allocator (CUDA maps far more address space than it uses)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * 2**30 / total), device)
        return
    mapped_kb = measure._status_kb("VmSize") or 0
    limit = mapped_kb * 1024 + int(budget_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or any(s in str(e) for s in _OOM_MESSAGES)


def failure_status(e: BaseException) -> str:
    """A row's status for an exception raised while measuring it."""
    what = "out of memory" if is_oom(e) else f"error: {type(e).__name__}"
    return f"{what}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def run_child(script: str, argv: list[str], spec: str, timeout: float) -> dict:
    """Runs `script argv --row spec` and returns the row it printed, or a row saying why there is none."""
    cmd = [sys.executable, script, *argv, "--row", spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out: over {timeout:g} s (--row-timeout)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    if proc.returncode < 0:
        return {"status": f"crashed: signal {-proc.returncode} {tail}".strip()}
    what = "out of memory" if any(s in proc.stderr for s in _OOM_MESSAGES) else "error"
    return {"status": f"{what}: exit code {proc.returncode}: {tail}"}


def _meminfo_gb(field: str) -> float:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 2**20


def mem_total_gb() -> float:
    return _meminfo_gb("MemTotal")


def default_budget_gb(device: torch.device) -> float:
    """70% of the memory available now (the machine may be shared); on CUDA 90% of the GPU's."""
    if device.type == "cuda":
        return round(0.9 * torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return round(0.7 * _meminfo_gb("MemAvailable"), 1)
