#!/usr/bin/env python
"""Benchmark of the LAM operator: every available lam_ops backend against the peers a user would
pick instead (benchmarks/peers.py), forward and forward+backward, in one run.

    python benchmarks/bench_lam.py            # the default grid (a subset of the paper's shapes)
    python benchmarks/bench_lam.py --full     # every paper shape
    python benchmarks/bench_lam.py --quick --out /tmp/smoke   # CI smoke run, tiny shapes
    python benchmarks/report.py benchmarks/results/bench_lam.json   # re-render markdown and plots

Every row runs in its own process under a memory limit (--mem-budget-gb, see isolate.py): a row
that runs out of memory, crashes or times out says so and the run goes on. Writes bench_lam.json,
bench_lam.md and PNG plots to --out (default benchmarks/results/); the markdown's header says what
each column means, measure.py how time and memory are measured.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the memory profiler's start-up chatter
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

import isolate  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402

import lam_ops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("fwd", "fwd+bwd")
# lam_ops backends that build the HW x HW matrices (memory grows as (HW)^2)
DENSE_BACKENDS = {"reference"}


@dataclass(frozen=True)
class Config:
    B: int
    C: int
    D: int
    H: int
    W: int
    radius: int | None

    def __str__(self):
        return f"B{self.B} C{self.C} D{self.D} {self.H}x{self.W} r{self.radius}"

    def half_window(self) -> tuple[int, int]:
        return peers._half_window(self.H, self.W, self.radius)

    def window_positions(self) -> int:
        ry, rx = self.half_window()
        return (2 * ry + 1) * (2 * rx + 1)

    def admissible_pairs(self) -> int:
        """(query, key) pairs inside the clipped window, over the batch (no key mask)."""
        ry, rx = self.half_window()
        rows = sum(min(self.H - 1, y + ry) - max(0, y - ry) + 1 for y in range(self.H))
        cols = sum(min(self.W - 1, x + rx) - max(0, x - rx) + 1 for x in range(self.W))
        return self.B * rows * cols

    def useful_flops(self, mode: str) -> int:
        """Useful floating-point work per admissible pair: the forward's f_i . f_j (2D), the
        aggregation (2C) and the distance term, exponential and softmax bookkeeping (5); the
        backward recomputes the logit (2D), forms dx (2C), g . x (2C), both df gathers (4D) and the
        softmax and sigma terms (15): 8D + 6C + 20 for forward+backward."""
        per_pair = 2 * self.D + 2 * self.C + 5 if mode == "fwd" else 8 * self.D + 6 * self.C + 20
        return self.admissible_pairs() * per_pair


@dataclass(frozen=True)
class Impl:
    name: str
    kind: str  # "lam_ops" (a backend) or "peer"
    fn: Callable
    trainable: bool
    summary: str
    # the pairs it computes (dense: every pair; padded windows: every window position), to predict
    # its time from its rate on the configurations already measured
    visited_pairs: Callable[[Config], int]
    memory_estimate: Callable[..., float] | None = None  # bytes from (B, C, D, H, W, K), for the budget
    compiled: bool = False  # first call compiles: warm up before measuring memory
    no_backward_on: tuple = ()  # device types


def dense_pairs(c: Config) -> int:
    return c.B * (c.H * c.W) ** 2


def window_pairs(c: Config) -> int:
    return c.B * c.window_positions() * c.H * c.W


def padded_dense_pairs(c: Config) -> int:
    ry, rx = c.half_window()
    return c.B * ((c.H + 2 * ry) * (c.W + 2 * rx)) ** 2


# what each peer computes, to predict its time (the rest visit every padded window position)
PEER_PAIRS = {"dense": dense_pairs, "flex": Config.admissible_pairs, "natten": padded_dense_pairs}


def implementations(device: torch.device, names: list[str] | None) -> list[Impl]:
    impls = []
    for name in lam_ops.available_backends(device):
        dense = name in DENSE_BACKENDS
        impls.append(
            Impl(
                name,
                "lam_ops",
                functools.partial(lam_ops.local_aggregate, backend=name),
                True,
                f"lam_ops backend {name!r}",
                dense_pairs if dense else Config.admissible_pairs,
                peers.PEERS["dense"].memory_estimate if dense else None,
            )
        )
    for p in peers.PEERS.values():
        if p.unavailable() is not None:
            continue
        impls.append(
            Impl(
                p.name,
                "peer",
                p.fn,
                p.trainable,
                p.summary,
                PEER_PAIRS.get(p.name, window_pairs),
                p.memory_estimate,
                compiled=p.name == "flex",
                no_backward_on=p.no_backward_on,
            )
        )
    if names:
        unknown = set(names) - {i.name for i in impls}
        if unknown:
            raise SystemExit(f"--impls: unknown or unavailable {sorted(unknown)}; have {[i.name for i in impls]}")
        impls = [i for i in impls if i.name in names]
    return impls


def make_inputs(c: Config, mode: str, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c.B, c.C, c.H, c.W, generator=g).to(device)
    # scaled so that f_i . f_j is O(1): a softmax that is neither flat nor one-hot
    f = (torch.randn(c.B, c.D, c.H, c.W, generator=g) / c.D**0.25).to(device)
    sigma = torch.tensor(6.0, device=device)
    grad = torch.randn(c.B, c.C, c.H, c.W, generator=g).to(device)
    train = mode == "fwd+bwd"
    return x.requires_grad_(train), f.requires_grad_(train), sigma.requires_grad_(train), grad


class Runner:
    """Decides in this process which rows to skip (memory estimate, predicted time, an unsupported
    mode) and measures the others each in a memory-limited child process (isolate.py)."""

    def __init__(self, args, argv: list[str]):
        self.args = args
        self.device = torch.device(args.device)
        self.argv = argv
        self.rates: dict[tuple[str, str], float] = {}  # best visited-pair rate per (impl, mode)
        self.unsupported: dict[tuple[str, str], str] = {}  # per run: e.g. no backward on this device

    def skip_reason(self, impl: Impl, c: Config, mode: str) -> str | None:
        if (impl.name, mode) in self.unsupported:
            return self.unsupported[(impl.name, mode)]
        if mode == "fwd+bwd" and self.device.type in impl.no_backward_on:
            return f"unsupported: no backward on {self.device.type} (torch {torch.__version__.split('+')[0]} "
            "FlexAttention has none)"
        if impl.memory_estimate is not None:
            need = impl.memory_estimate(c.B, c.C, c.D, c.H, c.W, c.window_positions()) / 2**30
            if need > self.args.mem_budget_gb:
                return f"skipped: would need ~{need:.1f} GB > budget {self.args.mem_budget_gb:g} GB"
        rate = self.rates.get((impl.name, mode))
        if rate is not None:
            predicted = impl.visited_pairs(c) * (c.C + c.D + 1) / rate
            if predicted > self.args.time_limit:
                return f"skipped: estimated {predicted:.0f} s per call > time limit {self.args.time_limit:g} s"
        return None

    def measure(self, impl: Impl, c: Config, mode: str) -> dict:
        row = {
            "impl": impl.name,
            "kind": impl.kind,
            "mode": mode,
            **asdict(c),
            "config": str(c),
            "useful_gflop": c.useful_flops(mode) / 1e9,
        }
        reason = self.skip_reason(impl, c, mode)
        if reason is not None:
            return {**row, "status": reason}
        spec = json.dumps({"impl": impl.name, "mode": mode, "config": asdict(c)})
        script = str(Path(__file__).resolve())
        row.update(
            isolate.run_child(script, self.argv, spec, self.args.row_timeout, self.args.mem_budget_gb, self.device)
        )
        if row["status"].startswith("unsupported"):
            self.unsupported[(impl.name, mode)] = row["status"]
        if row["status"] == "ok":
            row["gflops"] = c.useful_flops(mode) / row["median_s"] / 1e9
            rate = impl.visited_pairs(c) * (c.C + c.D + 1) / row["min_s"]
            self.rates[(impl.name, mode)] = max(rate, self.rates.get((impl.name, mode), 0.0))
        return row


def call(impl: Impl, c: Config, mode: str, inputs) -> Callable[[], object]:
    x, f, sigma, grad = inputs
    if mode == "fwd":
        return lambda: impl.fn(x, f, sigma, c.radius)
    return lambda: torch.autograd.grad(impl.fn(x, f, sigma, c.radius), (x, f, sigma), grad)


def run_row(spec: dict, args) -> dict:
    """One row in the current (child) process, under the memory limit: a warm-up call (a compiled
    implementation compiles first, untimed) under the RSS high-water mark, a call under the
    allocator profiler (not timed), then timed calls until --repeat or --row-seconds."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    (impl,) = implementations(device, [spec["impl"]])
    c, mode = Config(**spec["config"]), spec["mode"]
    isolate.limit_memory(args.mem_budget_gb, device)
    row, first = {}, []
    try:
        fn = call(impl, c, mode, make_inputs(c, mode, device))
        if impl.compiled:  # compile first: the memory of compiling is not the operator's
            row["first_call_s"] = measure.time_call(fn, device)
        row["peak_rss_mb"] = measure.rss_peak_mb(lambda: first.append(measure.time_call(fn, device)))
        row.setdefault("first_call_s", first[0])
        row["peak_mb"] = measure.allocator_peak_mb(fn, device)
        # The call after compiling, and one slower than the row budget (its own warm-up's worth),
        # are samples too.
        times = first if impl.compiled or first[0] >= args.row_seconds else []
        while len(times) < args.repeat and (not times or sum(times) < args.row_seconds):
            times.append(measure.time_call(fn, device))
    except NotImplementedError as e:  # e.g. FlexAttention's backward on CPU
        return {"status": f"unsupported: {str(e).splitlines()[0]}"}
    except Exception as e:  # noqa: BLE001  a row that says what happened, not a lost run
        return isolate.failure(e, device)
    return {**row, **measure.summarize(times), "budget_used_gb": isolate.budget_used_gb(device), "status": "ok"}


