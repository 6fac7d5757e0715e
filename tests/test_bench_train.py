"""benchmarks/bench_train.py: the --quick smoke run writes complete results for every trainable
implementation, a peer really replaces the LAM's function, configurations over the memory budget
are skipped, and one that runs out of memory is a row, not a failed run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from lam_ops import LocalAggregation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_train  # noqa: E402
import peers  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def run(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )


def test_quick_run_writes_complete_results(tmp_path):
    proc = run("--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_train.json").read_text())
    meta, rows = result["meta"], result["rows"]
    assert result["complete"] and meta["machine"]["torch"] == torch.__version__
    assert meta["shape"]["backbone"] == "resnet18" and meta["args"]["repeat"] == 2
    names = [r["impl"] for r in rows]
    assert {"cpp", "reference", "dense", "unfold", "offset_loop", "no_lam"} <= set(names)
    assert "flex" not in names  # no backward on the CPU: it cannot train
    for r in rows:
        assert r["status"] == "ok", r
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] == 2, r
        assert r["peak_mb"] > 0 and r["first_step_s"] > 0 and r["process_peak_rss_mb"] > r["params_and_adamw_mb"], r
    md = (tmp_path / "bench_train.md").read_text()
    assert torch.__version__ in md and "bfloat16 autocast on" in md
    assert md.count("\n| ") == len(rows) + 1  # header + one line per configuration
    assert "**Fit in this machine's memory**" in md and "**did not**: none" in md


def test_out_of_memory_is_a_row(tmp_path):
    proc = run("--quick", "--impls", "no_lam", "--mem-budget-gb", "0.1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "bench_train.json").read_text())["rows"]
    assert row["status"].startswith("out of memory"), row
    assert "**did not**: `no_lam`" in (tmp_path / "bench_train.md").read_text()


def test_dense_lam_over_budget_is_skipped_before_running():
    impls = {i.name: i for i in bench_train.implementations(torch.device("cpu"))}
    paper = bench_train.SHAPES["paper"]
    # 8 bytes x 4 HW x HW float32 matrices per image: 10 x 9216^2 x 32 B = 25.3 GiB
    for name in ("dense", "reference"):
        assert (
            bench_train.skip_reason(impls[name], paper, 16.0) == "skipped: its LAM would need ~25 GB > budget 16.0 GB"
        )
        assert bench_train.skip_reason(impls[name], paper, 32.0) is None
    assert bench_train.skip_reason(impls["offset_loop"], paper, 16.0) is None
    assert bench_train.skip_reason(impls["cpp"], paper, 0.001) is None  # no estimate: the limit catches it
    assert bench_train.skip_reason(None, paper, 0.001) is None  # without the LAM


def test_peer_replaces_the_lam_function():
    torch.manual_seed(0)
    lam = LocalAggregation(3, 8, 4, radius=2, backend="reference")
    logits, image = torch.randn(2, 5, 6, 7), torch.randn(2, 3, 24, 28)
    impl = {i.name: i for i in bench_train.implementations(torch.device("cpu"))}["offset_loop"]
    calls = []
    spy = bench_train.bench_lam.Impl(
        impl.name, "peer", lambda *a: calls.append(a) or impl.fn(*a), True, "", impl.visited_pairs
    )
    with bench_train.lam_function(spy):
        out = lam(logits, image)
    assert len(calls) == 1 and calls[0][3] == 2 and calls[0][4] is None  # radius, key mask
    assert impl.fn is peers.offset_loop
    torch.testing.assert_close(out, lam(logits, image), atol=1e-5, rtol=1e-5)  # patch undone: reference again
