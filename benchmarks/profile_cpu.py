#!/usr/bin/env python
"""Where the time of a lam_ops CPU backend goes: a per-phase breakdown of its forward and backward
(BLAS compute and packing, ATen dispatch, gathers and copies, the pair loops, the OpenMP runtime),
from perf samples of a loop of calls, and the rate BLAS reaches on the kernel's own GEMM shapes.

    python benchmarks/profile_cpu.py                       # 96x96, B=2, C=21, D in {16,256}, r in {6,12}
    python benchmarks/profile_cpu.py --dims 16 --radii 12 none --seconds 3 --out /tmp/prof

Each shape and direction runs in its own worker process (a warm-up call, then calls in a loop);
`perf record -e cpu-clock -g -p PID` attaches after the warm-up, so imports and first-call costs
are not sampled. The self time of every sampled symbol (`perf report --no-children --sort
dso,symbol`) is put into a phase by PHASES; the fwd+bwd column weighs the forward's and the
backward's breakdowns by their measured times. Where perf is missing or not allowed (CI, a
container with perf_event_paranoid > 2) the script says so and falls back to torch.profiler,
which only resolves the ATen operators the kernel calls (mm, addmm_, copies), not its own loops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start-up chatter (torch fallback)
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # run as a script from anywhere
sys.path.insert(0, str(ROOT))  # this checkout's lam_ops (and build), not another installed one

import measure  # noqa: E402

import lam_ops  # noqa: E402  loads the extension: torch.ops.lam_ops

# Phases, first match wins: (name, regex on "dso symbol"). MKL's and OpenBLAS's kernel names:
# *_kernel* computes, *copy*/*pack* packs the operands into the kernel's layout.
OPENMP = "OpenMP runtime (worker spin/wake, barriers)"
DISPATCH = "ATen / dispatcher (from_blob, mm_out, addmm_, empty)"
PHASES = [
    ("BLAS GEMM packing", r"mkl_blas\w*gemm_[sd]?copy|[sd]gemm_(on|ot|in|it|tn|tt)copy|gemm_\w*pack"),
    ("BLAS GEMM compute", r"mkl_blas\w*gemm\w*kernel|[sd]gemm_kernel|gemm_small_kernel"),
    ("BLAS other (drivers, threading)", r"\bmkl_|\bcblas_|\b[sd]gemm_|openblas|gemm_omp_|omp_simple_3d|mm_init\b"),
    ("row_logits (window, mask, logits, max)", r"\brow_logits<"),
    ("softmax_weights (exp, row sums)", r"\bsoftmax_weights<"),
    ("row_pair_grads (backward pair terms)", r"\brow_pair_grads<"),
    ("all_finite (non-finite checks)", r"\ball_finite<"),
    ("delta_of (Delta = g . out)", r"\bdelta_of<"),
    ("scatter / gather_mask", r"\b(scatter|gather_mask)<"),
    (DISPATCH, r"lam::\(anonymous namespace\)::mm<"),  # the from_blob + mm_out wrapper
    # everything a strip runs is inlined into the per-ISA entry points of lam_offsets.cpp
    ("offset kernels (dots, pair math, sums; inlined)", r"\blam::(\(anonymous namespace\)::)?run_avx(512|2)\b"),
    ("tile loops (inlined: fills, windows, online softmax)", r"\blam::"),
    ("memcpy / memset (gathers, fills)", r"\b__(memmove|memcpy|memset)\w*|\bmem(cpy|move|set)\b"),
    ("pixel_major copies (ATen copy kernels)", r"copy_kernel|VectorizedLoop2d|basic_loop|copy_impl"),
    (DISPATCH, r"^(libtorch\S*|libc10\S*) |^\S+ (at|c10|torch)::"),
    ("malloc / free", r"\b_?_?(int_)?(malloc|free|calloc|realloc|posix_memalign)\w*|\bcfree\b"),
    (OPENMP, r"libgomp|libiomp|\bgomp_|\bomp_"),
    ("Linux kernel (page faults, scheduling)", r"\[k\]"),
    ("Python (driver loop)", r"libpython|python3"),
]
OTHER = "other"
# self time per (shared object, symbol), no call graphs: what parse_perf_report reads
REPORT_ARGS = ("--stdio", "--no-children", "--sort", "dso,symbol", "-g", "none")

# One line of `perf report --stdio --no-children --sort dso,symbol -g none`:
#     12.34%  libtorch_cpu.so   [.] mkl_blas_avx512_sgemm_kernel_0
# (newer perf may append IPC columns "-  -").
_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s+\[([.kgus])\]\s+(.*?)(?:\s+-\s+-)?\s*$")


@dataclass(frozen=True)
class Sample:
    percent: float
    dso: str
    symbol: str


def parse_perf_report(text: str) -> list[Sample]:
    """The (self %, shared object, symbol) rows of a `perf report --stdio --no-children --sort
    dso,symbol` text; comment, blank and call-graph lines are skipped."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            pct, dso, kind, sym = m.groups()
            rows.append(Sample(float(pct), dso, f"[{kind}] {sym}" if kind == "k" else sym))
    return rows