def paper_grid(full: bool, dims: list[int]) -> list[Config]:
    """The paper's shapes (96x96 = a 384 crop at stride 4); the default is the B=2, C=21 slice."""
    Bs, Cs = ((2, 10), (21, 60)) if full else ((2,), (21,))
    return [Config(B, C, D, 96, 96, r) for B, C, D, r in itertools.product(Bs, Cs, dims, (6, 12, 18, None))]


def size_sweep(sizes: list[int], radius: int) -> list[Config]:
    return [Config(2, 21, 16, s, s, radius) for s in sizes]


def quick_grid() -> tuple[list[Config], list[Config]]:
    return [Config(1, 3, 4, 12, 12, r) for r in (2, None)], [Config(1, 3, 4, s, s, 2) for s in (8, 12)]


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="every paper shape: B in {2,10} x C in {21,60} x D in {16,256} x r in {6,12,18,None} at 96x96 "
        "(default: the B=2, C=21 slice)",
    )
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny shapes, 2 repetitions")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 256], help="guidance feature dims D of the paper shapes")
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[32, 48, 64, 96, 128, 192],
        help="image sizes of the sweep (B=2, C=21, D=16, square images); none to skip it",
    )
    p.add_argument("--sweep-radius", type=int, default=12, help="window radius of the image-size sweep")
    p.add_argument("--impls", nargs="*", help="only these backends/peers (default: every available one)")
    p.add_argument(
        "--modes", nargs="*", choices=MODES, default=list(MODES), help="forward (inference) and/or forward+backward"
    )
    p.add_argument("--device", default="cpu", help="torch device to run on")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per row (after the warm-up call)")
    p.add_argument(
        "--row-seconds",
        type=float,
        default=10.0,
        help="stop repeating a row once its timed calls took this long (at least one timed call)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="skip a row whose single call is predicted (from the same implementation's rate earlier in the run) "
        "to take longer",
    )
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="skip a row whose estimated peak memory exceeds this, and limit each row's process to it: address "
        "space on the CPU (default: 70%% of the memory available at start), the caching allocator's on CUDA "
        "(default: 90%% of the GPU's); a row that fails under it runs once more under the memory "
        "available then, to tell out of memory from an error (docs/benchmarks.md)",
    )
    p.add_argument("--row-timeout", type=float, default=900.0, help="seconds before a row's process is stopped")
    p.add_argument(
        "--out", type=Path, default=RESULTS, help="output folder for bench_lam.json, bench_lam.md and the PNG plots"
    )
    p.add_argument(
        "--note", default="", help="a remark printed in the markdown (e.g. 'machine shared with other jobs')"
    )
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row (JSON spec) and print its JSON
    args = p.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 2)
        args.sizes = None  # the quick grid has its own
    if args.mem_budget_gb is None:
        args.mem_budget_gb = isolate.default_budget_gb(torch.device(args.device))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.row is not None:
        print(json.dumps(run_row(json.loads(args.row), args)))
        return 0
    from tqdm import tqdm

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    impls = implementations(device, args.impls)
    if args.quick:
        grid, sweep = quick_grid()
    else:
        grid, sweep = paper_grid(args.full, args.dims), size_sweep(args.sizes, args.sweep_radius)
    # Cheapest first, so that the time-limit prediction has a rate before the costly shapes.
    jobs = [("paper", c) for c in sorted(grid, key=lambda c: (c.B, c.C, c.D, c.window_positions()))]
    jobs += [("sweep", c) for c in sweep]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": measure.machine_info(device),
        "lam_ops_commit": git_commit(),
        "matmul_gflops": measure.matmul_gflops(device),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "row"},
        "impls": {i.name: {"kind": i.kind, "summary": i.summary} for i in impls},
        "not_run": {p.name: p.unavailable() for p in peers.PEERS.values() if p.unavailable() is not None},
        "note": args.note,
    }
    runner = Runner(args, argv)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    total = len(jobs) * len(args.modes) * len(impls)
    with tqdm(total=total, desc="bench_lam", unit="row", disable=None) as bar:
        for (section, c), mode in itertools.product(jobs, args.modes):
            for impl in impls:
                bar.set_postfix_str(f"{c} {mode} {impl.name}")
                rows.append({"section": section, **runner.measure(impl, c, mode)})
                bar.update()
            # the rows so far, should the run be stopped
            write_json(args.out / "bench_lam.json", {"meta": meta, "rows": rows, "complete": False})
    meta["matmul_gflops_end"] = measure.matmul_gflops(device)
    report.add_comparisons(rows, meta)
    write_json(args.out / "bench_lam.json", {"meta": meta, "rows": rows, "complete": True})
    (args.out / "bench_lam.md").write_text(report.markdown(rows, meta))
    report.plots(rows, args.out)
    print(f"wrote {args.out}/bench_lam.json, bench_lam.md and plots")
    errors = [r for r in rows if r["status"].startswith(("error", "crashed"))]
    for r in errors:
        print(f"{r['impl']} {r['config']} {r['mode']}: {r['status']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
