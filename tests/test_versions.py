"""lam_ops/versions.py: an extension built for another torch is not loaded, and the import says
which torch it was built for, which one runs and how to rebuild, instead of an undefined-symbol
error or a crash. The mismatch is simulated by editing the build record of a copy of the package;
where the Makefile's second venv exists (LAM_OPS_OTHER_TORCH_PYTHON, set by `make test`) the real
case runs too: this venv's build imported under torch 2.11."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lam_ops import versions
from lam_ops.backends.extension import _IMPORT_ERROR

requires_build = pytest.mark.skipif(_IMPORT_ERROR is not None, reason=f"lam_ops._C is not built: {_IMPORT_ERROR}")
PROBE = "import lam_ops; print('backends:', lam_ops.available_backends('cpu'))"


def test_same_torch_loads():
    record = {"torch": torch.__version__, "torch_git": torch.version.git_version}
    assert versions.build_mismatch(record) is None
    assert versions.build_mismatch(None) is None  # no record: the load itself decides (next tests)


@pytest.mark.parametrize("built, git", [("2.99.0", None), (torch.__version__, "0" * 40)])
def test_other_torch_is_named_with_the_rebuild_command(built, git):
    why = versions.build_mismatch({"torch": built, "torch_git": git}, version="2.11.0", git="f" * 40)
    assert f"built for torch {built}" in why and "torch 2.11.0 is running" in why
    assert "pip install --no-build-isolation" in why


@requires_build
def test_build_record_is_this_torch():
    record = versions.read_build_record()
    assert record is not None, f"setup.py wrote no {versions.BUILD_RECORD}"
    assert record["torch"] == torch.__version__ and record["torch_git"] == torch.version.git_version


def _copy_package(tmp_path):
    shutil.copytree(versions.PACKAGE_DIR, tmp_path / "lam_ops", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "lam_ops"


def _import_copy(python, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    run = subprocess.run([python, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"import crashed (exit status {run.returncode}):\n{run.stderr[-3000:]}"
    assert "'cpp'" not in run.stdout, run.stdout
    return run.stderr


@requires_build
def test_extension_built_for_another_torch_is_not_loaded(tmp_path):
    package = _copy_package(tmp_path)
    record = json.loads((package / "_C.build.json").read_text())
    (package / "_C.build.json").write_text(json.dumps(dict(record, torch="2.99.0")))
    stderr = _import_copy(sys.executable, tmp_path)
    assert f"built for torch 2.99.0 but torch {torch.__version__} is running" in stderr
    assert "pip install --no-build-isolation -e ." not in stderr  # the copy is no source checkout
    assert "pip install --no-build-isolation --no-deps --force-reinstall" in stderr


@requires_build
def test_unloadable_extension_is_explained(tmp_path):
    """A load that fails (here: a corrupt file) is a warning naming the builds, not a traceback."""
    package = _copy_package(tmp_path)
    for so in package.glob("_C*.so"):
        so.write_bytes(b"not a shared object")
    stderr = _import_copy(sys.executable, tmp_path)
    assert "lam_ops._C could not be loaded" in stderr and f"torch {torch.__version__} is running" in stderr


OTHER_PYTHON = os.environ.get("LAM_OPS_OTHER_TORCH_PYTHON")


@requires_build
@pytest.mark.skipif(
    not OTHER_PYTHON, reason="LAM_OPS_OTHER_TORCH_PYTHON (a python with another torch; `make test` sets it) is unset"
)
def test_real_other_torch(tmp_path):
    """This venv's build under the other venv's torch: refused by the record, and without the
    record the real undefined-symbol error is translated."""
    other = subprocess.run(
        [OTHER_PYTHON, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other != torch.__version__
    package = _copy_package(tmp_path)
    assert f"built for torch {torch.__version__} but torch {other} is running" in _import_copy(OTHER_PYTHON, tmp_path)
    (package / "_C.build.json").unlink()
    stderr = _import_copy(OTHER_PYTHON, tmp_path)
    assert "lam_ops._C could not be loaded" in stderr and "no _C.build.json" in stderr, stderr
