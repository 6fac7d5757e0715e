"""Figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_boundary_precision(results: dict, path: str, csv_path: str | None = None) -> None:
    """Precision against relative distance to the object boundary (the paper's Fig. 7b) for
    {label: evaluate() result}, e.g. a baseline against BLPSeg; optionally the numbers as CSV."""
    n = len(next(iter(results.values()))["boundary_precision"])
    if any(len(r["boundary_precision"]) != n for r in results.values()):
        raise ValueError("the results differ in their number of boundary-distance bins")
    centres = [(i + 0.5) / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for label, result in results.items():
        ax.plot(centres, [100 * v for v in result["boundary_precision"]], marker="o", label=label)
    ax.set_xlabel("relative distance to the boundary (0: boundary, 1: centre)")
    ax.set_ylabel("precision (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    if csv_path is not None:
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["bin_centre", *results])
            for i, c in enumerate(centres):
                w.writerow([f"{c:.3f}", *(f"{r['boundary_precision'][i]:.6f}" for r in results.values())])