def phase_of(dso: str, symbol: str) -> str:
    key = f"{dso} {symbol}"
    return next((name for name, rx in PHASES if re.search(rx, key)), OTHER)


def breakdown(samples: list[Sample]) -> dict[str, float]:
    """Percent of the samples per phase, normalised to 100 over what was sampled."""
    total = sum(s.percent for s in samples) or 1.0
    out: dict[str, float] = {}
    for s in samples:
        p = phase_of(s.dso, s.symbol)
        out[p] = out.get(p, 0.0) + 100.0 * s.percent / total
    return out


def perf_unavailable(perf: str) -> str | None:
    """Why `perf record` cannot run here, or None where it can."""
    exe = shutil.which(perf)
    if exe is None:
        return f"perf not found ({perf!r} is not an executable on PATH; e.g. apt-get install linux-perf)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [exe, "record", "-q", "-e", "cpu-clock", "-o", os.path.join(tmp, "t.data"), "--", "true"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{exe} record failed: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{exe} record failed (exit {proc.returncode}; perf_event_paranoid?): {last}"
    return None


# ---------------------------------------------------------------------------------------------
# The worker: one shape and direction in a loop


def make_inputs(B: int, C: int, D: int, size: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, size, size, generator=g, dtype=dtype)
    f = torch.randn(B, D, size, size, generator=g, dtype=dtype) / D**0.25  # O(1) logits, as bench_lam
    return x, f, torch.tensor(6.0, dtype=dtype), torch.randn(B, C, size, size, generator=g, dtype=dtype)


def operator_call(spec: dict):
    """The call to profile: the compiled operator itself (no autograd, no Python dispatch)."""
    x, f, sigma, grad = make_inputs(spec["B"], spec["C"], spec["D"], spec["size"], getattr(torch, spec["dtype"]))
    r = spec["radius"]
    ops = torch.ops.lam_ops
    if spec["direction"] == "fwd":
        return lambda: ops.forward(x, f, sigma, r, None)
    out, lse = ops.forward(x, f, sigma, r, None)
    return lambda: ops.backward(grad, x, f, sigma, r, None, out, lse)


