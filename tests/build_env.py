"""What setup.py decides about the CUDA build, for the tests of the builds (importing setup.py
runs no build: its setup() call is guarded by __main__)."""

from __future__ import annotations

import importlib.util
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_module():
    spec = importlib.util.spec_from_file_location("lam_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_toolkit() -> str | None:
    """The CUDA toolkit root that setup.py and CMakeLists.txt build with, or None."""
    return _setup_module().find_cuda_home()


def cuda_mode() -> str:
    """LAM_OPS_CUDA as setup.py reads it: auto, 0 or 1."""
    return _setup_module().cuda_mode()


def cmake_unavailable() -> str | None:
    """Why the CMake build (CMakeLists.txt) cannot run here, or None."""
    import shutil

    import torch

    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if torch.version.cuda and cuda_toolkit() is None:
        return "libtorch's CMake config needs a CUDA toolkit for this CUDA build of torch, and none was found"
    return None


def run_checked(cmd, cwd=None) -> str:
    """Runs a build or test command; its stdout, or a failure showing the end of its output."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )
    return result.stdout
