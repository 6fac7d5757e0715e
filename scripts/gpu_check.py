#!/usr/bin/env python3
"""The one-shot GPU check (`make gpu-check`, `bash scripts/gpu_check.sh [OUT_DIR]`) for a GPU
machine with only its own python3 (torch, triton, nvcc, pytest; pytest-xdist used when there), no
network and no venv. Nothing is installed: it

  1. stops at once, saying what is missing, where there is no GPU, nvcc or pytest;
  2. builds lam_ops._C in place for the present GPUs' architectures only (setup.py build_ext);
  3. prints `python -m lam_ops.info` and runs `python -m lam_ops.check --device cuda`;
  4. runs the CUDA and Triton tests (against reference and cpp on the same inputs, gradcheck, half
     precision, determinism across processes, opcheck) and the operator's other tests on the GPU;
  5. runs benchmarks/bench_gpu.py in one process with what is left of the time budget.

Results: at most 8 files in OUT_DIR (default $OUT, else ./gpu_check_results): gpu_check.json and
gpu_check.md (the summary), build.log, check.log, tests.log, bench.log (progress),
bench_gpu.json, bench_gpu.md.
Exit status 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests of the GPU code (those present: test_lam_edge_cases.py comes from another branch);
# the interpreter subprocess of test_triton.py runs in CPU CI already.
GPU_TESTS = [
    t
    for t in (
        "tests/test_cuda.py",
        "tests/test_triton.py",
        "tests/test_functional.py",
        "tests/test_modules.py",
        "tests/test_lam_edge_cases.py",
    )
    if (ROOT / t).is_file()
]
DESELECT = ["tests/test_triton.py::test_interpreter_subprocess"]


def arch_list(capabilities: list[tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST for exactly these GPUs, e.g. [(9, 0)] -> "9.0"."""
    if not capabilities:
        raise ValueError("no GPU capabilities given")
    return ";".join(f"{major}.{minor}" for major, minor in sorted(set(capabilities)))


def missing_requirements() -> list[str]:
    """What this machine lacks for the check; empty when it can run."""
    missing = []
    try:
        import torch
    except ImportError as e:  # most often the system's python3, where the project's venv has torch
        return [
            f"torch cannot be imported by {sys.executable} ({e}): run the check with a python that has it, "
            "e.g. the project's venv: make gpu-check PYTHON=.venv/bin/python"
        ]
    if not torch.cuda.is_available():
        missing.append(
            f"a CUDA GPU (torch {torch.__version__}, CUDA runtime {torch.version.cuda}: "
            f"torch.cuda.is_available() is False)"
        )
    spec = importlib.util.spec_from_file_location("lam_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    if setup.find_cuda_home() is None:
        missing.append("a CUDA toolkit with nvcc (CUDA_HOME, /usr/local/cuda, or nvcc on PATH) to build the kernels")
    for module in ("pytest", "triton"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python package {module}")
    return missing


class Steps:
    """Runs the steps, logs each one's command, time and outcome, and writes the summary."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.start = out, budget, time.monotonic()
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run(self, name: str, cmd: list[str], log: str, timeout: float, env: dict | None = None) -> bool:
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        with open(self.out / log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            try:
                rc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    env={**os.environ, **(env or {})},
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=max(1.0, timeout),
                ).returncode
                status = "ok" if rc == 0 else f"failed (exit status {rc})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout:.0f} s"
        step = {
            "step": name,
            "command": " ".join(cmd),
            "status": status,
            "seconds": round(time.monotonic() - t0, 1),
            "log": log,
        }
        self.steps.append(step)
        print(f"   {status} in {step['seconds']} s (log: {self.out / log})", flush=True)
        tail = (self.out / log).read_text(errors="replace").strip().splitlines()[-3:]
        print("\n".join(f"   | {line}" for line in tail), flush=True)
        return status == "ok"

    def summary(self, facts: dict) -> bool:
        ok = bool(self.steps) and all(s["status"] == "ok" for s in self.steps)
        data = {**facts, "passed": ok, "seconds": round(time.monotonic() - self.start, 1), "steps": self.steps}
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1))
        lines = [
            "# make gpu-check",
            "",
            *[f"- {k}: {v}" for k, v in facts.items()],
            f"- total: {data['seconds']} s; passed: {ok}",
            "",
            "| step | status | seconds | log |",
            "|---|---|---|---|",
        ]
        lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['log']} |" for s in self.steps]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        print(f"{'PASSED' if ok else 'FAILED'}: summary in {self.out}/gpu_check.md", flush=True)
        return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "out",
        nargs="?",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "gpu_check_results"),
        help="results folder",
    )
    p.add_argument(
        "--budget", type=float, default=450.0, help="seconds for everything (the benchmark gets what is left)"
    )
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="build jobs and pytest-xdist workers")
    args = p.parse_args(argv)

    missing = missing_requirements()
    if missing:
        print("gpu-check cannot run here; missing:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        return 2
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    arch = arch_list(caps)
    facts = {
        "gpus": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())),
        "TORCH_CUDA_ARCH_LIST": arch,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    print(f"gpu-check: {facts}", flush=True)
    steps, py = Steps(args.out, args.budget), sys.executable
    build_env = {"LAM_OPS_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(args.jobs)}
    if steps.run("build", [py, "setup.py", "build_ext", "--inplace"], "build.log", steps.left() - 180, build_env):
        steps.run("info", [py, "-m", "lam_ops.info"], "check.log", 60)
        steps.run("check", [py, "-m", "lam_ops.check", "--device", "cuda"], "check.log", min(120, steps.left() - 200))
        xdist = ["-n", str(args.jobs)] if importlib.util.find_spec("xdist") else []
        deselect = [a for d in DESELECT for a in ("--deselect", d)]
        steps.run(
            "tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, *deselect, *GPU_TESTS],
            "tests.log",
            steps.left() - 120,
            {"LAM_OPS_CUDA": "1"},
        )
        # Rows start until the benchmark's budget is spent; a row under way may take a minute more
        # (it writes its rows as it goes, should the timeout stop it).
        bench_budget = max(30.0, steps.left() - 90)
        steps.run(
            "benchmark",
            [py, "benchmarks/bench_gpu.py", "--out", str(args.out), "--time-budget", str(int(bench_budget))],
            "bench.log",
            max(60.0, steps.left() - 10),
        )
    return 0 if steps.summary(facts) else 1


if __name__ == "__main__":
    sys.exit(main())
