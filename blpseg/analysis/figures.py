"""Figures of the analyses (matplotlib, no display needed) and their CSV files."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.classes import palette  # noqa: E402
from ..data.transforms import denormalize  # noqa: E402

LABELS = {
    "masks": "full masks",
    "scribbles": "scribbles",
    "p_scrib": "weighted by max p_scrib",
    "p_seg": "weighted by max p_seg",
}


def write_bias(result: dict, csv_path: str, png_path: str, title: str = "") -> None:
    """Fig. 1 (masks against scribbles) and, where present, Fig. 7a (p_scrib, p_seg weighted)."""
    edges = result["edges"]
    series = [s for s in LABELS if s in result]
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["bin_low", "bin_high", *series])
        for i in range(len(edges) - 1):
            w.writerow([f"{edges[i]:.4f}", f"{edges[i + 1]:.4f}", *(f"{result[s]['fraction'][i]:.6f}" for s in series)])
        w.writerow(["mean", "", *(f"{result[s]['mean']:.6f}" for s in series)])
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for s in series:
        ax.plot(
            centres,
            [100 * v for v in result[s]["fraction"]],
            marker="o",
            label=f"{LABELS[s]} (mean {result[s]['mean']:.2f})",
        )
    ax.set_xlabel("relative distance to the boundary (0: boundary, 1: deepest)")
    ax.set_ylabel("share of pixels (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def plot_loss_maps(rows: list[tuple[dict, dict]], path: str) -> None:
    """One row per (item, maps): the image with its scribbles, p_scrib, p_seg, the BLP weight."""
    colours = palette()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), dpi=110, squeeze=False)
    titles = ("image + scribbles", "p_scrib (GT class)", "p_seg (GT class)", "BLP weight")
    for r, (item, maps) in enumerate(rows):
        rgb = denormalize(item["image"]).permute(1, 2, 0).numpy()
        on = item["scribbled"]
        rgb[on] = colours[np.clip(item["mask"][on], 0, 255)] / 255.0
        panels = (rgb, maps["p_scrib"], maps["p_seg"], maps["weight"])
        for c, (ax, panel) in enumerate(zip(axes[r], panels, strict=True)):
            im = ax.imshow(panel, vmin=0, vmax=1, cmap=None if c == 0 else "viridis", interpolation="nearest")
            if c > 0:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            ax.set_title(titles[c] if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(item["name"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
