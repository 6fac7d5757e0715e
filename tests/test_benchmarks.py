"""benchmarks/bench_lam.py: the --quick smoke run writes complete results, a row over the memory
limit is a row that says so, and the useful-work count rests on the right number of admissible pairs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lam_ops.backends.reference import window_mask

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_lam  # noqa: E402
import isolate  # noqa: E402
import report  # noqa: E402

MEASURED = (
    "median_s",
    "min_s",
    "max_s",
    "repeats",
    "first_call_s",
    "peak_mb",
    "gflops",
    "matmul_fraction",
    "vs_best_peer",
)


def run_bench(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_lam.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize("H,W,radius", [(5, 7, 0), (6, 5, 2), (4, 4, 10), (5, 6, None), (1, 9, 3), (96, 96, 12)])
def test_admissible_pairs_counts_the_window(H, W, radius):
    c = bench_lam.Config(3, 1, 1, H, W, radius)
    assert c.admissible_pairs() == 3 * int(window_mask(H, W, radius, torch.device("cpu")).sum())


def test_quick_run_writes_complete_results(tmp_path):
    proc = run_bench("--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_lam.json").read_text())
    meta, rows = result["meta"], result["rows"]
    assert result["complete"]
    for key in ("date", "machine", "matmul_gflops", "matmul_gflops_end"):
        assert meta[key], key
    assert meta["machine"]["torch"] == torch.__version__
    impls = set(meta["impls"])
    assert {"reference", "dense", "unfold", "offset_loop", "flex"} <= impls
    groups = {}
    for r in rows:
        groups.setdefault((r["section"], r["config"], r["mode"]), set()).add(r["impl"])
        assert r["status"] == "ok" or r["status"].startswith(("unsupported", "skipped")), r
        if r["status"] == "ok":
            for key in MEASURED:
                assert r[key] is not None and r[key] >= 0, (key, r)
            assert r["min_s"] <= r["median_s"] <= r["max_s"]
    assert len(groups) == 8  # 2 paper shapes + 2 sweep sizes, 2 modes each
    assert all(names == impls for names in groups.values())
    # every trainable implementation ran both modes on every tiny shape
    assert all(r["status"] == "ok" for r in rows if r["impl"] != "flex" or r["mode"] == "fwd")
    md = (tmp_path / "bench_lam.md").read_text()
    assert torch.__version__ in md and md.count("| offset_loop (peer) |") == 8
    for png in ("time_vs_size.png", "memory_vs_radius.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_a_row_over_the_memory_limit_is_a_row_and_the_run_goes_on(tmp_path):
    # cpp has no memory estimate, so nothing skips it: its process hits the address-space limit
    # (2 threads: the thread pool's stacks alone are over 1 MB). Which allocation fails first, and
    # its message, varies with the machine; the rerun without the budget decides.
    args = ("--quick", "--impls", "cpp", "--modes", "fwd", "--threads", "2", "--mem-budget-gb", "0.001")
    proc = run_bench(*args, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_lam.json").read_text())
    assert result["complete"] and len(result["rows"]) == 4
    for r in result["rows"]:
        assert r["status"].startswith("out of memory: needs ") and "> budget 0.001 GB" in r["status"], r
    assert "out of memory" in (tmp_path / "bench_lam.md").read_text()


# A row's process for isolate.run_child: fails with the spec as the error's message, or allocates 1 GiB.
ROW_SCRIPT = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import isolate, torch
cpu = torch.device("cpu")
budget, spec = (sys.argv[sys.argv.index(flag) + 1] for flag in ("--mem-budget-gb", "--row"))
isolate.limit_memory(float(budget), cpu)
try:
    if spec != "allocate 1 GiB":
        raise RuntimeError(spec)
    torch.empty(2**28).fill_(1)
    row = {{"status": "ok", "budget_used_gb": isolate.budget_used_gb(cpu)}}
except Exception as e:
    row = isolate.failure(e, cpu)
print(json.dumps(row))
"""


