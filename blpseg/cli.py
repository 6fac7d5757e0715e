"""The `blpseg` command: train, data-summary, eval, predict, export, import-release, app, info,
make-synthetic, export-folder, convert-scribbles, scribblize, and the analyses analyze-bias,
loss-maps, plot-precision."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

DEFAULT_CONFIG = os.path.join("configs", "synthetic.yaml")
OVERWRITE = "replace files already at the outputs (never the inputs, nor files in the inputs' folders)"


def _train(args) -> int:
    from .config import config_files, dump, load_config

    overrides = list(args.overrides)
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        # `--resume key=value`: argparse took the first override for the optional path
        overrides.insert(0, args.resume)
        args.resume = "last"
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    from .engine.run_folder import check_inputs
    from .engine.train import TrainingInterrupted, train

    resume = args.resume
    if resume == "last":
        resume = os.path.join(cfg["out_dir"], "last.pt")
    check_inputs(cfg["out_dir"], config_files(args.config), resume)
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        out = train(cfg, resume=resume, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        if is_main:
            print(f"blpseg train: {_interrupted(e, args, overrides, cfg['out_dir'])}", file=sys.stderr)
        return 130
    if is_main:
        print(
            f"run folder: {out['out_dir']} (checkpoint {out['checkpoint']}, metrics train.csv / val.csv, tensorboard/)"
        )
    return 0


def _data_summary(args) -> int:
    from .config import load_config
    from .data.formats import build_split, class_names
    from .data.prepare import prepare_data
    from .data.summary import data_summary, format_summary, no_val_reason
    from .engine.distributed import Dist

    cfg = load_config(args.config, args.overrides)
    prepare_data(cfg, Dist())
    data, names = cfg["data"], class_names(cfg["data"])
    train_set = build_split(data, "train", len(names), None)
    val_set = build_split(data, "val", len(names), None) if data["val"] is not None else None
    summary = data_summary(train_set, val_set, names, no_val_reason(data))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _interrupted(e, args, overrides: list[str], out_dir: str) -> str:
    """What was kept of an interrupted run, and the command that continues it (or starts it again)."""
    import shlex

    world = int(os.environ.get("WORLD_SIZE", "1"))
    command = "blpseg train" if world == 1 else "torchrun [your torchrun options] -m blpseg train"
    said = f"interrupted at iteration {e.iteration}"
    if e.checkpoint is None:
        again = shlex.join(["--config", args.config, "--overwrite", *overrides])
        return f"{said}, before its first checkpoint; start it again with `{command} {again}`"
    own = os.path.abspath(e.checkpoint) == os.path.abspath(os.path.join(out_dir, "last.pt"))
    resume = shlex.join(["--config", args.config, "--resume", *([] if own else [e.checkpoint]), *overrides])
    return f"{said}; {e.checkpoint} holds iteration {e.checkpoint_iteration}: continue with `{command} {resume}`"


def _eval(args) -> int:
    from .data import formats
    from .data.io import check_outputs
    from .data.summary import no_val_reason
    from .data.transforms import EvalTransform
    from .engine.checkpoint import load_model
    from .engine.distributed import Dist
    from .engine.evaluate import evaluate, format_table
    from .engine.plots import plot_boundary_precision
    from .files import atomic_write

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval.json")
    figure = os.path.splitext(out)[0] + "_boundary_precision.png"
    overrides = list(args.overrides)
    if args.split:  # also brings back the data.val section (its defaults) of a run trained without one
        overrides.append(f"data.val.split={args.split}")
    model, cfg, names, device = load_model(args.checkpoint, overrides)
    data = cfg["data"]
    if data["val"] is None:
        raise ValueError(
            "this run has no validation data (data.val=null): name the split to evaluate, e.g. --split val "
            "(its full masks are read from data.val.label_dir, default SegmentationClass: override it with "
            "data.val.label_dir=DIR)"
        )
    _check_classes(args.checkpoint, names, cfg)
    dataset = formats.build_split(data, "val", len(names), EvalTransform(data["resize"]), split=args.split)
    if dataset is None:
        raise ValueError(no_val_reason(data))
    check_outputs([(None, out), (None, figure)], dataset.files(), [args.checkpoint, *formats.of(data).files(data)])
    result = evaluate(model, dataset, len(names), cfg["eval"], Dist(device=device))
    print(format_table(result, names))
    with atomic_write(out, "w", "results ") as fh:  # a failed write keeps the previous eval.json
        named = {"iou_by_class": dict(zip(names, result["iou"], strict=True))}  # NaN: in neither mask nor prediction
        json.dump(
            {"checkpoint": args.checkpoint, "split": dataset.split, "eval": cfg["eval"], **named, **result},
            fh,
            indent=1,
        )
    plot_boundary_precision({_run_name(args.checkpoint): result}, figure)
    print(f"results: {out}, {figure}")
    return 0


def _check_classes(checkpoint: str, names, cfg: dict) -> None:
    """A model is evaluated or analysed only on data of the classes it was trained on, in its order;
    otherwise its IoUs would be reported under the data's names. Refused, naming the differences."""
    from .config import class_differences
    from .data import formats

    data = cfg["data"]
    differences = class_differences(names, formats.class_names(data))
    if differences:
        raise ValueError(
            f"{checkpoint} was trained on other classes than the data's ({formats.of(data).class_source(data)}), "
            "checkpoint -> data: "
            f"{'; '.join(differences)}. Use data of its classes, listed in its order"
        )


