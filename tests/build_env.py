"""What setup.py decides about the CUDA build, for the tests of the builds (importing setup.py
runs no build: its setup() call is guarded by __main__)."""

from __future__ import annotations

import importlib.util
import os

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
