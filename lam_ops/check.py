"""Checks this install on one device: every backend usable there against the reference backend
(values, lse and all gradients, computed in float64 on the same inputs) in each dtype it supports,
and torch.autograd.gradcheck in float64 where it supports float64. Exit status 0 only when all pass.

    python -m lam_ops.check                    # the cpu device: cpp (and reference's gradcheck)
    python -m lam_ops.check --device cuda      # cuda and triton on the GPU
    python -m lam_ops.check --device cuda --bench   # plus a short benchmark against the peers
    TRITON_INTERPRET=1 python -m lam_ops.check --backends triton   # triton on CPU tensors (slow)

--bench runs benchmarks/bench_lam.py of the source checkout (the peers live there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from .backends import BACKENDS
from .functional import available_backends, local_aggregate
from .testing import Case, assert_matches_reference, make_inputs

# Borders, r = 0, a window larger than the image, radius None, key masks with queries that see no
# key, odd sizes, non-contiguous inputs, and BLPSeg's C = 21 / D = 16 over several tiles.
CASES = [
    Case(1, 3, 4, 5, 7, 0),
    Case(2, 5, 3, 7, 9, 2, "random"),
    Case(1, 2, 8, 4, 4, 10),
    Case(2, 3, 4, 5, 6, None, "random"),
    Case(2, 4, 5, 9, 8, 3, "sparse"),
    Case(1, 21, 16, 11, 13, 4, contiguous=False),
    Case(2, 21, 16, 19, 23, 6, "random"),
]
# With C, D ~ 20 the rounding of half inputs alone exceeds the half tolerances: small cases only.
HALF_CASES = CASES[:5]
GRADCHECK_CASES = [Case(2, 3, 4, 5, 6, 1, "sparse"), Case(1, 2, 3, 4, 5, None, "random")]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: " + (text.splitlines()[0] if text else "")


def _why_unsupported(name: str, case: Case, dtype: torch.dtype, device: str):
    """The backend's own capability check on inputs of this case."""
    x, f, sigma, key_mask = make_inputs(case, dtype, device, requires_grad=False)
    return BACKENDS[name].unsupported(x, f, sigma, case.radius, key_mask)


def compare(name: str, dtype: torch.dtype, device: str) -> tuple[str, str]:
    cases = HALF_CASES if dtype in (torch.float16, torch.bfloat16) else CASES
    why = _why_unsupported(name, cases[0], dtype, device)
    if why is not None:
        return "n/a", why
    for case in cases:
        assert_matches_reference(case, name, dtype, device)
    return "ok", f"{len(cases)} cases: out, lse, dx, df, dsigma"


def gradcheck(name: str, device: str) -> tuple[str, str]:
    why = _why_unsupported(name, GRADCHECK_CASES[0], torch.float64, device)
    if why is not None:
        return "n/a", f"no float64 ({why}); its gradients are compared with the reference above"
    for case in GRADCHECK_CASES:
        x, f, sigma, key_mask = make_inputs(case, torch.float64, device)
        fn = lambda x, f, sigma: local_aggregate(x, f, sigma, case.radius, key_mask, backend=name)  # noqa: B023
        torch.autograd.gradcheck(fn, (x, f, sigma))  # raises GradcheckError on a mismatch
    return "ok", f"{len(GRADCHECK_CASES)} cases, float64"


def run_checks(device: str, names: list[str]) -> list[tuple[str, str, str, str]]:
    """(backend, check, status, detail) rows; status ok, FAIL or n/a."""
    rows = []
    for name in names:
        checks = (
            []
            if name == "reference"
            else [(f"vs reference {str(d).replace('torch.', '')}", compare, (name, d, device)) for d in DTYPES]
        )
        checks.append(("gradcheck", gradcheck, (name, device)))
        for label, fn, fn_args in checks:
            t0 = time.perf_counter()
            try:
                status, detail = fn(*fn_args)
            except Exception as e:  # noqa: BLE001  a failed check is a row of the report, not a traceback
                status, detail = "FAIL", _first_line(e)
            rows.append((name, label, status, f"{detail} ({time.perf_counter() - t0:.1f} s)"))
            print(f"  {name:<10} {label:<24} {status:<5} {rows[-1][3]}", flush=True)
    return rows


