"""Figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_boundary_precision(result: dict, path: str, label: str = "BLPSeg") -> None:
    """Precision against relative distance to the object boundary (the paper's Fig. 7b)."""
    values = result["boundary_precision"]
    n = len(values)
    centres = [(i + 0.5) / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.plot(centres, [100 * v for v in values], marker="o", label=label)
    ax.set_xlabel("relative distance to the boundary (0: boundary, 1: centre)")
    ax.set_ylabel("precision (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