@pytest.fixture
def row_script(tmp_path):
    path = tmp_path / "row.py"
    path.write_text(ROW_SCRIPT.format(benchmarks=str(ROOT / "benchmarks")))
    return str(path)


def test_an_allocation_over_the_limit_is_out_of_memory(row_script):
    row = isolate.run_child(row_script, [], "allocate 1 GiB", 120, 0.2, torch.device("cpu"))
    assert row["status"].startswith("out of memory: needs 1."), row  # 1 GiB and a little
    assert "> budget 0.2 GB (a rerun under" in row["status"], row


@pytest.mark.parametrize(
    "message",
    [
        "shape '[2, 3]' is invalid",
        # texts that were once read as out of memory: now only what the row needed decides
        "Resource temporarily unavailable",
        "could not create a primitive",
        "DefaultCPUAllocator: can't allocate memory",
    ],
)
def test_a_real_error_is_an_error_whatever_its_message(row_script, message):
    row = isolate.run_child(row_script, [], message, 120, 1.0, torch.device("cpu"))
    assert row["status"].startswith(f"error: RuntimeError: {message}"), row


def test_a_real_error_in_a_benchmark_row_is_an_error(tmp_path):
    spec = json.dumps({"impl": "cpp", "mode": "fwd", "config": {"B": 1, "C": 3, "D": 4, "H": 6, "W": 6, "radius": -1}})
    script = str(ROOT / "benchmarks" / "bench_lam.py")
    row = isolate.run_child(script, ["--threads", "2"], spec, 300, 1.0, torch.device("cpu"))
    assert row["status"].startswith("error: ValueError: radius must be"), row


@pytest.mark.parametrize(
    "again,status",
    [
        (
            {"status": "ok", "budget_used_gb": 0.5},
            "out of memory: needs 0.5 GB > budget 0.1 GB (a rerun under 8 GB: ok)",
        ),
        ({"status": "error: E: x", "budget_used_gb": 0.5}, "out of memory: needs more than 0.5 GB > budget 0.1 GB"),
        ({"status": "out of memory: MemoryError: "}, "out of memory: needs more than 8 GB > budget 0.1 GB"),
        ({"status": "ok", "budget_used_gb": 0.05}, "error: E: x (a rerun under 8 GB: ok)"),  # flaky, not memory
        ({"status": "error: E: x", "budget_used_gb": 0.05}, "error: E: x (a rerun under 8 GB: error: E: x)"),
        ({"status": "crashed: signal 11"}, "error: E: x (a rerun under 8 GB: crashed: signal 11)"),
        (None, "error: E: x"),  # no more memory to rerun it with
    ],
)
def test_a_failed_row_is_out_of_memory_only_if_its_rerun_needed_more(again, status):
    row = isolate.decide({"status": "error: E: x"}, again, 0.1, 8.0)
    assert row["status"].startswith(status), row


# benchmarks/profile_cpu.py: the perf report parser and phase table, and the fallback without perf.
import profile_cpu  # noqa: E402

