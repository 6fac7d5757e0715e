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