def torch_profile(fn, seconds: float) -> dict[str, float]:
    """Self CPU time per phase from torch.profiler: only the ATen operators the kernel calls are
    resolved; the rest of the operator's own time is one phase."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
    groups = [
        ("GEMM (aten::mm / addmm_: BLAS and dispatch)", ("aten::mm", "aten::addmm", "aten::addmm_")),
        ("pixel_major copies and views", ("aten::copy_", "aten::contiguous", "aten::clone", "aten::permute")),
        ("tensor views and allocation", ("aten::t", "aten::transpose", "aten::as_strided", "aten::empty")),
        ("the operator's own loops (unresolved without perf)", ("lam_ops::",)),
    ]
    out: dict[str, float] = {}
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    for e in events:
        name = next((g for g, prefixes in groups if e.key.startswith(prefixes)), OTHER)
        out[name] = out.get(name, 0.0) + 100.0 * e.self_cpu_time_total / total
    return out


def worker(spec: dict) -> None:
    """Warm-up, 'ready' on stdout, calls for spec['seconds'] (+ a margin for perf to attach and
    stop), then a JSON line with the time per call (and the torch.profiler breakdown if asked)."""
    torch.set_num_threads(spec["threads"])
    fn = operator_call(spec)
    fn()
    print("ready", flush=True)
    result: dict = {}
    if spec["tool"] == "torch":
        fn()
        result["phases"] = torch_profile(fn, spec["seconds"])
    times = []
    t_end = time.perf_counter() + spec["seconds"] + (0 if spec["tool"] == "torch" else 1.0)
    while not times or time.perf_counter() < t_end:
        times.append(measure.time_call(fn, torch.device("cpu")))
    result["ms"] = 1e3 * statistics.median(times)
    result["calls"] = len(times)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver


def profile_one(spec: dict, args, outdir: Path | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"worker for {spec} did not start")
        report_text = None
        if spec["tool"] == "perf":
            with tempfile.TemporaryDirectory() as tmp:
                data = str((outdir or Path(tmp)) / f"{label(spec)}.perf.data")
                rec = [args.perf, "record", "-q", "-e", "cpu-clock", "-F", str(args.freq), "-g", "-o", data]
                subprocess.run([*rec, "-p", str(proc.pid), "--", "sleep", str(spec["seconds"])], check=True)
                rep = [args.perf, "report", "-i", data, *REPORT_ARGS]
                report_text = subprocess.run(rep, capture_output=True, text=True, check=True).stdout
            if outdir is not None:
                (outdir / f"{label(spec)}.report.txt").write_text(report_text)
        result = json.loads(proc.stdout.readline())
    finally:
        proc.stdout.close()
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"worker for {spec} exited with {proc.returncode}")
    if report_text is not None:
        samples = parse_perf_report(report_text)
        result["phases"] = breakdown(samples)
        result["top"] = [(s.percent, s.symbol) for s in sorted(samples, key=lambda s: -s.percent)[: args.top]]
    return result


def label(spec: dict) -> str:
    r = "None" if spec["radius"] is None else spec["radius"]
    return f"B{spec['B']}_C{spec['C']}_D{spec['D']}_{spec['size']}_r{r}_{spec['direction']}"


def combine(fwd: dict, bwd: dict) -> dict[str, float]:
    """fwd+bwd: the two breakdowns weighted by the time of each call."""
    wf, wb = fwd["ms"], bwd["ms"]
    keys = set(fwd["phases"]) | set(bwd["phases"])
    return {k: (wf * fwd["phases"].get(k, 0) + wb * bwd["phases"].get(k, 0)) / (wf + wb) for k in keys}


def without(columns: dict[str, dict[str, float]], phase: str) -> dict[str, dict[str, float]]:
    """The columns renormalised to 100 without one phase (the OpenMP runtime: its spin grows with
    the machine's load, as a worker waits at a barrier for a descheduled one)."""
    out = {}
    for name, col in columns.items():
        rest = 100.0 - col.get(phase, 0.0)
        out[name] = {k: 100.0 * v / rest for k, v in col.items() if k != phase} if rest > 0 else {}
    return out


def phase_table(columns: dict[str, dict[str, float]], times: dict[str, float]) -> str:
    """Markdown: one row per phase (in PHASES' order, 'other' last), one column per profiled shape
    and direction, % of its samples; phases under 0.05% everywhere are left out."""
    seen = [k for c in columns.values() for k in c if k != OTHER]
    names = list(dict.fromkeys([n for n, _ in PHASES if n in seen] + seen + [OTHER]))
    head = "| phase | " + " | ".join(columns) + " |"
    ms = " | ".join(f"{times[c]:.1f}" for c in columns)
    lines = [head, "|---" * (len(columns) + 1) + "|", f"| ms per call | {ms} |"]
    for n in names:
        vals = [columns[c].get(n, 0.0) for c in columns]
        if max(vals) >= 0.05:
            lines.append(f"| {n} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The kernel's GEMMs: waste and achieved rate


def tile_side(radius: int | None) -> int:
    return 4 if radius is not None and 0 <= radius <= 2 else 8  # csrc/cpu/lam_cpu.cpp's tile_side


def gemm_pairs(H: int, W: int, radius: int | None) -> tuple[int, int]:
    """(pairs the tiled kernel's f.f GEMMs compute, admissible pairs) over one image: each query tile
    is multiplied against the key rectangle covering its windows."""
    s = tile_side(radius)
    computed = used = 0
    for y0 in range(0, H, s):
        for x0 in range(0, W, s):
            qh, qw = min(s, H - y0), min(s, W - x0)
            if radius is None:
                kh, kw = H, W
            else:
                kh = min(H, y0 + qh + radius) - max(0, y0 - radius)
                kw = min(W, x0 + qw + radius) - max(0, x0 - radius)
            computed += qh * qw * kh * kw
    for y in range(H):
        for x in range(W):
            if radius is None:
                used += H * W
            else:
                used += (min(H, y + radius + 1) - max(0, y - radius)) * (min(W, x + radius + 1) - max(0, x - radius))
    return computed, used


def kernel_gemm_shapes(C: int, D: int, radius: int | None, size: int) -> list[tuple[str, int, int, int]]:
    """(what, M, N, K) of an interior tile's GEMM calls (key blocks of at most 1024 keys,
    contractions split at 256, as csrc/cpu/lam_cpu.cpp does)."""
    s = tile_side(radius)
    keys = size * size if radius is None else min(size, s + 2 * radius) ** 2
    width = size if radius is None else min(size, s + 2 * radius)
    block = min(keys, width * max(1, 1024 // width))
    M, k = s * s, min(256, block)
    return [
        ("fwd+bwd: f_a . f_b (A B^T)", M, block, min(D, 256)),
        ("fwd: acc += P x", M, C, k),
        ("bwd: g_a . x_b, x_a . g_b", M, block, C),
        ("bwd: df_a += dS f_b", M, D, k),
    ]


def best_times(fns: dict, rounds: int = 9, burst_seconds: float = 0.03) -> dict:
    """Seconds per call of each fn: the best of `rounds` short bursts, taken round-robin so that a
    shared machine's load falls on all of them alike, and the fastest burst is the closest to the
    unloaded rate."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            while not n or time.perf_counter() - t0 < burst_seconds:
                fn()
                n += 1
            best[key] = min(best[key], (time.perf_counter() - t0) / n)
    return best


def gemm_report(C: int, dims: list[int], radii: list, size: int) -> str:
    """The kernel's GEMM shapes: the f.f pairs computed per admissible one, and torch.mm(A, B^T,
    out=C)'s rate on one thread, without and with the per-call overhead (a 1x1x1 mm's, which the
    kernel pays too through at::mm_out, less Python's share), against a 1024^3 matmul's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shapes = [(D, r, *shape) for r in radii for D in dims for shape in kernel_gemm_shapes(C, D, r, size)]
        n = 1024
        x, y = torch.randn(n, n), torch.randn(n, n)
        fns = {"peak": lambda: x @ y}
        tiny = torch.randn(1, 1), torch.randn(1, 1), torch.empty(1, 1)
        fns["call"] = lambda: torch.mm(tiny[0], tiny[1].t(), out=tiny[2])
        for _, _, _, M, N, K in shapes:
            if (M, N, K) not in fns:
                a, b, c = torch.randn(M, K), torch.randn(N, K), torch.empty(M, N)
                fns[(M, N, K)] = lambda a=a, b=b, c=c: torch.mm(a, b.t(), out=c)
        best = best_times(fns)
        peak, over = 2 * n**3 / best["peak"] / 1e9, best["call"]
        lines = [
            f"float32 {n}^3 matmul, 1 thread: {peak:.0f} GFLOP/s; a 1x1x1 torch.mm call: {1e6 * over:.1f} us "
            "(every time: the best of 9 bursts, round-robin)",
            "",
            "| radius | computed / admissible f.f pairs | GEMM (M x N x K) | what | GFLOP/s (BLAS alone) | "
            f"with the call | % of {n}^3 (BLAS alone) |",
            "|---|---|---|---|---|---|---|",
        ]
        for D, r, what, M, N, K in shapes:
            computed, used = gemm_pairs(size, size, r)
            t, flop = best[(M, N, K)], 2 * M * N * K
            blas = flop / max(t - over, 1e-9) / 1e9
            lines.append(
                f"| {r} | {computed / used:.2f}x | {M} x {N} x {K} (D={D}) | {what} | {blas:.0f} | "
                f"{flop / t / 1e9:.0f} | {100 * blas / peak:.0f}% |"
            )
        return "\n".join(lines)
    finally:
        torch.set_num_threads(threads)


def radius_arg(s: str) -> int | None:
    if s.lower() == "none":
        return None
    try:
        r = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"radius must be an integer >= 0 or 'none', got {s!r}") from None
    if r < 0:
        raise argparse.ArgumentTypeError(f"radius must be an integer >= 0 or 'none', got {s!r}")
    return r


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dims", type=int, nargs="+", default=[16, 256], help="guidance feature dims D")
    p.add_argument("--radii", type=radius_arg, nargs="+", default=[6, 12], help="window radii ('none': global)")
    p.add_argument("--batch", type=int, default=2, help="batch size B")
    p.add_argument("--channels", type=int, default=21, help="value channels C (classes)")
    p.add_argument("--size", type=int, default=96, help="square image side (96: a 384 crop at stride 4)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of x, f and sigma")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of the worker")
    p.add_argument("--seconds", type=float, default=3.0, help="sampled seconds per shape and direction")
    p.add_argument("--perf", default="perf", help="the perf executable")
    p.add_argument("--freq", type=int, default=1000, help="perf sampling frequency (Hz)")
    p.add_argument("--tool", choices=["auto", "perf", "torch"], default="auto", help="auto: perf if it works")
    p.add_argument("--top", type=int, default=12, help="hottest symbols listed per shape (perf only)")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM-shape microbenchmark")
    p.add_argument("--out", type=Path, help="keep perf.data, perf report texts and profile.json here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one shape's loop (JSON spec)
    args = p.parse_args(argv)
    for name in ("batch", "channels", "size", "threads", "freq"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if min(args.dims) < 1:
        p.error(f"--dims must be >= 1, got {args.dims}")
    if args.seconds <= 0:
        p.error("--seconds must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))
        return 0
    tool = args.tool
    if tool != "torch":
        reason = perf_unavailable(args.perf)
        if reason is not None:
            if tool == "perf":
                print(f"profile_cpu: {reason}", file=sys.stderr)
                return 2
            print(
                f"profile_cpu: {reason}.\nprofile_cpu: falling back to torch.profiler: only the ATen operators "
                "the kernel calls (mm, addmm_, copies) are resolved, not its own loops, and the profiler's "
                "per-operator overhead inflates the GEMM share.",
                file=sys.stderr,
            )
        tool = "torch" if reason is not None else "perf"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    base = {"B": args.batch, "C": args.channels, "size": args.size, "dtype": args.dtype}
    base.update(threads=args.threads, seconds=args.seconds, tool=tool)
    columns, times, tops, results = {}, {}, {}, []
    shapes = [(D, r) for D in args.dims for r in args.radii]
    with tqdm(total=2 * len(shapes), desc="profile_cpu", unit="run", disable=None) as bar:
        for D, r in shapes:
            per = {}
            for direction in ("fwd", "bwd"):
                spec = {**base, "D": D, "radius": r, "direction": direction}
                bar.set_postfix_str(label(spec))
                try:
                    per[direction] = profile_one(spec, args, args.out)
                except (RuntimeError, subprocess.CalledProcessError) as e:  # the worker's error is above
                    print(f"profile_cpu: {label(spec)}: {e}", file=sys.stderr)
                    return 1
                results.append({**spec, **per[direction]})
                bar.update()
            name = f"D{D} r{r}"
            for direction in ("fwd", "bwd"):
                columns[f"{name} {direction}"] = per[direction]["phases"]
                times[f"{name} {direction}"] = per[direction]["ms"]
                tops[f"{name} {direction}"] = per[direction].get("top", [])
            columns[f"{name} fwd+bwd"] = combine(per["fwd"], per["bwd"])
            times[f"{name} fwd+bwd"] = per["fwd"]["ms"] + per["bwd"]["ms"]
    cpu = measure.machine_info(torch.device("cpu"))["cpu"]
    what = "perf samples" if tool == "perf" else "torch.profiler self CPU time"
    shape = f"B={args.batch} C={args.channels} {args.size}x{args.size} {args.dtype}"
    print(
        f"\n% of {what} per phase ({cpu}, {args.threads} threads, {shape}, {Path(lam_ops.__file__).parent}; "
        "fwd+bwd weighs fwd and bwd by their times):\n"
    )
    print(phase_table(columns, times))
    if max(c.get(OPENMP, 0.0) for c in columns.values()) >= 0.5:
        print(f"\nThe same without the {OPENMP} (renormalised: the kernel's own work):\n")
        print(phase_table(without(columns, OPENMP), times))
    for col, top in tops.items():
        if top:
            print(f"\nhottest symbols, {col}:")
            for pct, sym in top:
                print(f"  {pct:6.2f}%  {sym[:110]}")
    if not args.no_gemm:
        print("\nThe kernel's GEMMs (interior tile), torch.mm on one thread:\n")
        print(gemm_report(args.channels, args.dims, args.radii, args.size))
    if args.out is not None:
        (args.out / "profile.json").write_text(json.dumps({"tool": tool, "cpu": cpu, "runs": results}, indent=1))
        print(f"\nwrote {args.out}/profile.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
