"""The `blpseg` command: train, eval, predict, info, make-synthetic, convert-scribbles, scribblize, and
the analyses analyze-bias, loss-maps, plot-precision."""

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


def _eval(args) -> int:
    from .data.folder import build_dataset
    from .data.transforms import EvalTransform
    from .engine.checkpoint import load_model
    from .engine.distributed import Dist
    from .engine.evaluate import evaluate, format_table
    from .engine.plots import plot_boundary_precision

    model, cfg, names, device = load_model(args.checkpoint, args.overrides)
    data = cfg["data"]
    dataset = build_dataset(data, data["val"], len(names), EvalTransform())
    result = evaluate(model, dataset, len(names), cfg.get("eval", {}), Dist(device=device))
    print(format_table(result, names))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval.json")
    with open(out, "w") as fh:
        json.dump({"checkpoint": args.checkpoint, "eval": cfg.get("eval", {}), **result}, fh, indent=1)
    figure = os.path.splitext(out)[0] + "_boundary_precision.png"
    plot_boundary_precision({_run_name(args.checkpoint): result}, figure)
    print(f"results: {out}, {figure}")
    return 0


def _info(args) -> int:
    from .config import class_names, load_config
    from .models import build_model

    cfg = load_config(args.config, args.overrides)
    # counting needs no weights: the network is built as configured, randomly initialised
    model = build_model(len(class_names(cfg)), **{**cfg["model"], "pretrained": None})
    counts = model.parameter_counts()
    print(f"network of {args.config}: backbone {cfg['model']['backbone']}, {model.num_classes} classes")
    for part, n in counts.items():
        print(f"{part:<12} {n:>12,}")
    print(f"total parameters: {sum(p.numel() for p in model.parameters())}")
    return 0


def _run_name(checkpoint: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))


def _analysis_setup(args):
    """(model or None, config, class names, device) from --checkpoint or --config, with the data
    set generated first if it is the synthetic one and missing."""
    from .config import class_names, load_config
    from .engine.checkpoint import load_model
    from .engine.distributed import Dist
    from .engine.train import prepare_data

    if args.checkpoint:
        model, cfg, names, device = load_model(args.checkpoint, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        model, names, device = None, class_names(cfg), "cpu"
    prepare_data(cfg, Dist())
    return model, cfg, names, device


def _items(args, cfg, names, limit):
    from .analysis.bias import paired_items

    data = cfg["data"]
    split = args.split or data["train"]["split"]
    mask_dir = args.mask_dir or data["val"]["label_dir"]
    scribble_dir = args.scribble_dir or data["train"]["label_dir"]
    return paired_items(cfg, len(names), split, mask_dir, scribble_dir, limit)


def _analyze_bias(args) -> int:
    from .analysis.bias import annotation_bias
    from .analysis.figures import write_bias

    model, cfg, names, device = _analysis_setup(args)
    result = annotation_bias(_items(args, cfg, names, args.max_images), args.bins, model, device)
    os.makedirs(args.out, exist_ok=True)
    csv_path, png_path = os.path.join(args.out, "bias.csv"), os.path.join(args.out, "bias.png")
    title = f"{cfg['data']['dataset']}, {args.split or cfg['data']['train']['split']} split" + (
        f", model {_run_name(args.checkpoint)}" if model is not None else ""
    )
    write_bias(result, csv_path, png_path, title)
    for name in ("masks", "scribbles", "p_scrib", "p_seg"):
        if name in result:
            print(f"{name:<10} mean relative distance {result[name]['mean']:.3f}")
    print(f"results: {csv_path}, {png_path}")
    return 0


def _loss_maps(args) -> int:
    from .analysis.figures import plot_loss_maps
    from .analysis.loss_maps import loss_maps

    model, cfg, names, device = _analysis_setup(args)
    gamma = float(cfg["loss"].get("seg_options", {}).get("gamma", 2.0))
    rows = [(item, loss_maps(model, item, gamma, device)) for item in _items(args, cfg, names, args.num)]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "loss_maps.png")
    plot_loss_maps(rows, path)
    print(f"results: {path}")
    return 0


def _plot_precision(args) -> int:
    from .engine.plots import plot_boundary_precision

    labels = args.labels or [_run_name(p) for p in args.results]
    if len(labels) != len(args.results):
        raise ValueError(f"--labels must give one label per result file: {len(args.results)} files, {len(labels)} labels")
    results = {}
    for label, path in zip(labels, args.results):
        with open(path) as fh:
            results[label] = json.load(fh)
        if "boundary_precision" not in results[label]:
            raise ValueError(f"{path} holds no boundary_precision (expected an eval.json or val.json)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    csv_path = os.path.splitext(args.out)[0] + ".csv"
    plot_boundary_precision(results, args.out, csv_path)
    print(f"results: {args.out}, {csv_path}")
    return 0


def _predict(args) -> int:
    from .data.io import read_image, write_label
    from .engine.checkpoint import load_model
    from .data.transforms import normalize
    from .engine.inference import predict_probs

    model, cfg, _, device = load_model(args.checkpoint, args.overrides)
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

    i = sub.add_parser("info", help="the configured network's parameter count per part")
    i.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    i.add_argument("overrides", **overrides)
    i.set_defaults(func=_info)

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

    def analysis_args(a, checkpoint_required):
        a.add_argument("--checkpoint", required=checkpoint_required, default=None, help="a checkpoint written by train (its config is used)")
        if not checkpoint_required:
            a.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config without --checkpoint (default {DEFAULT_CONFIG})")
        a.add_argument("--split", default=None, help="image list (default: the config's train split, where the scribbles are)")
        a.add_argument("--mask-dir", default=None, help="full masks (default: the config's val label_dir)")
        a.add_argument("--scribble-dir", default=None, help="scribbles (default: the config's train label_dir)")
        a.add_argument("--out", default="analysis", help="output folder (default analysis/)")
        a.add_argument("overrides", **overrides)

    b = sub.add_parser("analyze-bias", help="relative boundary distance of scribbles vs full masks (Fig. 1; Fig. 7a with --checkpoint)")
    analysis_args(b, checkpoint_required=False)
    b.add_argument("--bins", type=int, default=10)
    b.add_argument("--max-images", type=int, default=None, help="use the first N images of the split")
    b.set_defaults(func=_analyze_bias)

    m = sub.add_parser("loss-maps", help="image + scribbles, p_scrib, p_seg and the BLP weight map (Fig. 8)")
    analysis_args(m, checkpoint_required=True)
    m.add_argument("--num", type=int, default=4, help="the first N images of the split (default 4)")
    m.set_defaults(func=_loss_maps)

    q = sub.add_parser("plot-precision", help="precision by relative boundary distance of several runs (Fig. 7b)")
    q.add_argument("results", nargs="+", help="eval.json or val.json files")
    q.add_argument("--labels", nargs="+", default=None, help="one per file (default: the run folders' names)")
    q.add_argument("--out", default="boundary_precision.png", help="PNG; the CSV is written next to it")
    q.set_defaults(func=_plot_precision)
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