def _info(args) -> int:
    from .config import load_config
    from .data.formats import class_names
    from .engine.builders import model_from_config

    cfg = load_config(args.config, args.overrides)
    # counting needs no weights: the network is built as configured, randomly initialised
    model = model_from_config(cfg["model"], len(class_names(cfg["data"])), pretrained=False)
    counts = model.parameter_counts()
    print(f"network of {args.config}: backbone {cfg['model']['backbone']}, {model.num_classes} classes")
    for part, n in counts.items():
        print(f"{part:<12} {n:>12,}")
    print(f"total parameters: {sum(p.numel() for p in model.parameters())}")
    return 0


def _run_name(checkpoint: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))


def _analysis_setup(args):
    """(model or None, config, class names, device, the files read) from --checkpoint or --config,
    with the data set generated first if it is the synthetic one and missing."""
    from .config import config_files, load_config
    from .data import formats
    from .data.prepare import prepare_data
    from .engine.checkpoint import load_model
    from .engine.distributed import Dist

    if args.checkpoint:
        model, cfg, names, device = load_model(args.checkpoint, args.overrides)
        _check_classes(args.checkpoint, names, cfg)
        files = [args.checkpoint]
    else:
        cfg = load_config(args.config, args.overrides)
        model, names, device = None, formats.class_names(cfg["data"]), "cpu"
        files = config_files(args.config)
    prepare_data(cfg, Dist())
    return model, cfg, names, device, files + formats.of(cfg["data"]).files(cfg["data"])


def _items(args, cfg, names, limit):
    """The (mask, scribble) pairs of the analyses, and the files they are read from."""
    from .analysis.bias import paired_datasets, pairs

    masks, scribbles = paired_datasets(cfg, len(names), args.split, args.mask_dir, args.scribble_dir)
    return pairs(masks, scribbles, limit), masks.files() + scribbles.files()


def _analyze_bias(args) -> int:
    from .analysis.bias import annotation_bias
    from .analysis.figures import write_bias
    from .config import AnalysisOptions, check_options
    from .data import formats
    from .data.io import check_outputs

    check_options(AnalysisOptions, args)
    model, cfg, names, device, files = _analysis_setup(args)
    items, inputs = _items(args, cfg, names, args.max_images)
    csv_path, png_path = os.path.join(args.out, "bias.csv"), os.path.join(args.out, "bias.png")
    check_outputs([(None, csv_path), (None, png_path)], inputs, files)
    result = annotation_bias(items, args.bins, model, device)
    os.makedirs(args.out, exist_ok=True)
    title = formats.of(cfg["data"]).title(cfg["data"], args.split)
    title += f", model {_run_name(args.checkpoint)}" if model is not None else ""
    write_bias(result, csv_path, png_path, title)
    for name in ("masks", "scribbles", "p_scrib", "p_seg"):
        if name in result:
            print(f"{name:<10} mean relative distance {result[name]['mean']:.3f}")
    print(f"results: {csv_path}, {png_path}")
    return 0