def bench(device: str, out: Path, backends: list[str]) -> int:
    """A short run of benchmarks/bench_lam.py: the checked backends against the peers that start
    quickly (the dense form, and FlexAttention on a GPU; compiling it on a CPU takes minutes);
    tiny shapes on a CPU, the paper's B=2, C=21, D=16 slice at 96x96 on a GPU."""
    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (bench_dir / "bench_lam.py").is_file():
        print(
            f"--bench needs benchmarks/bench_lam.py of the source checkout, not found at {bench_dir}", file=sys.stderr
        )
        return 1
    sys.path.insert(0, str(bench_dir))
    import bench_lam

    cpu = torch.device(device).type == "cpu"
    grid = ["--quick"] if cpu else ["--dims", "16", "--sizes", "--repeat", "3"]
    peers = [
        p for p in (("dense", "unfold") if cpu else ("dense", "flex")) if bench_lam.peers.PEERS[p].unavailable() is None
    ]
    impls = [b for b in backends if b != "reference"] + peers  # reference: the dense form again
    return bench_lam.main(
        [*grid, "--impls", *impls, "--device", device, "--out", str(out), "--note", "python -m lam_ops.check --bench"]
    )


def out_dir_problem(path: Path) -> str | None:
    """Why the benchmark could not write its files into folder `path` (made if missing), or None:
    found before the checks run, not after them. Tried by creating a file, which is what counts
    (a read-only file system, or root's access rights, fool os.access)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing == path else f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        what = "cannot write to it" if existing == path else f"cannot make it in {existing}"
        return f"{what}: {e.strerror or e}"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lam_ops.check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--device", default="cpu", help="torch device to check (cpu, cuda, cuda:1, ...)")
    p.add_argument(
        "--backends", nargs="+", choices=list(BACKENDS), help="only these (default: every backend usable on --device)"
    )
    p.add_argument(
        "--bench", action="store_true", help="then a short benchmark against the peers (benchmarks/bench_lam.py)"
    )
    p.add_argument(
        "--bench-out",
        type=Path,
        help="folder for the benchmark's files, made if missing (default: a new temporary folder); needs --bench",
    )
    args = p.parse_args(argv)
    if args.bench_out is not None:
        if not args.bench:
            p.error("--bench-out is where --bench writes its files: add --bench")
        problem = out_dir_problem(args.bench_out)
        if problem is not None:
            p.error(f"--bench-out {args.bench_out}: {problem}")
    try:
        device = str(torch.device(args.device))
    except RuntimeError as e:
        p.error(f"--device: {e}")
    usable = available_backends(device)
    # The Triton interpreter (CPU tensors) is slow and for debugging: only when asked by name.
    names = args.backends or [n for n in usable if BACKENDS[n].picked_by_auto(device)]
    print(f"lam_ops.check on {device}: torch {torch.__version__}; backends {', '.join(names) or 'none'}")
    for name in BACKENDS:
        if name not in usable:
            print(f"  {name:<10} {'(not usable here)':<24} {'n/a':<5} {BACKENDS[name].unavailable(device)}")
        elif name not in names:
            print(f"  {name:<10} {'(not asked for)':<24} {'n/a':<5} checked only when named in --backends")
    failed = [n for n in names if n not in usable]
    for name in failed:
        print(f"  {name:<10} asked for with --backends, but it cannot run on {device}", file=sys.stderr)
    rows = run_checks(device, [n for n in names if n in usable])
    failed += [f"{b} {c}" for b, c, status, _ in rows if status == "FAIL"]
    passed = sum(status == "ok" for _, _, status, _ in rows)
    if args.bench and not failed:
        out = args.bench_out or Path(tempfile.mkdtemp(prefix="lam_ops_bench_"))
        print(f"benchmark on {device} -> {out}", flush=True)
        if bench(device, out, [n for n in names if n in usable]) != 0:
            failed.append("benchmark")
        elif (out / "bench_lam.md").is_file():
            print((out / "bench_lam.md").read_text())
    if failed or passed == 0:
        print(f"FAILED: {', '.join(failed) or 'nothing was checked'}")
        return 1
    print(f"all {passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
