#!/usr/bin/env python
"""The GPU benchmark of `make gpu-check`: lam_ops' triton and cuda backends against compiled
FlexAttention and the authors' dense form, in ONE process (a GPU is lent for minutes; a process
per row, as bench_lam.py does, would pay CUDA start-up and every compilation again).

    python benchmarks/bench_gpu.py --out DIR [--time-budget 200]
    python benchmarks/bench_gpu.py --device cpu --tiny --out DIR   # the code path on CPU (tests)

Grid: B in {2, 10}, C = 21, D in {16, 256}, radius in {12, 18, None}, 96x96 and 192x192; float32
and bfloat16; forward and forward+backward. Per row: median / min time of the timed calls after a
warm-up call (which compiles), peak extra memory (measure.py), and the forward's error against the
dense form computed in float64, one image at a time, on the same (rounded) inputs. Rows run
cheapest first; rows the memory estimate rules out, or that the time budget leaves, say so.
Writes bench_gpu.json and bench_gpu.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the memory profiler's start-up chatter
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

import bench_lam  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
from bench_lam import Config  # noqa: E402

from lam_ops.backends import BACKENDS  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GPU_IMPLS = ("triton", "cuda", "flex", "dense")


def grid(tiny: bool) -> list[Config]:
    if tiny:
        return [Config(2, 3, 4, 8, 8, r) for r in (2, None)]
    configs = [
        Config(B, 21, D, s, s, r) for B, D, r, s in itertools.product((2, 10), (16, 256), (12, 18, None), (96, 192))
    ]
    return sorted(configs, key=lambda c: (c.admissible_pairs() * (c.C + c.D), c.B))


def dense_reference(x, f, sigma, radius) -> torch.Tensor:
    """The dense form in float64, one image at a time (its HW x HW matrices per image only)."""
    x, f, sigma = x.detach().double(), f.detach().double(), sigma.detach().double()
    with torch.no_grad():
        return torch.cat([peers.dense(x[b : b + 1], f[b : b + 1], sigma, radius) for b in range(x.shape[0])])


def fits(c: Config, impl: str, budget_gb: float, images: int = 0) -> bool:
    """The dense form's HW x HW matrices (peers.py's estimate) for `images` images (default: the
    batch); the other implementations are linear in HW."""
    if impl not in ("dense", "reference"):
        return True
    return (
        peers.PEERS["dense"].memory_estimate(images or c.B, c.C, c.D, c.H, c.W, c.window_positions()) / 2**30
        <= budget_gb
    )


def measure_row(fn, device, repeat: int, row_seconds: float) -> dict:
    first = measure.time_call(fn, device)  # compiles where the implementation compiles
    peak = measure.allocator_peak_mb(fn, device)
    times = []
    while len(times) < repeat and sum(times) < row_seconds:
        times.append(measure.time_call(fn, device))
    return {"first_call_s": first, "peak_mb": peak, **measure.summarize(times)}


def run(args) -> dict:
    device = torch.device(args.device)
    impls = {i.name: i for i in bench_lam.implementations(device, None)}
    names = [n for n in (args.impls or GPU_IMPLS) if n in impls]
    missing = {n: "not available on this device" for n in (args.impls or GPU_IMPLS) if n not in impls}
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": measure.machine_info(device),
        "lam_ops_commit": bench_lam.git_commit(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "not_run": missing,
        "note": args.note,
    }
    budget_gb = args.mem_budget_gb
    rows, start = [], time.perf_counter()
    for c, (dname, dtype) in itertools.product(grid(args.tiny), DTYPES.items()):
        want = None
        for mode, name in itertools.product(bench_lam.MODES, names):
            x, f, sigma, grad = bench_lam.make_inputs(c, mode, device)
            x, f, grad = (t.detach().to(dtype).requires_grad_(t.requires_grad) for t in (x, f, grad))
            row = {"impl": name, "mode": mode, "dtype": dname, **vars(c).copy(), "config": str(c)}
            impl = impls[name]
            why = BACKENDS[name].unsupported(x, f, sigma, c.radius, None) if impl.kind == "lam_ops" else None
            if time.perf_counter() - start > args.time_budget:
                row["status"] = f"not run: time budget of {args.time_budget:g} s spent"
            elif why is not None:
                row["status"] = f"unsupported: {why}"
            elif mode == "fwd+bwd" and device.type in impl.no_backward_on:
                row["status"] = f"unsupported: no backward on {device.type}"
            elif not fits(c, name, budget_gb):
                row["status"] = f"skipped: HW x HW matrices over {budget_gb:g} GB"
            else:
                try:
                    fn = bench_lam.call(impl, c, mode, (x, f, sigma, grad))
                    row.update(measure_row(fn, device, args.repeat, args.row_seconds))
                    if mode == "fwd":
                        if want is None and fits(c, "dense", budget_gb, images=1):
                            want = dense_reference(x, f, sigma, c.radius)
                        if want is not None:
                            with torch.no_grad():
                                err = (impl.fn(x, f, sigma, c.radius).double() - want).abs().max()
                            row["max_abs_err_vs_dense64"] = float(err)
                    row["status"] = "ok"
                except torch.cuda.OutOfMemoryError:
                    row["status"] = "out of memory"
                except Exception as e:  # noqa: BLE001  a row that says what happened, not a lost run
                    row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            if len(rows) % len(names) == 0:  # the rows so far, should the run be stopped
                bench_lam.write_json(args.out / "bench_gpu.json", {"meta": meta, "rows": rows, "complete": False})
            print(
                f"{c} {dname} {mode} {name}: {row['status']}"
                + (f" {1e3 * row['median_s']:.2f} ms" if "median_s" in row else ""),
                flush=True,
            )
    meta["elapsed_s"] = time.perf_counter() - start
    return {"meta": meta, "rows": rows, "complete": True}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = report.header(
        "LAM GPU benchmark (benchmarks/bench_gpu.py)",
        meta,
        [f"- wall time {meta['elapsed_s']:.0f} s; not run: {meta['not_run'] or 'none'}"],
    )
    lines += [
        "",
        "| config | dtype | mode | impl | median ms | min ms | 1st call s | peak MB "
        "| max abs err vs dense fp64 | status |",
        "|" + "---|" * 10,
    ]
    num = lambda r, k, s=1.0, fmt=".2f": "" if k not in r else format(s * r[k], fmt)  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['dtype']} | {r['mode']} | {r['impl']} | {num(r, 'median_s', 1e3)} | "
            f"{num(r, 'min_s', 1e3)} | "
            f"{num(r, 'first_call_s')} | {num(r, 'peak_mb', fmt='.1f')} | "
            f"{num(r, 'max_abs_err_vs_dense64', fmt='.2e')} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="torch device")
    p.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json and bench_gpu.md")
    p.add_argument(
        "--impls", nargs="+", help=f"implementations (default: {' '.join(GPU_IMPLS)}; any of bench_lam.py's)"
    )
    p.add_argument("--tiny", action="store_true", help="two tiny shapes instead of the grid (for tests on CPU)")
    p.add_argument("--time-budget", type=float, default=200.0, help="seconds; rows after it are listed as not run")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per row after the warm-up call")
    p.add_argument(
        "--row-seconds", type=float, default=1.0, help="stop repeating a row once its timed calls took this long"
    )
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=100.0,
        help="skip the dense form (and the error's float64 reference, per image) where its HW x HW matrices "
        "would exceed this (an H200 has 141 GB)",
    )
    p.add_argument("--note", default="", help="a remark printed in the markdown")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available (torch {torch.__version__})")
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    bench_lam.write_json(args.out / "bench_gpu.json", result)
    (args.out / "bench_gpu.md").write_text(markdown(result))
    print(f"wrote {args.out}/bench_gpu.json and bench_gpu.md")
    return 1 if any(r["status"].startswith("error") for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
