"""The `blpseg` command: train, eval, predict, make-synthetic, convert-scribbles, scribblize."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_CONFIG = os.path.join("configs", "synthetic.yaml")


def _train(args) -> int:
    from .config import load_config
    from .engine.train import train

    cfg = load_config(args.config, args.overrides)
    resume = args.resume
    if resume == "last":
        resume = os.path.join(cfg["out_dir"], "last.pt")
    out = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {out['out_dir']} (checkpoint {out['checkpoint']}, metrics train.csv / val.csv, tensorboard/)")
    return 0


def _load_model(checkpoint: str, overrides):
    import torch

    from .config import apply_overrides, class_names
    from .engine.checkpoint import load_checkpoint
    from .engine.distributed import set_threads
    from .models import build_model

    state = load_checkpoint(checkpoint)
    cfg = apply_overrides(state["config"], overrides)
    set_threads(cfg.get("threads"))
    names = class_names(cfg)
    model = build_model(len(names), **{**cfg["model"], "pretrained": None})
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if cfg.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), cfg, names, device


def _eval(args) -> int:
    from .data.folder import build_dataset
    from .data.transforms import EvalTransform
    from .engine.distributed import Dist
    from .engine.evaluate import evaluate, format_table
    from .engine.plots import plot_boundary_precision

    model, cfg, names, device = _load_model(args.checkpoint, args.overrides)
    data = cfg["data"]
    dataset = build_dataset(data, data["val"], len(names), EvalTransform())
    result = evaluate(model, dataset, len(names), cfg.get("eval", {}), Dist(device=device))
    print(format_table(result, names))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval.json")
    with open(out, "w") as fh:
        json.dump({"checkpoint": args.checkpoint, "eval": cfg.get("eval", {}), **result}, fh, indent=1)
    figure = os.path.splitext(out)[0] + "_boundary_precision.png"
    plot_boundary_precision(result, figure)
    print(f"results: {out}, {figure}")
    return 0


def _predict(args) -> int:
    from .data.io import read_image, write_label
    from .data.transforms import normalize
    from .engine.inference import predict_probs

    model, cfg, _, device = _load_model(args.checkpoint, args.overrides)
    ev = cfg.get("eval", {})
    for path in args.images:
        x = normalize(read_image(path))[None].to(device)
        pred = predict_probs(model, x, ev.get("scales", [1.0]), bool(ev.get("flip", False)))[0].argmax(0)
        out = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + ".png")
        write_label(out, pred.cpu().numpy())
        print(out)
    return 0


def _make_synthetic(args) -> int:
    from .data.synthetic import make_synthetic

    make_synthetic(args.root, args.num_train, args.num_val, args.size, args.seed)
    print(f"synthetic set written to {args.root}")
    return 0


def _convert(args) -> int:
    from .data.classes import CLASS_SETS
    from .data.scribbles import convert_scribbles

    n = convert_scribbles(args.xml_dir, args.out_dir, CLASS_SETS[args.classes], args.width, args.image_dir)
    print(f"{n} scribble PNGs written to {args.out_dir}")
    return 0


def _scribblize(args) -> int:
    from .data.scribbles import scribblize

    n = scribblize(args.mask_dir, args.out_dir, args.seed, width=(args.min_width, args.max_width), min_area=args.min_area)
    print(f"{n} scribble PNGs written to {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blpseg", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    overrides = dict(nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4 model.radius=null")

    t = sub.add_parser("train", help="train BLPSeg (under torchrun for DDP)")
    t.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    t.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from a checkpoint; without a path, <out_dir>/last.pt")  # fmt: skip
    t.add_argument("overrides", **overrides)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU, per-class IoU and boundary precision on the config's val split")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by train (holds its config)")
    e.add_argument("--out", default=None, help="results JSON (default: eval.json next to the checkpoint)")
    e.add_argument("overrides", **overrides)
    e.set_defaults(func=_eval)

    pr = sub.add_parser("predict", help="colourised (palette PNG) masks for images")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", default="predictions", help="output folder (default predictions/)")
    pr.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. eval.flip=true")
    pr.set_defaults(func=_predict)

    s = sub.add_parser("make-synthetic", help="write the synthetic scribble set (VOC layout)")
    s.add_argument("--root", default="data/synthetic")
    s.add_argument("--num-train", type=int, default=300)
    s.add_argument("--num-val", type=int, default=60)
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_make_synthetic)

    c = sub.add_parser("convert-scribbles", help="rasterise PASCAL-Scribble XML files to PNGs (255 = not scribbled)")
    c.add_argument("xml_dir")
    c.add_argument("out_dir")
    c.add_argument("--classes", choices=("voc", "context"), default="voc")
    c.add_argument("--width", type=int, default=3, help="line width in pixels (default 3)")
    c.add_argument("--image-dir", default=None, help="JPEGImages folder, for XML files without <size>")
    c.set_defaults(func=_convert)

    z = sub.add_parser("scribblize", help="simulate annotators' scribbles on a folder of PNG masks")
    z.add_argument("mask_dir")
    z.add_argument("out_dir")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--min-width", type=int, default=1)
    z.add_argument("--max-width", type=int, default=3)
    z.add_argument("--min-area", type=int, default=16, help="regions smaller than this get no scribble")
    z.set_defaults(func=_scribblize)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, FloatingPointError, OSError, ImportError) as e:
        print(f"blpseg {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
