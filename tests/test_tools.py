"""The user's tools (python -m lam_ops.info, python -m lam_ops.check) and what `make gpu-check`
can show without a GPU: its stop where no GPU exists, its choice of architectures, and its
benchmark's code path on CPU at tiny shapes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lam_ops
from lam_ops import check, info
from lam_ops.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
requires_cpp = pytest.mark.skipif("cpp" not in lam_ops.available_backends("cpu"), reason="lam_ops._C is not built")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_info_names_every_backend_and_device(capsys):
    assert info.main([]) == 0
    text = capsys.readouterr().out
    assert f"torch               {torch.__version__}" in text
    for name, backend in BACKENDS.items():
        for device in info.devices():
            why = backend.unavailable(device)
            assert f"{name:<10} {device:<7} {'usable' if why is None else 'no: ' + why}" in text


def test_info_json_and_help(capsys):
    assert info.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["torch"] == torch.__version__
    assert data["backends"]["reference"]["cpu"] is None
    assert data["extension"]["loaded"] == ("cpp" in lam_ops.available_backends("cpu"))
    with pytest.raises(SystemExit) as e:
        info.main(["--help"])
    assert e.value.code == 0


@requires_cpp
def test_check_passes_on_cpu(capsys):
    assert check.main(["--device", "cpu", "--backends", "cpp"]) == 0
    text = capsys.readouterr().out
    assert "cpp        vs reference float32     ok" in text and "cpp        gradcheck                ok" in text
    assert "cpp        vs reference float16     n/a" in text  # said, not passed
    assert "all 3 checks passed" in text


@requires_cpp
def test_check_fails_on_a_wrong_backend(capsys, monkeypatch):
    """A backend off by 0.1% in its output fails the comparison, and the exit status says so."""
    forward = BACKENDS["cpp"].forward
    monkeypatch.setattr(BACKENDS["cpp"], "forward", lambda *a: (lambda out, lse: (out * 1.001, lse))(*forward(*a)))
    assert check.main(["--device", "cpu", "--backends", "cpp"]) == 1
    text = capsys.readouterr().out
    assert "cpp        vs reference float32     FAIL" in text and "FAILED: cpp vs reference float32" in text


def test_check_refuses_a_backend_that_cannot_run(capsys):
    if "triton" in lam_ops.available_backends("cpu"):
        pytest.skip("this process interprets triton kernels on CPU")
    assert check.main(["--device", "cpu", "--backends", "triton"]) == 1
    assert "FAILED: triton" in capsys.readouterr().out


def test_gpu_check_architectures():
    arch_list = _script("gpu_check").arch_list
    assert arch_list([(9, 0)]) == "9.0"
    assert arch_list([(9, 0), (8, 0), (9, 0)]) == "8.0;9.0"
    with pytest.raises(ValueError):
        arch_list([])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: gpu-check would run")
def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    """Exit status 2 and what is missing; nothing written; nothing installed (no pip anywhere)."""
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable),
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "missing" in run.stderr and "a CUDA GPU" in run.stderr
    assert not (tmp_path / "out").exists()
    for script in ("gpu_check.py", "gpu_check.sh"):
        assert "pip" not in (ROOT / "scripts" / script).read_text()


@requires_cpp
def test_gpu_benchmark_code_path_on_cpu(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert (
        bench_gpu.main(
            ["--device", "cpu", "--tiny", "--impls", "cpp", "dense", "--repeat", "1", "--out", str(tmp_path)]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_gpu.json", "bench_gpu.md"]
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 2 * 2  # configs x dtypes x modes x impls
    for r in rows:
        if r["impl"] == "cpp" and r["dtype"] == "bfloat16":
            assert r["status"].startswith("unsupported: supports x of dtype"), r
        else:
            assert r["status"] == "ok", r
            assert r["median_s"] > 0 and r["peak_mb"] >= 0
            if r["mode"] == "fwd":
                assert r["max_abs_err_vs_dense64"] < (1e-5 if r["dtype"] == "float32" else 5e-2), r
    assert "| B2 C3 D4 8x8 r2 | float32 | fwd | cpp |" in (tmp_path / "bench_gpu.md").read_text()


def test_gpu_check_without_torch_says_which_python_to_use(tmp_path):
    """A python3 without torch (the system's, beside the project's venv) stops at once with the
    make command that names the venv's python."""
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # -S: no site-packages, so no torch
    python.chmod(0o755)
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=str(python)),
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "torch cannot be imported" in run.stderr and "make gpu-check PYTHON=.venv/bin/python" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "out, says",
    [
        ("/etc/passwd", "/etc/passwd is a file, not a folder"),
        ("/etc/passwd/results", "/etc/passwd is not a folder"),
        ("/proc/lam_ops_bench", "cannot make it in /proc: "),  # not writable, even for root
        (None, "is a file, not a folder"),  # a file of the user's
    ],
)
def test_check_refuses_a_bench_out_it_cannot_write_before_the_checks(out, says, tmp_path, capsys, monkeypatch):
    """--bench-out /etc/passwd raised FileExistsError after 40 s of checks: now an argparse error
    (exit code 2, no traceback) before any check runs, and the file is left alone."""
    monkeypatch.setattr(check, "run_checks", lambda *a: pytest.fail("the checks ran before --bench-out was checked"))
    mine = tmp_path / "results.txt"
    mine.write_text("mine")
    out = out or str(mine)
    with pytest.raises(SystemExit) as e:
        check.main(["--bench", "--bench-out", out])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --bench-out {out}: " in err and says in err and "Traceback" not in err, err
    assert mine.read_text() == "mine"


def test_check_bench_out_needs_bench_and_may_be_a_new_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        check.main(["--bench-out", str(tmp_path / "new")])
    assert e.value.code == 2 and "--bench-out is where --bench writes its files: add --bench" in capsys.readouterr().err
    assert check.out_dir_problem(tmp_path / "new" / "deeper") is None  # made by the benchmark
    assert check.out_dir_problem(tmp_path) is None
    assert not (tmp_path / "new").exists()  # checking made nothing
