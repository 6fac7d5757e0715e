"""One benchmark row in a child process under a memory limit: a row that runs out of memory,
crashes or hangs becomes a row that says so, instead of a run lost to the kernel's OOM killer (or
a shared machine pushed into swap). Memory estimates can only skip what they foresee; the limit
catches the rest (e.g. an implementation that falls back to an unfused path).

The child is the benchmark script itself, called with the parent's arguments plus
`--mem-budget-gb GB --row SPEC`; it prints the row's JSON as its last line of standard output.

A failed row is told out of memory from an error by what it needed, never by its message: which
allocation fails first under the limit, and how that is reported, varies from machine to machine
(torch's allocator, a thread's stack, oneDNN's scratchpad: "can't allocate memory", "Resource
temporarily unavailable", "could not create a primitive", ...). A row that fails under the budget
runs once more under the memory available then (never more: no swap). It was out of memory if that
run went past the budget (its peak, whether it then passed or failed, is over the budget) or ran
out of the larger limit too; otherwise the first failure is an error. Only the exception types
torch.OutOfMemoryError and MemoryError say "out of memory" by themselves."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import measure
import torch

# the child's address space when its limit was set (size and peak, KiB)
_start: dict[str, int] = {}


def limit_memory(budget_gb: float, device: torch.device) -> None:
    """Caps this process's memory at the budget: an allocation past it fails (torch raises) instead
    of reaching the OOM killer. CPU: the address space it maps now plus the budget. CUDA: torch's
    caching allocator (CUDA maps far more address space than it uses)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * 2**30 / total), device)
        return
    _start.update(size=measure._status_kb("VmSize") or 0, peak=measure._status_kb("VmPeak") or 0)
    limit = _start["size"] * 1024 + int(budget_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def budget_used_gb(device: torch.device) -> float:
    """The peak, since limit_memory, of what the limit limits: the caching allocator's reserved
    memory on CUDA, the address space beyond the start on the CPU. A lower bound on the CPU: 0 while
    the process's peak is still one from before the limit (imports), which the row did not make."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**30
    peak = measure._status_kb("VmPeak") or 0
    return max(0, peak - _start["size"]) / 2**20 if peak > _start["peak"] else 0.0


def failure(e: BaseException, device: torch.device) -> dict:
    """The row for an exception raised while measuring it (in the child): an error until the parent
    decides otherwise, out of memory only by the exception's type."""
    what = "out of memory" if isinstance(e, (torch.OutOfMemoryError, MemoryError)) else "error"
    first_line = str(e).splitlines()[0][:200] if str(e) else ""
    return {"status": f"{what}: {type(e).__name__}: {first_line}", "budget_used_gb": budget_used_gb(device)}


def _run_once(script: str, argv: list[str], spec: str, timeout: float, budget_gb: float) -> dict:
    cmd = [sys.executable, script, *argv, "--mem-budget-gb", str(budget_gb), "--row", spec]
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
    return {"status": f"error: exit code {proc.returncode}: {tail}"}


def failed(row: dict) -> bool:
    return row["status"].startswith(("error", "crashed"))


def decide(first: dict, again: dict | None, budget_gb: float, cap_gb: float) -> dict:
    """The row of a run that failed under the budget (`first`), given its rerun under `cap_gb`
    (None: not rerun, there being no more memory to give it)."""
    if again is None:
        return first
    used = again.get("budget_used_gb")
    if again["status"].startswith("out of memory"):
        need = f"more than {cap_gb:g} GB"
    elif used is not None and used > budget_gb:
        need = f"{'' if again['status'] == 'ok' else 'more than '}{used:.3g} GB"
    else:  # the rerun stayed within the budget: the budget did not make the first run fail
        return {**first, "status": f"{first['status']} (a rerun under {cap_gb:g} GB: {again['status']})"}
    return {
        "status": f"out of memory: needs {need} > budget {budget_gb:g} GB (a rerun under {cap_gb:g} GB: "
        f"{again['status'].split(':')[0]}); under the budget: {first['status']}"
    }


def run_child(script: str, argv: list[str], spec: str, timeout: float, budget_gb: float, device: torch.device) -> dict:
    """Runs `script argv --mem-budget-gb budget_gb --row spec` and returns the row it printed, or a
    row saying why there is none; a failure is rerun once under more memory to name its cause."""
    first = _run_once(script, argv, spec, timeout, budget_gb)
    if not failed(first):
        return first
    cap_gb = rerun_cap_gb(device)
    again = _run_once(script, argv, spec, timeout, cap_gb) if cap_gb > budget_gb else None
    return decide(first, again, budget_gb, cap_gb)


def _meminfo_gb(field: str) -> float:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 2**20


def mem_total_gb() -> float:
    return _meminfo_gb("MemTotal")


def rerun_cap_gb(device: torch.device) -> float:
    """The memory a failed row's rerun gets: 90% of what is available now, the whole GPU on CUDA."""
    if device.type == "cuda":
        return round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return round(0.9 * _meminfo_gb("MemAvailable"), 1)


def default_budget_gb(device: torch.device) -> float:
    """70% of the memory available now (the machine may be shared); on CUDA 90% of the GPU's."""
    if device.type == "cuda":
        return round(0.9 * torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return round(0.7 * _meminfo_gb("MemAvailable"), 1)
