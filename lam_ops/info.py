"""What this install of lam_ops can do: versions, the build, and which backends run on which device
(and why not where not, in the backends' own words).

    python -m lam_ops.info            # a report for people
    python -m lam_ops.info --json     # the same as JSON
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
from importlib import metadata

import torch

from . import versions
from .backends import BACKENDS
from .backends.extension import _IMPORT_ERROR as EXTENSION_ERROR


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _package_version() -> str | None:
    try:
        return metadata.version("blpseg")
    except metadata.PackageNotFoundError:  # a source checkout on PYTHONPATH
        return None


def devices() -> list[str]:
    """cpu, and every CUDA device (or "cuda" alone, to say why nothing runs there)."""
    if torch.cuda.is_available():
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu", "cuda"]


def collect() -> dict:
    gpus = (
        [
            {
                "device": f"cuda:{i}",
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            }
            for i in range(torch.cuda.device_count())
        ]
        if torch.cuda.is_available()
        else []
    )
    return {
        "versions": {
            "lam_ops (blpseg)": _package_version() or "not installed (source checkout)",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch supported": versions.TORCH_RANGE + " (tested: " + ", ".join(versions.TESTED_TORCH) + ")",
            "torch CUDA runtime": torch.version.cuda or "none (a CPU build of torch)",
            "triton": _triton_version() or "not installed",
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "unset"),
        },
        "extension": {
            "file": next(iter(glob.glob(os.path.join(versions.PACKAGE_DIR, "_C*.so"))), None),
            "loaded": EXTENSION_ERROR is None,
            "error": None if EXTENSION_ERROR is None else str(EXTENSION_ERROR),
            "build": versions.read_build_record(),
        },
        "gpus": gpus,
        "backends": {name: {d: b.unavailable(d) for d in devices()} for name, b in BACKENDS.items()},
    }


def render(info: dict) -> str:
    lines = ["lam_ops install report", ""]
    width = max(map(len, info["versions"]))
    lines += [f"  {k:<{width}}  {v}" for k, v in info["versions"].items()]
    ext = info["extension"]
    lines += ["", f"extension lam_ops._C: {ext['file'] or 'not built'}" + ("" if ext["loaded"] else "  (NOT LOADED)")]
    if ext["error"]:
        lines.append(f"  {ext['error']}")
    build = ext["build"]
    if build:
        lines.append(
            f"  built {build.get('date')} against torch {build.get('torch')} (CUDA {build.get('torch_cuda')}), "
            f"python {build.get('python')}"
        )
        lines.append(f"  C++ compiler: {build.get('cxx')}")
        if build.get("cuda_kernels"):
            lines.append(
                f"  CUDA kernels: nvcc {build.get('nvcc')}, TORCH_CUDA_ARCH_LIST={build.get('cuda_arch_list')}"
            )
        else:
            lines.append("  CUDA kernels: not built (no toolkit found, or LAM_OPS_CUDA=0)")
    elif ext["file"]:
        lines.append("  no build record (_C.build.json): built before lam_ops recorded its builds")
    lines += [
        "",
        "GPUs: "
        + (
            ", ".join(f"{g['device']} {g['name']} (sm_{g['capability'].replace('.', '')})" for g in info["gpus"])
            or "none"
        ),
    ]
    lines += ["", "backends (usable, or why not):"]
    for name, per_device in info["backends"].items():
        for device, why in per_device.items():
            lines.append(f"  {name:<10} {device:<7} {'usable' if why is None else 'no: ' + why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lam_ops.info", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of the report")
    args = p.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
