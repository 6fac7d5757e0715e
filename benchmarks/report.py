"""Derived columns, the markdown table and the PNG plots of a bench_lam run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def add_comparisons(rows: list[dict], meta: dict) -> None:
    """Adds to every measured row its speed relative to the fastest peer measured on the same
    configuration and mode in this run (`vs_best_peer` = best peer's median / this median, > 1 is
    faster) and its useful rate as a fraction of the machine's float32 matmul rate."""
    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            groups[(r["section"], r["config"], r["mode"])].append(r)
    for group in groups.values():
        peers = [r for r in group if r["kind"] == "peer"]
        best = min(peers, key=lambda r: r["median_s"]) if peers else None
        for r in group:
            r["best_peer"] = best["impl"] if best else None
            r["vs_best_peer"] = best["median_s"] / r["median_s"] if best else None
            r["matmul_fraction"] = r["gflops"] / meta["matmul_gflops"]


def _num(v, fmt):
    return "" if v is None else format(v, fmt)


COLUMNS = (
    "impl",
    "median ms",
    "min ms",
    "max ms",
    "reps",
    "1st call s",
    "peak MB",
    "peak RSS MB",
    "GFLOP/s",
    "% matmul",
    "x best peer",
    "status",
)


def _cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["impl"]] + [""] * (len(COLUMNS) - 2) + [r["status"]]
    vs = "" if r["vs_best_peer"] is None else f"{r['vs_best_peer']:.2f} ({r['best_peer']})"
    return [
        r["impl"] if r["kind"] == "lam_ops" else f"{r['impl']} (peer)",
        _num(1e3 * r["median_s"], ".1f"),
        _num(1e3 * r["min_s"], ".1f"),
        _num(1e3 * r["max_s"], ".1f"),
        str(r["repeats"]),
        _num(r["first_call_s"], ".2f"),
        _num(r["peak_mb"], ".1f"),
        _num(r["peak_rss_mb"], ".1f"),
        _num(r["gflops"], ".2f"),
        _num(100 * r["matmul_fraction"], ".1f"),
        vs,
        "ok",
    ]


def header(title: str, meta: dict, facts: list[str] = ()) -> list[str]:
    """A benchmark markdown's title and run facts: date, commit, machine, torch, `facts`, arguments, note."""
    m = meta["machine"]
    lines = [
        f"# {title}",
        "",
        f"- date: {meta['date']}; lam_ops commit: {meta['lam_ops_commit']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} logical CPUs, {m['torch_threads']} torch threads; {m['platform']}"
        + (f"; GPU {m['gpu']}" if "gpu" in m else ""),
        f"- torch {m['torch']}, Python {m['python']}, device {m['device']}",
        *facts,
        f"- command arguments: `{_args_text(meta['args'])}`",
    ]
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    lines = header(
        "LAM operator benchmark (bench_lam.py)",
        meta,
        [
            f"- float32 matmul rate (2048^3, measured in this run): {meta['matmul_gflops']:.1f} GFLOP/s at the start, "
            + (
                f"{meta['matmul_gflops_end']:.1f} at the end"
                if "matmul_gflops_end" in meta
                else "run stopped before the end"
            ),
        ],
    )
    lines += [
        "",
        "Times are wall-clock per call (forward = inference, inputs not requiring grad; fwd+bwd = forward "
        "and torch.autograd.grad for x, f and sigma). Peak MB is the extra memory torch's allocator holds "
        "at the peak of one call (inputs not counted); peak RSS MB is the growth of the process's resident "
        "set over one call. GFLOP/s counts useful work only: per admissible (query, key) pair 2D + 2C + 5 "
        "(fwd) or 8D + 6C + 20 (fwd+bwd). % matmul is that rate over the float32 matmul rate above. "
        "x best peer is the fastest peer's median time over this row's (> 1: faster than every peer).",
        "",
        "Implementations: " + "; ".join(f"`{n}`: {v['summary']}" for n, v in meta["impls"].items()) + ".",
    ]
    lines += [f"Not run: `{n}`: {why}." for n, why in meta.get("not_run", {}).items()]
    lines += ["", "## At a glance", "", *at_a_glance(rows)]
    by_section = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_section[r["section"]][(r["config"], r["mode"])].append(r)
    titles = {"paper": "Paper shapes (96x96 = a 384x384 crop at stride 4)", "sweep": "Image-size sweep"}
    for section, groups in by_section.items():
        lines += ["", f"## {titles.get(section, section)}"]
        for (config, mode), group in groups.items():
            lines += [
                "",
                f"### {config}, {mode} ({group[0]['useful_gflop']:.2f} useful GFLOP)",
                "",
                "| " + " | ".join(COLUMNS) + " |",
                "|" + "---|" * len(COLUMNS),
            ]
            lines += ["| " + " | ".join(_cells(r)) + " |" for r in group]
    return "\n".join(lines) + "\n"


def _ms_and_ratio(peer: dict | None, ours: dict) -> str:
    if peer is None:
        return ""
    if peer["status"] != "ok":
        return peer["status"].split(":")[0]
    return f"{1e3 * peer['median_s']:.1f} ({peer['median_s'] / ours['median_s']:.1f}x)"


