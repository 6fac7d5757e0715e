#!/usr/bin/env python
"""Benchmark of one BLPSeg training step (the training loop's, blpseg/engine/step.py: forward, BLP +
scribble losses, backward, AdamW step) with every available lam_ops backend, the trainable peers
(benchmarks/peers.py) in the LAM's place, and without the LAM: time, peak memory, and which
configurations fit in this machine's memory.

    python benchmarks/bench_train.py                  # the paper's shape: B=10, 384x384, ResNet-101, r=18, D=256
    python benchmarks/bench_train.py --quick --out /tmp/smoke   # CI smoke run: B=2, 64x64, ResNet-18, D=16

Every configuration runs in its own subprocess under an address-space limit (--mem-budget-gb), so
one that runs out of memory or crashes is a row that says so. A configuration whose LAM would build
HW x HW matrices over the budget is skipped before it runs. Writes bench_train.json and
bench_train.md to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the memory profiler's start-up chatter
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

import bench_lam  # noqa: E402
import isolate  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

import lam_ops  # noqa: E402
import lam_ops.modules  # noqa: E402

# imported before a configuration limits its memory: scipy's OpenBLAS (via skimage) spins when its
# start-up allocations fail
from blpseg.config import resolve  # noqa: E402
from blpseg.engine import distributed  # noqa: E402
from blpseg.engine.builders import amp_dtype, build_losses, build_optimization, model_from_config  # noqa: E402
from blpseg.engine.step import TrainStep  # noqa: E402

NO_LAM = "no_lam"


@dataclass(frozen=True)
class Shape:
    batch: int
    size: int  # square crop; the logits (and the LAM) are at size / 4
    backbone: str
    channels: int  # decoder and head width
    radius: int | None
    embed_dim: int
    num_classes: int = 21  # PASCAL VOC

    def lam_config(self) -> bench_lam.Config:
        side = self.size // 4
        return bench_lam.Config(self.batch, self.num_classes, self.embed_dim, side, side, self.radius)


SHAPES = {
    # the release's network: the deep-stem ResNet-101 of configs/voc_scribble.yaml
    "paper": Shape(10, 384, "resnet101_deepstem", 256, 18, 256),
    "quick": Shape(2, 64, "resnet18", 32, 4, 16),
}


def implementations(device: torch.device) -> list[bench_lam.Impl]:
    """bench_lam's lam_ops backends and the peers that have a backward on `device` (FlexAttention
    and NATTEN have none on the CPU)."""
    return [i for i in bench_lam.implementations(device, None) if i.trainable or device.type not in i.no_backward_on]


@contextlib.contextmanager
def lam_function(impl: bench_lam.Impl):
    """Makes LocalAggregation call a peer instead of lam_ops.local_aggregate while active; a lam_ops
    backend needs no patch (the model is built with it)."""
    if impl.kind == "lam_ops":
        yield
        return

    def call(x, f, sigma, radius, key_mask=None, backend=None):
        return impl.fn(x, f, sigma, radius, key_mask)

    with mock.patch.object(lam_ops.modules, "local_aggregate", call):
        yield


def make_batch(shape: Shape, device: torch.device):
    """Random images and scribble-like targets: ~3% of the pixels labeled with a class, the rest K."""
    g = torch.Generator().manual_seed(0)
    K = shape.num_classes
    image = torch.randn(shape.batch, 3, shape.size, shape.size, generator=g)
    labels = torch.randint(0, K, (shape.batch, shape.size, shape.size), generator=g)
    scribbled = torch.rand(shape.batch, shape.size, shape.size, generator=g) < 0.03
    return image.to(device), torch.where(scribbled, labels, torch.full_like(labels, K)).to(device)


def build_step(name: str, impls: dict, shape: Shape, device: torch.device, amp: bool):
    """The training loop's step (blpseg/engine/step.py) with the training defaults of the config
    schema (losses, AdamW, poly schedule) on `shape`'s model, on one fixed batch."""
    torch.manual_seed(0)
    impl = impls.get(name)
    cfg = resolve(
        {
            "data": {"dataset": "voc", "root": "unused"},  # the batch is make_batch's
            "model": {
                "backbone": shape.backbone,
                "channels": shape.channels,
                "lam": impl is not None,
                "radius": shape.radius,
                "embed_dim": shape.embed_dim,
                "lam_backend": impl.name if impl is not None and impl.kind == "lam_ops" else "auto",
            },
            "train": {"amp": amp, "iters": 10**6},  # a poly schedule that stays near train.lr
        }
    )
    model = model_from_config(cfg["model"], shape.num_classes, device)
    losses = build_losses(cfg["loss"], shape.num_classes, device)
    optimization = build_optimization(model, cfg["train"], cfg["train"]["iters"], device)
    train_step = TrainStep(model, losses, optimization, amp_dtype(amp), distributed.Dist(device=device))
    image, target = make_batch(shape, device)
    batch = {"image": image, "target": target}

    def step():
        train_step(batch, 0)

    state_mb = 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return step, state_mb


