"""The versions lam_ops supports, and the one place where they matter: loading the compiled
extension lam_ops._C, which only works with the torch it was built against (its C++ ABI).

setup.py records that torch in _C.build.json next to the extension. Before loading, the record is
compared with the running torch: a mismatch (e.g. an isolated `pip install` that built against a
newer torch than the venv's) is a warning that says both versions and the command to rebuild,
never an undefined-symbol error or a crash; the backends of the extension then say the same when
asked (xformers handles an extension built for another torch the same way). A failed load without
a mismatch (no record: built before records existed; a missing library) is translated likewise.

Version-specific code of lam_ops goes here too, each piece named for the versions it serves.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings

import torch

# The supported range (pyproject.toml's) and the pin of the Makefile's venv, the tested ends.
TORCH_RANGE = ">=2.11,<2.16"
TESTED_TORCH = ("2.11.0", "2.14.1")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_RECORD = os.path.join(PACKAGE_DIR, "_C.build.json")


def read_build_record(path: str = BUILD_RECORD) -> dict | None:
    """What setup.py recorded about the build, or None where there is no (readable) record."""
    try:
        with open(path) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def rebuild_command() -> str:
    """The command that rebuilds the extension against the running torch."""
    source = os.path.dirname(PACKAGE_DIR)
    if os.path.isfile(os.path.join(source, "setup.py")):  # a source checkout (editable install)
        return f"cd {source} && {sys.executable} -m pip install --no-build-isolation -e ."
    return f"{sys.executable} -m pip install --no-build-isolation --no-deps --force-reinstall blpseg"


def build_mismatch(
    record: dict | None, version: str = torch.__version__, git: str | None = torch.version.git_version
) -> str | None:
    """Why an extension built as `record` says must not be loaded into torch `version`, or None."""
    if record is None:
        return None
    built, built_git = record.get("torch"), record.get("torch_git")
    if built == version and (built_git is None or git is None or built_git == git):
        return None
    same = " (another build of that version)" if built == version else ""
    return (
        f"lam_ops._C was built for torch {built}{same} but torch {version} is running: its C++ kernels "
        f"(backends cpp, cuda) are disabled. Rebuild it against this torch: {rebuild_command()}"
    )


def load_extension(module: str = "lam_ops._C", record_path: str = BUILD_RECORD) -> ImportError | None:
    """Imports the extension (which registers its operators) unless its record says it was built
    for another torch. Returns None once loaded, else the reason as an ImportError, after a
    warning where the extension exists but cannot be used."""
    record = read_build_record(record_path)
    why = build_mismatch(record)
    if why is None:
        try:
            importlib.import_module(module)
            return None
        except ModuleNotFoundError as e:
            if e.name == module:  # a source checkout that was not built: the backends say so
                return e
            why = f"lam_ops._C could not be loaded: {e}"
        except (ImportError, OSError) as e:  # undefined symbols, a missing library, a bad file
            built = f"torch {record['torch']}" if record else "an unknown torch (no _C.build.json)"
            why = (
                f"lam_ops._C could not be loaded ({str(e).splitlines()[0]}); it was built for {built}, "
                f"torch {torch.__version__} is running. Rebuild it: {rebuild_command()}"
            )
    warnings.warn(why, stacklevel=2)
    return ImportError(why)