def at_a_glance(rows: list[dict]) -> list[str]:
    """One line per paper shape and mode: the fastest lam_ops backend against the authors' dense
    formulation, the offset loop and the fastest peer (ratios > 1: lam_ops is faster)."""
    groups = defaultdict(list)
    for r in rows:
        if r["section"] == "paper":
            groups[(r["config"], r["mode"])].append(r)
    lines = [
        "| shape | mode | fastest lam_ops | ms | peak MB | % matmul | dense ms (ratio) | offset_loop ms (ratio) "
        "| fastest peer ms (ratio) |",
        "|" + "---|" * 9,
    ]
    for (config, mode), group in groups.items():
        ours = [r for r in group if r["kind"] == "lam_ops" and r["status"] == "ok" and r["impl"] != "reference"]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["median_s"])
        by_impl = {r["impl"]: r for r in group}
        peers = [r for r in group if r["kind"] == "peer" and r["status"] == "ok"]
        fastest = min(peers, key=lambda r: r["median_s"]) if peers else None
        lines.append(
            f"| {config} | {mode} | {best['impl']} | {1e3 * best['median_s']:.1f} | {best['peak_mb']:.1f} | "
            f"{100 * best['matmul_fraction']:.1f} | {_ms_and_ratio(by_impl.get('dense'), best)} | "
            f"{_ms_and_ratio(by_impl.get('offset_loop'), best)} | "
            + (f"{fastest['impl']} {_ms_and_ratio(fastest, best)}" if fastest else "")
            + " |"
        )
    return lines


def _args_text(args: dict) -> str:
    def text(k, v):
        flag = "--" + k.replace("_", "-")
        if v is True:
            return flag
        return f"{flag} {' '.join(map(str, v)) if isinstance(v, list) else v}"

    return " ".join(text(k, v) for k, v in args.items() if v not in (None, False, "", []))


def plots(rows: list[dict], out: Path) -> list[Path]:
    """time_vs_size.png (the sweep, if run) and memory_vs_radius.png (the paper shapes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    names = sorted({r["impl"] for r in rows})
    color = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}  # one colour per impl in every panel
    modes = sorted({r["mode"] for r in rows}, key=len)
    written = []

    sweep = [r for r in ok if r["section"] == "sweep"]
    if sweep:  # a run without the sweep (--sizes with no value) draws no empty plot
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            series = defaultdict(list)
            for r in sweep:
                if r["mode"] == mode:
                    series[r["impl"]].append((r["H"], r["median_s"], r["min_s"], r["max_s"]))
            for impl, pts in sorted(series.items()):
                pts.sort()
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                    marker="o",
                    capsize=3,
                    label=impl,
                    color=color[impl],
                )
            s = sweep[0]
            title = f"{mode}: B={s['B']}, C={s['C']}, D={s['D']}, r={s['radius']}"
            sizes = sorted({r["H"] for r in sweep})
            ax.set(
                xlabel="image size (H = W)",
                ylabel="median time per call (s; bars: min to max)",
                xscale="log",
                yscale="log",
                title=title,
            )
            ax.set_xticks(sizes, [str(v) for v in sizes])
            ax.minorticks_off()
        written.append(_save(fig, out / "time_vs_size.png"))

    paper = [r for r in ok if r["section"] == "paper"]
    Ds = sorted({r["D"] for r in paper}) or [None]
    radii = [str(r) for r in sorted({r["radius"] for r in paper}, key=lambda r: (r is None, r or 0))]
    fig, axes = plt.subplots(len(modes), len(Ds), figsize=(5.5 * len(Ds), 4 * len(modes)), squeeze=False)
    for (i, mode), (j, D) in ((a, b) for a in enumerate(modes) for b in enumerate(Ds)):
        ax = axes[i][j]
        sel = [r for r in paper if r["mode"] == mode and r["D"] == D]
        if sel:  # the smallest batch and class count present: one line per implementation
            B, C = min((r["B"], r["C"]) for r in sel)
            sel = [r for r in sel if (r["B"], r["C"]) == (B, C)]
            ax.set_title(f"{mode}: B={B}, C={C}, D={D}, {sel[0]['H']}x{sel[0]['W']}")
        series = defaultdict(dict)
        for r in sel:
            series[r["impl"]][str(r["radius"])] = r["peak_mb"]
        for impl, pts in sorted(series.items()):
            xs = [k for k in radii if k in pts]
            ax.plot(
                [radii.index(k) for k in xs], [max(pts[k], 1e-3) for k in xs], marker="o", label=impl, color=color[impl]
            )
        ax.set_xticks(range(len(radii)), radii)
        ax.set(xlabel="radius", ylabel="peak extra memory (MB, torch allocator)", yscale="log")
    written.append(_save(fig, out / "memory_vs_radius.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    """Rewrites the markdown and plots of a bench_lam.json (e.g. after changing this module)."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("json", type=Path, help="a bench_lam.json; the markdown and PNGs are written next to it")
    args = p.parse_args(argv)
    result = json.loads(args.json.read_text())
    add_comparisons(result["rows"], result["meta"])  # a stopped run's file has none yet
    args.json.with_suffix(".md").write_text(markdown(result["rows"], result["meta"]))
    plots(result["rows"], args.json.parent)


if __name__ == "__main__":
    main()