def _loss_maps(args) -> int:
    from .analysis.figures import plot_loss_maps
    from .analysis.loss_maps import loss_maps
    from .config import AnalysisOptions, BLPOptions, check_options
    from .data.io import check_outputs

    check_options(AnalysisOptions, args)
    model, cfg, names, device, files = _analysis_setup(args)
    items, inputs = _items(args, cfg, names, args.num)
    path = os.path.join(args.out, "loss_maps.png")
    check_outputs([(None, path)], inputs, files)
    gamma = float(cfg["loss"]["seg_options"].get("gamma", BLPOptions().gamma))  # a loss without one: BLP's
    rows = [(item, loss_maps(model, item, gamma, device)) for item in items]
    os.makedirs(args.out, exist_ok=True)
    plot_loss_maps(rows, path)
    print(f"results: {path}")
    return 0


def _plot_precision(args) -> int:
    from .data.io import check_outputs
    from .engine.plots import plot_boundary_precision

    labels = args.labels or [_run_name(p) for p in args.results]
    if len(labels) != len(args.results):
        raise ValueError(
            f"--labels must give one label per result file: {len(args.results)} files, {len(labels)} labels"
        )
    csv_path = os.path.splitext(args.out)[0] + ".csv"
    check_outputs([(None, args.out), (None, csv_path)], files=args.results)
    results = {}
    for label, path in zip(labels, args.results, strict=True):
        try:
            with open(path) as fh:
                results[label] = json.load(fh)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        if not isinstance(results[label], dict) or "boundary_precision" not in results[label]:
            raise ValueError(f"{path} holds no boundary_precision (expected an eval.json or val.json)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot_boundary_precision(results, args.out, csv_path)
    print(f"results: {args.out}, {csv_path}")
    return 0


def _predict(args) -> int:
    import numpy as np

    from .data.io import check_outputs, read_image, write_image, write_label
    from .engine.checkpoint import load_model
    from .engine.inference import predict_image
    from .engine.overlay import overlay
    from .files import atomic_write

    outputs = prediction_outputs(args.images, args.out, args.overlay, args.probs)
    jobs = [(image, out) for image, outs in zip(args.images, outputs, strict=True) for out in outs.values()]
    check_outputs(jobs, files=[args.checkpoint], overwrite=args.overwrite)
    # no data, so no class list to check: the PNGs hold the checkpoint's class ids
    model, cfg, names, device = load_model(args.checkpoint, args.overrides)
    for path, outs in zip(args.images, outputs, strict=True):
        image = read_image(path)
        probs = predict_image(model, image, cfg, device)
        pred = probs.argmax(0).numpy().astype(np.uint8)
        write_label(outs["mask"], pred)
        if "overlay" in outs:
            write_image(outs["overlay"], overlay(image, pred, names, args.alpha))
        if "probs" in outs:
            with atomic_write(outs["probs"], sync=False) as fh:
                np.save(fh, probs.numpy().astype(np.float16))
        print(", ".join(outs.values()))
    return 0


def _app(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page sends nothing out
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise ImportError('blpseg app needs gradio (the app extra): pip install -e ".[app]"') from e
    from .app.page import build_page
    from .app.uploads import UploadStore
    from .engine.checkpoint import load_model

    if args.data_root is not None and os.path.exists(args.data_root) and not os.path.isdir(args.data_root):
        raise ValueError(f"--data-root {args.data_root} is a file; name a folder (it is created when missing)")
    if args.host not in ("127.0.0.1", "localhost"):
        print(
            f"blpseg app: warning: --host {args.host} serves the page (and the saving of files into "
            f"{args.data_root}) to every machine that can reach this one; it has no login",
            file=sys.stderr,
        )
    model, cfg, names, device = load_model(args.checkpoint, args.overrides)
    if args.data_root is not None:
        from .app.data import check_classes

        check_classes(args.data_root, names)
    # a stop by SIGTERM (a service manager, `kill`) ends like Ctrl-C: the uploads' folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with UploadStore() as uploads:
        page = build_page(model, cfg, names, device, args.data_root, uploads)
        print(
            f"blpseg app: {len(names)} classes of {args.checkpoint} on {device}; uploads kept in {uploads.dir} "
            "until the page stops; Ctrl-C stops the page",
            flush=True,
        )
        # never share=True: the photos and the data folder stay on this machine
        page.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=False, quiet=True
        )
    return 0


def _export(args) -> int:
    from .config import ExportOptions, check_options
    from .data.io import check_outputs
    from .engine.export import export_checkpoint

    check_options(ExportOptions, args)
    check_outputs([(None, args.out)], files=[args.checkpoint], overwrite=args.overwrite)
    result = export_checkpoint(args.checkpoint, args.out, args.height, args.width, args.device)
    sizes = " and ".join(f"{h}x{w}" for h, w in result["sizes"])
    print(
        f"{args.out}: equal to the checkpoint's logits at {sizes} (largest difference {result['max_error']:.1e} "
        "of their magnitude); docs/deployment.md says how to run it"
    )
    return 0


def _export_parser(sub) -> None:
    from .config import ExportOptions

    ex = sub.add_parser(
        "export",
        help="a checkpoint as a .pt2 (AOTInductor) or .onnx file that runs without blpseg (docs/deployment.md)",
    )
    ex.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
    ex.add_argument(
        "--out",
        required=True,
        help="F.pt2: torch.export + AOTInductor package (the LAM as the fused lam_ops operator); F.onnx: ONNX for "
        "onnxruntime (the LAM in dense form, B x (HW/16)^2 weights)",
    )
    _number(ex, ExportOptions, "height", "the height the export is traced and checked at; other heights run too")
    _number(ex, ExportOptions, "width", "the width the export is traced and checked at; other widths run too")
    ex.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the device a .pt2 runs on (default cpu)")
    ex.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    ex.set_defaults(func=_export)


def prediction_outputs(images, out_dir: str, overlay: bool, probs: bool) -> list[dict[str, str]]:
    """Per image {"mask": <name>.png, "overlay": <name>_overlay.png, "probs": <name>_probs.npy}
    (the last two when asked for) in `out_dir`, as prediction_paths names them."""
    outputs = []
    for path in prediction_paths(images, out_dir):
        base = os.path.splitext(path)[0]
        outs = {"mask": path}
        if overlay:
            outs["overlay"] = base + "_overlay.png"
        if probs:
            outs["probs"] = base + "_probs.npy"
        outputs.append(outs)
    return outputs


def prediction_paths(images, out_dir: str) -> list[str]:
    """<out_dir>/<name>.png; when two images share a name, their paths below the inputs' common
    folder keep them apart (a/x.jpg, b/x.jpg -> out/a/x.png, out/b/x.png)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
    if len(set(stems)) == len(stems):
        return [os.path.join(out_dir, s + ".png") for s in stems]
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in images])
    return [
        os.path.join(out_dir, os.path.splitext(os.path.relpath(os.path.abspath(p), common))[0] + ".png") for p in images
    ]


def _alpha(value: str) -> float:
    """--alpha: a number in [0, 1]."""
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if not 0 <= alpha <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 (the photo) to 1 (the colours), got {value!r}")
    return alpha


def _make_synthetic(args) -> int:
    from .config import MakeSyntheticOptions, check_options
    from .data.synthetic import make_synthetic

    check_options(MakeSyntheticOptions, args)
    if make_synthetic(args.root, args.num_train, args.num_val, args.size, args.seed, args.overwrite):
        print(f"synthetic set written to {args.root}")
    else:
        print(f"{args.root} already holds this synthetic set: nothing written")
    return 0


def _export_folder(args) -> int:
    from .config import config_files, load_config
    from .data.export import export_folder
    from .data.formats import class_names
    from .data.prepare import prepare_data
    from .engine.distributed import Dist

    cfg = load_config(args.config, args.overrides)
    prepare_data(cfg, Dist())
    counts = export_folder(cfg["data"], class_names(cfg["data"]), args.out, args.overwrite, config_files(args.config))
    print(
        f"{counts['train']} training images (scribbles/) and {counts['val']} validation images (masks/) in {args.out}"
    )
    return 0


def _class_list(value: str) -> tuple[str, ...]:
    from .data.classes import CLASS_SETS, read_class_file

    return CLASS_SETS[value] if value in CLASS_SETS else read_class_file(value)


def _convert(args) -> int:
    from .config import ConvertOptions, check_options
    from .data.classes import CLASS_SETS
    from .data.labelme import convert_labelme
    from .data.scribbles import convert_scribbles

    check_options(ConvertOptions, args)
    names = _class_list(args.classes)
    files = [] if args.classes in CLASS_SETS else [args.classes]
    if args.source == "labelme":
        if args.image_dir:
            raise ValueError("--image-dir is for PASCAL-Scribble XML; labelme files hold their image size")
        n = convert_labelme(args.in_dir, args.out_dir, names, args.width, args.masks, args.overwrite, files)
    elif args.masks:
        raise ValueError("--masks is for labelme files (--from labelme); PASCAL-Scribble XML holds scribbles")
    else:
        n = convert_scribbles(args.in_dir, args.out_dir, names, args.width, args.image_dir, args.overwrite, files)
    print(f"{n} {'validation masks' if args.masks else 'scribble PNGs'} written to {args.out_dir}")
    return 0


def _scribblize(args) -> int:
    from .config import ScribblizeOptions, check_options
    from .data.scribbles import scribblize

    check_options(ScribblizeOptions, args)
    if args.min_width > args.max_width:
        raise ValueError(f"--min-width ({args.min_width}) must be <= --max-width ({args.max_width})")
    n = scribblize(
        args.mask_dir,
        args.out_dir,
        args.seed,
        args.overwrite,
        width=(args.min_width, args.max_width),
        min_area=args.min_area,
    )
    print(f"{n} scribble PNGs written to {args.out_dir}")
    return 0


def _import_release(args) -> int:
    from .config import config_files, load_config
    from .data import formats
    from .data.io import check_outputs
    from .engine.release import import_release

    cfg = load_config(args.config, args.overrides)
    names = formats.class_names(cfg["data"])
    inputs = [args.src, *config_files(args.config), *formats.of(cfg["data"]).files(cfg["data"])]
    check_outputs([(None, args.out)], files=inputs, overwrite=args.overwrite)
    state = import_release(args.src, cfg, names, args.out)
    source = state["source"]
    print(
        f"{args.out}: the release's model {args.src} (sha256 {source['sha256']}) as a checkpoint of "
        f"{args.config}'s network, {len(names)} classes; evaluate it with `blpseg eval --checkpoint {args.out}`"
    )
    return 0


def _number(parser, options, name: str, text: str = "") -> None:
    """An integer option --<name> whose default and range come from the schema section `options`
    (config.py), which check_options checks it against."""
    meta = next(f.metadata for f in dataclasses.fields(options) if f.name == name)
    default = getattr(options(), name)
    bounds = f"{meta['ge']}-{meta['le']}" if meta.get("le") is not None else f">= {meta['ge']}"
    said = f"; default {default}" if default is not None else ""
    parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"{text} ({bounds}{said})")


def build_parser() -> argparse.ArgumentParser:
    from .config import AnalysisOptions, ConvertOptions, MakeSyntheticOptions, ScribblizeOptions
    from .engine.run_folder import EVAL_FILES, RUN_FILES

    p = argparse.ArgumentParser(prog="blpseg", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    overrides = dict(nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4 model.radius=null")

    t = sub.add_parser("train", help="train BLPSeg (under torchrun for DDP)")
    t.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    t.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        help="continue from a checkpoint (with the same settings but for the few a resumed run may "
        "change: docs/training.md, 'Resuming'); without a path, <out_dir>/last.pt",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start anew in an out_dir that holds a run, deleting its run files ({', '.join(RUN_FILES + EVAL_FILES)}; "
        "other files stay) when training starts; without it (or --resume) such a folder is refused",
    )
    t.add_argument("--print-config", action="store_true", help="print the resolved config (defaults included) and exit")
    t.add_argument("overrides", **overrides)
    t.set_defaults(func=_train)

    ds = sub.add_parser(
        "data-summary",
        help="per class, the scribbled pixels and images of the training data and the validation data's; "
        "warnings for classes no scribble marks and for a missing validation set (train prints it too)",
    )
    ds.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    ds.add_argument("--json", action="store_true", help="print the summary as JSON (train's data_summary.json)")
    ds.add_argument("overrides", **overrides)
    ds.set_defaults(func=_data_summary)

    e = sub.add_parser("eval", help="mIoU, per-class IoU and boundary precision on the config's val split")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by train (holds its config)")
    e.add_argument(
        "--split",
        default=None,
        help="evaluate this split instead of data.val's (needed when the run had data.val=null); "
        "data.format=folder: root/SPLIT.txt",
    )
    e.add_argument("--out", default=None, help="results JSON (default: eval.json next to the checkpoint)")
    e.add_argument("overrides", **overrides)
    e.set_defaults(func=_eval)

    pr = sub.add_parser(
        "predict",
        help="colourised (palette PNG) masks for images; with --overlay the photo blended with them, with --probs "
        "the class probabilities",
    )
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint written by train (holds its config and classes)")
    pr.add_argument(
        "--out",
        default="predictions",
        help="output folder (default predictions/): NAME.png, the class ids in the PASCAL palette; inputs are never "
        "overwritten",
    )
    pr.add_argument(
        "--overlay",
        action="store_true",
        help="also NAME_overlay.png: the photo blended with the class colours, a legend of the classes present below",
    )
    pr.add_argument(
        "--alpha",
        type=_alpha,
        default=0.5,
        help="the overlay's colour weight, from 0 (the photo alone) to 1 (the colours alone); default 0.5",
    )
    pr.add_argument(
        "--probs",
        action="store_true",
        help="also NAME_probs.npy: the class probabilities, float16 (K, H, W) at the image's size (numpy.load)",
    )
    pr.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    pr.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. eval.flip=true",
    )
    pr.set_defaults(func=_predict)

    _export_parser(sub)

    ap = sub.add_parser(
        "app",
        help="a local page in the browser: scribble on photos, see the model's prediction, save the scribbles "
        "(needs the app extra: gradio)",
    )
    ap.add_argument("--checkpoint", required=True, help="a checkpoint written by train (holds its config and classes)")
    ap.add_argument(
        "--data-root",
        default=None,
        help="a data folder in the folder format: its images/ are offered, scribbles are saved into its scribbles/ "
        "(created when missing); without it nothing is saved",
    )
    ap.add_argument("--port", type=int, default=7860, help="the page's port (default 7860)")
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to serve on (default 127.0.0.1: this machine only; another is warned about)",
    )
    ap.add_argument(
        "--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. device=cpu"
    )
    ap.set_defaults(func=_app)

    i = sub.add_parser("info", help="the configured network's parameter count per part")
    i.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    i.add_argument("overrides", **overrides)
    i.set_defaults(func=_info)

    s = sub.add_parser(
        "make-synthetic", help="write the synthetic scribble set (VOC layout); nothing when ROOT already holds it"
    )
    s.add_argument("--root", default="data/synthetic", help="the folder to write (default data/synthetic)")
    _number(s, MakeSyntheticOptions, "num_train", "training images")
    _number(s, MakeSyntheticOptions, "num_val", "validation images")
    _number(s, MakeSyntheticOptions, "size", "image side in pixels")
    _number(s, MakeSyntheticOptions, "seed", "the random seed")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    s.set_defaults(func=_make_synthetic)

    x = sub.add_parser(
        "export-folder", help="write a VOC-layout config's data (e.g. the synthetic set) in the plain folder format"
    )
    x.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    x.add_argument("--out", required=True, help="the folder to write: images/, scribbles/, masks/, classes.txt")
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE + " (files already equal are left as they are)")
    x.add_argument("overrides", **overrides)
    x.set_defaults(func=_export_folder)

    c = sub.add_parser(
        "convert-scribbles",
        help="rasterise PASCAL-Scribble XML or labelme JSON to label PNGs (255 = not scribbled); all files are "
        "checked before any is written",
    )
    c.add_argument("in_dir", help="folder of .xml (--from pascal) or .json (--from labelme) files")
    c.add_argument("out_dir", help="folder for the <name>.png labels (e.g. my_set/scribbles, or my_set/masks)")
    c.add_argument(
        "--from",
        dest="source",
        choices=("pascal", "labelme"),
        default="pascal",
        help="pascal: PASCAL-Scribble XML polylines (default); labelme: labelme JSON, polygon, rectangle, circle "
        "and oriented_rectangle shapes filled, line, linestrip and point shapes as strokes, __ignore__ = 255",
    )
    c.add_argument(
        "--masks",
        action="store_true",
        help="labelme: write validation masks (regions only, unlabelled = 255 void) rather than scribbles",
    )
    c.add_argument(
        "--classes", default="voc", help="voc, context, synthetic, or a classes.txt (one name per line) (default voc)"
    )
    _number(c, ConvertOptions, "width", "stroke width in pixels (labelme lines, linestrips, points; XML polylines)")
    c.add_argument(
        "--image-dir", default=None, help="the XML files' images (any format): their sizes replace the XML's <size>"
    )
    c.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    c.set_defaults(func=_convert)

    z = sub.add_parser(
        "scribblize",
        help="simulate annotators' scribbles on a folder of PNG masks",
        description="Simulated scribbles for full masks (docs/training.md, 'The synthetic set'): for each "
        "connected region of each class, one stroke along the skeleton of the region's eroded interior, from the "
        "skeleton point nearest its centre a random 40-90% of the way to the skeleton's ends, as annotators draw "
        "(the paper's Fig. 1). Each NAME.png mask of MASK_DIR gives OUT_DIR/NAME.png: class ids on the strokes, "
        "255 (not scribbled) elsewhere.",
    )
    z.add_argument("mask_dir", help="the full masks: PNGs of class ids, 255 = void (void pixels get no stroke)")
    z.add_argument("out_dir", help="where the scribble PNGs go, under the masks' names (never over the masks)")
    _number(
        z,
        ScribblizeOptions,
        "seed",
        "the random seed of the strokes' lengths and widths; the same seed on the same folder gives the same scribbles",
    )
    _number(
        z,
        ScribblizeOptions,
        "min_width",
        "the narrowest stroke, in pixels (each stroke takes a width at random from here to --max-width)",
    )
    _number(z, ScribblizeOptions, "max_width", "the widest stroke, in pixels")
    _number(z, ScribblizeOptions, "min_area", "regions smaller than this, in pixels, get no stroke")
    z.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    z.set_defaults(func=_scribblize)

    r = sub.add_parser(
        "import-release",
        help="the authors' released model (their train.py's .pth) as a checkpoint for eval and predict",
    )
    r.add_argument("src", help="a release model file (github.com/YudeWang/BLPSeg's Model Zoo), read with weights_only")
    r.add_argument(
        "--config",
        required=True,
        help="the config of its network and classes: configs/voc_scribble.yaml or configs/context_scribble.yaml",
    )
    r.add_argument("--out", required=True, help="the checkpoint to write (it records the source file and its sha256)")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    r.add_argument("overrides", **overrides)
    r.set_defaults(func=_import_release)

    def analysis_args(a, checkpoint_required):
        a.add_argument(
            "--checkpoint",
            required=checkpoint_required,
            default=None,
            help="a checkpoint written by train (its config is used)",
        )
        if not checkpoint_required:
            a.add_argument(
                "--config", default=DEFAULT_CONFIG, help=f"YAML config without --checkpoint (default {DEFAULT_CONFIG})"
            )
        a.add_argument(
            "--split", default=None, help="image list (default: the config's train split, where the scribbles are)"
        )
        a.add_argument("--mask-dir", default=None, help="full masks (default: the config's val label_dir)")
        a.add_argument("--scribble-dir", default=None, help="scribbles (default: the config's train label_dir)")
        a.add_argument("--out", default="analysis", help="output folder (default analysis/)")
        a.add_argument("overrides", **overrides)

    b = sub.add_parser(
        "analyze-bias", help="relative boundary distance of scribbles vs full masks (Fig. 1; Fig. 7a with --checkpoint)"
    )
    analysis_args(b, checkpoint_required=False)
    _number(b, AnalysisOptions, "bins", "bands of relative distance")
    _number(b, AnalysisOptions, "max_images", "use the first N images of the split, all by default")
    b.set_defaults(func=_analyze_bias)

    m = sub.add_parser("loss-maps", help="image + scribbles, p_scrib, p_seg and the BLP weight map (Fig. 8)")
    analysis_args(m, checkpoint_required=True)
    _number(m, AnalysisOptions, "num", "the first N images of the split")
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
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print(f"blpseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