def run_row(name: str, args) -> dict:
    """One configuration, in the current process: warm-up step, a step under the RSS high-water
    mark (a timed sample), a step under the allocator profiler (not timed), then timed steps."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    impls = {i.name: i for i in implementations(device)}
    isolate.limit_memory(args.mem_budget_gb, device)
    row = {}
    try:
        step, row["params_and_adamw_mb"] = build_step(name, impls, SHAPES[args.shape], device, not args.no_amp)
        with lam_function(impls[name]) if name in impls else contextlib.nullcontext():
            row["first_step_s"] = measure.time_call(step, device)
            times = []
            row["peak_rss_mb"] = measure.rss_peak_mb(lambda: times.append(measure.time_call(step, device)))
            row["peak_mb"] = measure.allocator_peak_mb(step, device)
            while len(times) < args.repeat:
                times.append(measure.time_call(step, device))
        row.update(measure.summarize(times), budget_used_gb=isolate.budget_used_gb(device), status="ok")
    except Exception as e:  # noqa: BLE001  a row that says what happened
        row.update(isolate.failure(e, device))
    # the process's whole high-water mark (model, optimizer state, the first step's allocations)
    row["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def skip_reason(impl: bench_lam.Impl | None, shape: Shape, budget_gb: float) -> str | None:
    if impl is None or impl.memory_estimate is None:
        return None
    c = shape.lam_config()
    need = impl.memory_estimate(c.B, c.C, c.D, c.H, c.W, c.window_positions()) / 2**30
    if need > budget_gb:
        return f"skipped: its LAM would need ~{need:.0f} GB > budget {budget_gb:.1f} GB"
    return None


COLUMNS = (
    "configuration",
    "median s",
    "min s",
    "max s",
    "steps",
    "first step s",
    "peak MB",
    "peak RSS MB",
    "process peak RSS MB",
    "status",
)


def _cells(r: dict) -> list[str]:
    label = {"lam_ops": f"lam_ops `{r['impl']}`", "peer": f"{r['impl']} (peer)"}.get(r["kind"], "without LAM")
    if r["status"] != "ok":
        return [label] + [""] * (len(COLUMNS) - 3) + [report._num(r.get("process_peak_rss_mb"), ".0f"), r["status"]]
    return [
        label,
        report._num(r["median_s"], ".2f"),
        report._num(r["min_s"], ".2f"),
        report._num(r["max_s"], ".2f"),
        str(r["repeats"]),
        report._num(r["first_step_s"], ".2f"),
        report._num(r["peak_mb"], ".0f"),
        report._num(r["peak_rss_mb"], ".0f"),
        report._num(r["process_peak_rss_mb"], ".0f"),
        "ok",
    ]


def markdown(rows: list[dict], meta: dict) -> str:
    s = meta["shape"]
    fits = [r["impl"] for r in rows if r["status"] == "ok"]
    over = [r["impl"] for r in rows if r["status"].startswith(("skipped", "out of memory"))]
    unknown = [r["impl"] for r in rows if r["impl"] not in fits + over]  # timed out, crashed
    lines = report.header(
        "BLPSeg training step benchmark (bench_train.py)",
        meta,
        [
            f"- shape `{meta['args']['shape']}`: B={s['batch']}, {s['size']}x{s['size']} crops, {s['backbone']}, "
            f"decoder width {s['channels']}, K={s['num_classes']}, LAM r={s['radius']}, D={s['embed_dim']} "
            f"(logits {s['size'] // 4}x{s['size'] // 4}); bfloat16 autocast "
            f"{'off' if meta['args']['no_amp'] else 'on'} "
            "(the LAM runs in float32 on the CPU)",
            f"- memory: {meta['mem_total_gb']:.1f} GB in this machine; each configuration ran in a subprocess "
            f"limited to {meta['args']['mem_budget_gb']:g} GB "
            + (
                "of GPU memory" if meta["machine"]["device"].startswith("cuda") else "of address space beyond its start"
            ),
        ],
    )
    lines += [
        "",
        "One step = the training loop's (blpseg/engine/step.py): forward (autocast), BLP loss + scribble loss, "
        "backward, AdamW and poly-schedule step, with the config's training defaults, on random images and "
        "scribble-like targets (3% of pixels labeled). Times are wall-clock per step after a warm-up step "
        "(first step s). Peak MB is the extra memory torch's allocator holds at the peak of one step after "
        "the warm-up (parameters and AdamW state not counted; gradients are); peak RSS MB is the growth of the "
        "resident set over one step; process peak RSS MB is the subprocess's whole high-water mark, model, "
        "optimizer state and warm-up included. Peers replace the function LocalAggregation calls.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(_cells(r)) + " |" for r in rows),
        "",
        f"**Fit in this machine's memory** ({meta['mem_total_gb']:.0f} GB, budget "
        f"{meta['args']['mem_budget_gb']:g} GB): "
        + (", ".join(f"`{n}`" for n in fits) or "none")
        + "; **did not**: "
        + (", ".join(f"`{n}`" for n in over) or "none")
        + ("; **not determined**: " + ", ".join(f"`{n}`" for n in unknown) if unknown else "")
        + " (the status column says why).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--shape", choices=tuple(SHAPES), default="paper", help="; ".join(f"{k}: {v}" for k, v in SHAPES.items())
    )
    p.add_argument("--quick", action="store_true", help="CI smoke run: --shape quick, 2 timed steps")
    p.add_argument(
        "--impls", nargs="*", help=f"only these backends/peers (and {NO_LAM!r}); default: every trainable one"
    )
    p.add_argument("--no-amp", action="store_true", help="float32 instead of the bfloat16 autocast training uses")
    p.add_argument("--device", default="cpu", help="torch device to run on")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="timed steps per configuration, after a warm-up step and a profiled step (the paper "
        "shape takes ~80 s a step on 2 shared CPU cores: ~4 steps x 3 configurations ~ 16 min)",
    )
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="memory limit of each configuration's subprocess: address space on the CPU (default: 70%% of the "
        "memory available at start), the caching allocator's on CUDA (default: 90%% of the GPU's); a row that "
        "fails under it runs once more under the memory available then, to tell out of memory from an error "
        "(docs/benchmarks.md)",
    )
    p.add_argument(
        "--row-timeout", type=float, default=1200.0, help="seconds before a configuration's subprocess is stopped"
    )
    p.add_argument(
        "--out", type=Path, default=bench_lam.RESULTS, help="output folder for bench_train.json and bench_train.md"
    )
    p.add_argument(
        "--note", default="", help="a remark printed in the markdown (e.g. 'machine shared with other jobs')"
    )
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one configuration and print its JSON
    args = p.parse_args(argv)
    if args.quick:
        args.shape, args.repeat = "quick", min(args.repeat, 2)
    if args.mem_budget_gb is None:
        args.mem_budget_gb = isolate.default_budget_gb(torch.device(args.device))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.row is not None:
        print(json.dumps(run_row(args.row, args)))
        return 0
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    impls = {i.name: i for i in implementations(device)}
    names = list(impls) + [NO_LAM]
    if args.impls:
        unknown = set(args.impls) - set(names)
        if unknown:
            raise SystemExit(f"--impls: unknown or unavailable {sorted(unknown)}; have {names}")
        names = [n for n in names if n in args.impls]
    child_argv = [*argv, "--repeat", str(args.repeat)]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": measure.machine_info(device),
        "lam_ops_commit": bench_lam.git_commit(),
        "mem_total_gb": isolate.mem_total_gb(),
        "shape": asdict(shape),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "row"},
        "impls": {n: impls[n].summary if n in impls else "BLPSeg without the LAM (Table III 'w/o')" for n in names},
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        impl = impls.get(name)
        row = {"impl": name, "kind": impl.kind if impl else "none"}
        reason = skip_reason(impl, shape, args.mem_budget_gb)
        print(f"bench_train: {name} ...", file=sys.stderr, flush=True)
        row.update(
            {"status": reason}
            if reason
            else isolate.run_child(
                str(Path(__file__).resolve()), child_argv, name, args.row_timeout, args.mem_budget_gb, device
            )
        )
        print(
            f"bench_train: {name}: {row['status']}"
            + (f", {row['median_s']:.2f} s/step" if row["status"] == "ok" else ""),
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
        bench_lam.write_json(args.out / "bench_train.json", {"meta": meta, "rows": rows, "complete": False})
    bench_lam.write_json(args.out / "bench_train.json", {"meta": meta, "rows": rows, "complete": True})
    (args.out / "bench_train.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out}/bench_train.json and bench_train.md")
    errors = [r for r in rows if r["status"].startswith(("error", "crashed"))]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