# Captured from `perf report --stdio --no-children --sort dso,symbol -g none` (perf 6.1, cpp
# forward): fewer rows, narrower columns, long lines split (backslash-newline); the last two
# lines carry the IPC columns newer perf appends.
PERF_REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 506  of event 'cpu-clock'
#
# Overhead  Shared Object                       Symbol
# ........  ..................................  ..........................................
#
    19.37%  _C.cpython-311-x86_64-linux-gnu.so  [.] lam::(anonymous namespace)::row_logits<float>
    14.03%  _C.cpython-311-x86_64-linux-gnu.so  [.] lam::(anonymous namespace)::softmax_weights<float>
    13.04%  libtorch_cpu.so  [.] mkl_blas_avx512_sgemm_kernel_nocopy_NN_b1
    11.46%  libgomp.so.1  [.] 0x000000000001e02a
     5.14%  libtorch_cpu.so  [.] mkl_blas_avx512_sgemm_kernel_0_b0
     2.96%  _C.cpython-311-x86_64-linux-gnu.so  [.] lam::(anonymous namespace)::forward_kernel<float>(\
at::Tensor const&, at::Tensor const&, bool const*, float, int, at::Tensor&, at::Tensor&)::{lambda(long, long)#1}::\
operator()
     2.57%  libc.so.6  [.] __memmove_avx512_unaligned_erms
     1.58%  libtorch_cpu.so  [.] c10::function_ref<void (char**, long const*, long, long)>::callback_fn<\
at::native::AVX2::VectorizedLoop2d<at::native::AVX2::direct_copy_kernel(at::TensorIteratorBase&)::{lambda()#3}::\
operator()() const::{lambda(float)#7}> >
     1.00%  _C.cpython-311-x86_64-linux-gnu.so  [.] lam::(anonymous namespace)::mm<float>
     0.99%  _C.cpython-311-x86_64-linux-gnu.so  [.] lam::(anonymous namespace)::all_finite<float>
     0.40%  libtorch_cpu.so  [.] mkl_blas_avx512_sgemm_scopy_right8_ea
     0.40%  libtorch_cpu.so  [.] at::native::structured_addmm_out_cpu::impl
            |
            ---0x1

     0.40%  [kernel.kallsyms]  [k] clear_page_erms
     0.20%  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault                                -      -
     0.20%  libstdc++.so.6.0.30  [.] __dynamic_cast                                          -      -
"""


def test_perf_report_rows_are_parsed_and_put_into_phases():
    rows = profile_cpu.parse_perf_report(PERF_REPORT)
    assert len(rows) == 15
    assert rows[0] == profile_cpu.Sample(19.37, "_C.cpython-311-x86_64-linux-gnu.so", rows[0].symbol)
    assert rows[-1].symbol == "__dynamic_cast" and rows[-2].symbol == "_PyEval_EvalFrameDefault"
    assert rows[-3].symbol == "[k] clear_page_erms"
    phases = {r.symbol[:40]: profile_cpu.phase_of(r.dso, r.symbol) for r in rows}
    for isa in ("avx512", "avx2"):  # the offset kernels: everything a strip runs is inlined into these
        symbol = (
            f"void lam::(anonymous namespace)::run_{isa}<float>(lam::(anonymous namespace)::Job<float> const&, long)"
        )
        assert profile_cpu.phase_of("_C.cpython-311-x86_64-linux-gnu.so", symbol).startswith("offset kernels")
    expected = {
        "lam::(anonymous namespace)::row_logits<f": "row_logits",
        "lam::(anonymous namespace)::softmax_weig": "softmax_weights",
        "mkl_blas_avx512_sgemm_kernel_nocopy_NN_b": "BLAS GEMM compute",  # "nocopy" is not packing
        "0x000000000001e02a": "OpenMP runtime",
        "mkl_blas_avx512_sgemm_kernel_0_b0": "BLAS GEMM compute",
        "lam::(anonymous namespace)::forward_kern": "tile loops",  # its signature names at::Tensor
        "__memmove_avx512_unaligned_erms": "memcpy / memset",
        "c10::function_ref<void (char**, long con": "pixel_major copies",  # direct_copy_kernel
        "lam::(anonymous namespace)::mm<float>": "ATen / dispatcher",
        "lam::(anonymous namespace)::all_finite<f": "all_finite",
        "mkl_blas_avx512_sgemm_scopy_right8_ea": "BLAS GEMM packing",
        "at::native::structured_addmm_out_cpu::im": "ATen / dispatcher",
        "[k] clear_page_erms": "Linux kernel",
        "_PyEval_EvalFrameDefault": "Python",
        "__dynamic_cast": "other",
    }
    assert {k: v.split(" (")[0] for k, v in phases.items()} == expected
    shares = profile_cpu.breakdown(rows)
    assert sum(shares.values()) == pytest.approx(100.0)
    total = sum(r.percent for r in rows)
    assert shares["BLAS GEMM compute"] == pytest.approx(100 * (13.04 + 5.14) / total)


def test_phase_table_weighs_forward_and_backward_by_time():
    fwd = {"ms": 10.0, "phases": {"a": 100.0}}
    bwd = {"ms": 30.0, "phases": {"a": 20.0, "b": 80.0}}
    both = profile_cpu.combine(fwd, bwd)
    assert both == pytest.approx({"a": 40.0, "b": 60.0})
    table = profile_cpu.phase_table({"x fwd": fwd["phases"], "x fwd+bwd": both}, {"x fwd": 10.0, "x fwd+bwd": 40.0})
    assert table.splitlines()[2] == "| ms per call | 10.0 | 40.0 |"
    assert "| a | 100.0 | 40.0 |" in table and "| b | 0.0 | 60.0 |" in table


def test_gemm_waste_counts_the_key_rectangles():
    # 8x8 tiles at r = 6 on an image much larger than a tile: 20x20 keys computed per query, 13x13
    # used; the border clips both
    computed, used = profile_cpu.gemm_pairs(8, 8, 6)
    assert (computed, used) == (64 * 64, sum(min(8, y + 7) - max(0, y - 6) for y in range(8)) ** 2)
    assert profile_cpu.gemm_pairs(5, 7, None) == (35 * 35, 35 * 35)  # the global operator wastes nothing
    c, u = profile_cpu.gemm_pairs(96, 96, 6)
    assert 2.0 < c / u < 20 * 20 / 13**2


def test_a_failing_perf_is_named(tmp_path):
    fake = tmp_path / "perf"
    fake.write_text("#!/bin/sh\necho 'Error: Access to performance monitoring is restricted' >&2\nexit 255\n")
    fake.chmod(0o755)
    reason = profile_cpu.perf_unavailable(str(fake))
    assert "exit 255" in reason and "restricted" in reason, reason
    assert "perf not found" in profile_cpu.perf_unavailable(str(tmp_path / "missing"))
    assert profile_cpu.main(["--tool", "perf", "--perf", str(tmp_path / "missing")]) == 2  # no fallback asked


def test_without_perf_the_profile_says_so_and_falls_back_to_torch_profiler(tmp_path):
    script = ROOT / "benchmarks" / "profile_cpu.py"
    args = ["--perf", str(tmp_path / "missing"), "--batch", "1", "--channels", "3", "--dims", "4"]
    # radius None: the tiled kernel, whose GEMMs torch.profiler sees (the offset kernels of windowed
    # radii call no ATen operator in their loops)
    args += ["--radii", "none", "--size", "10", "--seconds", "0.2", "--no-gemm", "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "perf not found" in proc.stderr and "falling back to torch.profiler" in proc.stderr
    assert "torch.profiler self CPU time per phase" in proc.stdout
    gemm = next(line for line in proc.stdout.splitlines() if line.startswith("| GEMM (aten::mm"))
    assert all(float(v) > 0 for v in gemm.strip("|").split("|")[1:]), gemm
    runs = json.loads((tmp_path / "out" / "profile.json").read_text())["runs"]
    assert [r["direction"] for r in runs] == ["fwd", "bwd"] and all(r["ms"] > 0 for r in runs)
    assert all(sum(r["phases"].values()) == pytest.approx(100.0) for r in runs)


def test_a_run_without_the_sweep_draws_no_empty_size_plot(tmp_path):
    row = dict(section="paper", status="ok", mode="fwd", B=2, C=21, D=16, H=96, W=96, peak_mb=4.0)
    rows = [dict(row, impl=impl, radius=radius) for impl in ("cpp", "dense") for radius in (6, None)]
    written = report.plots(rows, tmp_path)
    assert [p.name for p in written] == ["memory_vs_radius.png"]
    assert not (tmp_path / "time_vs_size.png").exists()
