"""Builds lam_ops._C: the C++ CPU kernels, plus the CUDA kernels when a CUDA toolkit is found.

Environment:
  LAM_OPS_CUDA=auto|0|1   build the CUDA kernels: when a toolkit is found (default), never, always.
  CUDA_HOME               the toolkit root; else /usr/local/cuda, else the root above a real `nvcc`.
  TORCH_CUDA_ARCH_LIST    defaults to "8.0;9.0+PTX" so that builds stay quick.
  LAM_OPS_NATIVE=1        add -march=native (off by default: wheels must run on other machines).

Next to the extension it writes _C.build.json: the torch it was built against and the compilers.
lam_ops/versions.py compares it with the running torch before loading the extension.
"""

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path):
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and bool(
            glob.glob(os.path.join(path, "lib*", "libcudart*"))
            or glob.glob(os.path.join(path, "targets", "*", "lib", "libcudart*"))
        )
    )


def find_cuda_home():
    """The CUDA toolkit root, or None.

    torch guesses the root as the parent of the first `nvcc` on PATH; where that nvcc is a wrapper
    script (here /usr/local/bin/nvcc) the guess has no libcudart and linking fails, so every
    candidate must hold both bin/nvcc and the runtime library.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((c for c in candidates if _is_toolkit_root(c)), None)


def cuda_mode():
    mode = os.environ.get("LAM_OPS_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"LAM_OPS_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def want_cuda(cuda_home):
    mode = cuda_mode()
    if mode == "0":
        print("lam_ops: LAM_OPS_CUDA=0, building the CPU kernels only")
        return False
    if cuda_home is None:
        if mode == "1":
            sys.exit("lam_ops: LAM_OPS_CUDA=1 but no CUDA toolkit found (set CUDA_HOME to the toolkit root)")
        print("lam_ops: no CUDA toolkit found (CUDA_HOME, /usr/local/cuda), building the CPU kernels only")
        return False
    return True


def extensions():
    cuda_home = find_cuda_home()
    with_cuda = want_cuda(cuda_home)
    if with_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The pair loops vectorise only with -fno-trapping-math (else GCC keeps their selects as
    # branches; the kernels read no floating-point exception flags, and PyTorch builds with it too)
    # and -fno-wrapv (Python's CFLAGS add -fwrapv, under which GCC cannot vectorise the loops'
    # int index arithmetic; nothing here relies on signed overflow wrapping).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-wrapv"]
    if os.environ.get("LAM_OPS_NATIVE") == "1":
        cxx.append("-march=native")
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if with_cuda:
        print(f"lam_ops: building the CUDA kernels with the toolkit at {cuda_home}")
        # *.cu: the kernels (nvcc); *.cpp: their ATen side (the host compiler: far quicker).
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        ext = CUDAExtension(
            "lam_ops._C",
            sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            **kwargs,
        )
    else:
        ext = CppExtension("lam_ops._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)

    class RecordingBuildExtension(BuildExtension):
        def run(self):
            super().run()
            # Where the extension went: the source tree for in-place and editable builds, else
            # build_lib (and from there into the wheel).
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_C.build.json")
            with open(path + ".tmp", "w") as fh:
                json.dump(build_record(cuda_home if with_cuda else None), fh, indent=1)
            os.replace(path + ".tmp", path)

    return [ext], {"build_ext": RecordingBuildExtension}


def _version_line(cmd, marker=""):
    """The first line of `cmd`'s output that holds `marker` (e.g. gcc's first, nvcc's "release")."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if marker in line and line.strip()), None)


def build_record(cuda_home):
    """What lam_ops/versions.py checks at import and `python -m lam_ops.info` prints."""
    import torch

    return {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "cxx": _version_line([os.environ.get("CXX", "c++"), "--version"]),
        "cuda_kernels": cuda_home is not None,
        "nvcc": _version_line([os.path.join(cuda_home, "bin", "nvcc"), "--version"], "release") if cuda_home else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda_home else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# Guarded so that tests can import find_cuda_home and cuda_mode (pip runs this file as __main__).
if __name__ == "__main__":
    ext_modules, cmdclass = extensions()
    setup(
        packages=find_packages(include=["lam_ops", "lam_ops.*", "blpseg", "blpseg.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
