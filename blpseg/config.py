"""The config: a schema of typed sections with every default in one place, YAML files that may
inherit from a base file, and `key.sub=value` overrides from the command line.

The schema is plain dataclasses checked by the small walker below, not pydantic or OmegaConf: the
checks needed (types, ranges, unknown keys with the nearest valid one suggested) fit in one page,
the resolved config stays a plain dict (what checkpoints, config.yaml and the ablation runner hold),
and the project gains no dependency. `resolve` turns a YAML mapping into the full checked config;
every reader downstream indexes that dict and keeps no defaults of its own.

A file may start with `base: other.yaml` (relative to the file): the file's mappings are merged
into the base's, key by key, and any other value replaces the base's.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from .data import formats
from .data.classes import CLASS_SETS

BASE_KEY = "base"
_REQUIRED = object()
SEED = dict(ge=0, le=2**32 - 1)  # numpy's and torch's seeds (the step's is seed * 2**32 + iteration)
SCALE = dict(ge=0.1, le=4.0)  # image scales (training augmentation, test scales)
WIDTH = dict(ge=1, le=64)  # scribble strokes, in pixels


def _f(default: Any = _REQUIRED, *, ge=None, gt=None, le=None):
    """A field with a default (a dataclass instance or a list is copied per config) and a range."""
    meta = {"ge": ge, "gt": gt, "le": le}
    if default is _REQUIRED:
        return field(default=None, metadata={**meta, "required": True})
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SyntheticConfig:
    num_train: int = _f(300, ge=1, le=99999)  # the names hold five digits
    num_val: int = _f(60, ge=1, le=99999)
    size: int = _f(64, ge=8, le=2048)


@dataclass
class LabelDiffusion:
    segments: int = _f(100, ge=1, le=100000)  # SLIC's n_segments
    compactness: float = _f(10.0, gt=0)  # SLIC's compactness


@dataclass
class TrainSplit:
    split: str = _f("train")  # split list name (VOC layout) or, for data.format=folder, train.txt if present
    label_dir: str = _f("ScribbleLabels")
    scribbles: bool = _f(True)  # 255 means not scribbled (class K) rather than void
    label_diffusion: LabelDiffusion | None = _f(None)  # expand the scribbles into SLIC superpixels first (Table VI)


@dataclass
class ValSplit:
    split: str = _f("val")
    label_dir: str = _f("SegmentationClass")
    scribbles: bool = _f(False)


@dataclass
class DataConfig:
    """The keys of every data format; each format reads some of them (DataFormat.keys in
    data/formats/), and a resolved config keeps only those of its format. dataset, image_dir,
    image_ext, list_dir, synthetic and the label_dir and split of train / val are the VOC layout's;
    a data.format=folder root has fixed names (data/formats/folder.py)."""

    format: str = _f("voc")  # a format of data/formats/: voc (the VOC layout), folder (images/, scribbles/, ...)
    dataset: Literal[tuple(CLASS_SETS)] | None = _f(None)  # class names of the VOC layout
    root: str = _f()
    image_dir: str = _f("JPEGImages")
    image_ext: str = _f(".jpg")
    list_dir: str = _f(os.path.join("ImageSets", "Segmentation"))
    synthetic: SyntheticConfig | None = _f(None)  # generate the synthetic set under root on first use
    train: TrainSplit = _f(TrainSplit())
    val: ValSplit | None = _f(ValSplit())  # null: no evaluation during training
    # every image scaled so its longest side has this many pixels, in training (before data.scale and
    # the crop) and evaluation (the prediction then scaled back to the mask's size); null: as stored
    resize: int | None = _f(None, ge=32, le=4096)
    crop: int = _f(384, ge=32, le=4096)  # at least the network's coarsest stride
    scale: list[float] = _f([0.75, 1.25], **SCALE)
    workers: int = _f(0, ge=0, le=256)


@dataclass
class ModelConfig:
    backbone: str = _f("resnet101_deepstem")  # resnet18|50|101, resnet101_deepstem (the release's), timm:<model>
    pretrained: str | None = _f(None)  # imagenet (downloaded once), a local file, or null (docs/training.md)
    channels: int = _f(256, ge=1, le=4096)
    lam: bool = _f(True)
    similarity: Literal["both", "features", "position"] = _f("both")
    sigma: float = _f(6.0, gt=0)
    learnable_sigma: bool = _f(False)
    radius: int | None = _f(None, ge=1, le=2**31 - 1)  # beyond any feature map it is the global LAM
    embed_dim: int = _f(256, ge=1, le=4096)
    lam_backend: str = _f("auto")
    key_mask: Literal["labeled", "unlabeled"] | None = _f(None)


@dataclass
class BLPOptions:
    gamma: float = _f(2.0, ge=0, le=10)  # beyond, (1 - p)^gamma underflows to 0 for most pixels
    normalize: Literal["weights", "pixels"] = _f("weights")


@dataclass
class FocalOptions:
    gamma: float = _f(2.0, ge=0, le=10)


@dataclass
class NoOptions:
    pass


# loss.seg -> its seg_options: the losses' names, which losses.SEG_LOSSES maps to the modules (the
# config reads them here, where importing no torch keeps --print-config and config errors quick)
SEG_OPTIONS = {"blp": BLPOptions, "ce": NoOptions, "focal": FocalOptions}


@dataclass
class LossConfig:
    seg: Literal[tuple(SEG_OPTIONS)] = _f("blp")
    seg_options: dict = _f(dataclasses.asdict(BLPOptions()))  # checked against SEG_OPTIONS[seg]
    unlabeled_weight: float = _f(0.02, ge=0)
    self_training_from: int | None = _f(None, ge=0)  # iteration; null: no self-training
    pseudo_threshold: float = _f(0.9, gt=0, le=1)


@dataclass
class TrainConfig:
    epochs: int = _f(40, ge=1)
    iters: int | None = _f(None, ge=1)  # overrides epochs
    batch_size: int = _f(10, ge=1)  # per process
    lr: float = _f(3.0e-5, gt=0)
    weight_decay: float = _f(0.01, ge=0)
    poly_power: float = _f(0.9, ge=0)
    amp: bool | Literal["bfloat16", "float16"] = _f(True)
    log_every: int = _f(10, ge=1)
    checkpoint_every: int | None = _f(None, ge=1)  # null: every epoch
    eval_every: int | None = _f(None, ge=1)  # null: at the end only


@dataclass
class CRFConfig:
    """DenseCRF's parameters (engine/inference.py, dense_crf)."""

    iterations: int = _f(10, ge=1, le=1000)
    gaussian_sxy: float = _f(3.0, gt=0)
    gaussian_compat: float = _f(3.0, ge=0)
    bilateral_sxy: float = _f(50.0, gt=0)
    bilateral_srgb: float = _f(13.0, gt=0)
    bilateral_compat: float = _f(10.0, ge=0)


@dataclass
class EvalConfig:
    scales: list[float] = _f([1.0], **SCALE)  # and none may shrink an image below 32 px (engine/inference.py)
    flip: bool = _f(False)
    crf: bool | CRFConfig = _f(False)  # true (CRFConfig's defaults) or DenseCRF parameters
    boundary_bins: int = _f(10, ge=1, le=1000)


@dataclass
class Config:
    out_dir: str = _f("runs/blpseg")
    seed: int = _f(0, **SEED)
    device: Literal["auto", "cpu", "cuda"] = _f("auto")
    threads: int | None = _f(None, ge=1, le=1024)  # CPU threads per process; null: one per core
    data: DataConfig = _f()
    model: ModelConfig = _f(ModelConfig())
    loss: LossConfig = _f(LossConfig())
    train: TrainConfig = _f(TrainConfig())
    eval: EvalConfig = _f(EvalConfig())


# ---------------------------------------------------------------- command-line options
# The numbers the data and analysis commands take, checked by the same walker (check_options) and
# named as options (--max-width) in its errors; argparse takes its defaults from here.


@dataclass
class MakeSyntheticOptions(SyntheticConfig):
    seed: int = _f(0, **SEED)


@dataclass
class ScribblizeOptions:
    seed: int = _f(0, **SEED)
    min_width: int = _f(1, **WIDTH)
    max_width: int = _f(3, **WIDTH)
    min_area: int = _f(16, ge=0)  # pixels


@dataclass
class ConvertOptions:
    width: int = _f(3, **WIDTH)


@dataclass
class AnalysisOptions:
    bins: int = _f(10, ge=1, le=1000)  # analyze-bias
    max_images: int | None = _f(None, ge=1)  # analyze-bias
    num: int = _f(4, ge=1, le=32)  # loss-maps: one figure row per image


@dataclass
class ExportOptions:
    # the size an export is traced and checked at (any size runs); >= engine/export.py's MIN_SIDE
    height: int = _f(256, ge=33, le=4096)
    width: int = _f(256, ge=33, le=4096)


def check_options(cls, args) -> None:
    """The fields of `cls` that the argparse namespace `args` holds, checked against their types
    and ranges; an error names the option (--max-width)."""
    _build(cls, {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}, "--", True)


# What a resumed run may change (docs/training.md, "Resuming"): how long it runs, where and how it logs,
# checkpoints and evaluates, where the data and the initial weights are read from, and which
# (numerically equivalent) LAM kernel runs. Everything else is fixed by the checkpoint.
RESUME_MAY_CHANGE = (
    "out_dir",
    "device",
    "threads",
    "data.root",
    "data.workers",
    "data.val",
    "model.pretrained",
    "model.lam_backend",
    "train.epochs",
    "train.iters",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_every",
    "eval",
)


# ---------------------------------------------------------------- checking


def resolve(raw: dict) -> dict:
    """The full, checked config of a mapping (a YAML file's, with overrides applied): defaults
    filled in, unknown keys, wrong types and out-of-range values refused naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a mapping, got {type(raw).__name__}")
    cfg = dataclasses.asdict(_build(Config, raw, ""))
    data = cfg["data"]
    formats.of(data).check(data)
    if not data["scale"] or len(data["scale"]) != 2 or data["scale"][0] > data["scale"][1]:
        raise ValueError(f"data.scale: expected [low, high] with 0 < low <= high, got {data['scale']}")
    if not cfg["eval"]["scales"]:
        raise ValueError("eval.scales: expected at least one scale")
    loss = cfg["loss"]
    options = SEG_OPTIONS[loss["seg"]]
    accepted = [f.name for f in dataclasses.fields(options)]
    unknown = sorted(set(loss["seg_options"]) - set(accepted))
    if unknown:  # e.g. loss.seg=ce on a config whose seg_options were written for blp
        raise ValueError(
            f"loss.seg_options {unknown} do not apply to loss.seg={loss['seg']!r} (it takes {accepted}); "
            f"override loss.seg_options too"
        )
    loss["seg_options"] = dataclasses.asdict(_build(options, loss["seg_options"], "loss.seg_options."))
    if cfg["model"]["key_mask"] is not None and not cfg["model"]["lam"]:
        raise ValueError("model.key_mask needs the LAM (model.lam=true)")
    cfg["data"] = formats.prune(data)  # what the run reads: --print-config, config.yaml, checkpoints
    return cfg


def _build(cls, raw: dict, prefix: str, option: bool = False):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f" (valid: {', '.join(fields)})"
            raise ValueError(f"unknown config key {prefix}{key}{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = prefix + (name.replace("_", "-") if option else name)
        if name in raw:
            kwargs[name] = _check(raw[name], hints[name], key, f.metadata)
        elif f.metadata.get("required"):
            raise ValueError(f"config key {key} is required")
    return cls(**kwargs)


def _check(value, tp, key: str, meta) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):  # Optional[X] and X | None
        if value is None and type(None) in args:
            return None
        expected = []
        for option in (a for a in args if a is not type(None)):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _build(option, value, key + ".")  # a section's own error names its key
            try:
                return _check(value, option, key, meta)
            except ValueError as e:
                expected.append(str(e).split(": ", 1)[-1].rsplit(", got", 1)[0])
        raise ValueError(f"{key}: {' or '.join(dict.fromkeys(expected))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a section (mapping), got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_check(v, args[0], f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    for bound, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
    ):
        if meta.get(bound) is not None and not ok(value, meta[bound]):
            raise ValueError(f"{key}: must be {word} {meta[bound]}, got {value!r}")
    return value


def check_device(cfg: dict) -> None:
    """Refuses, before a run starts, a `device` or `model.lam_backend` this machine cannot run (a
    config is resolved anywhere: a checkpoint's config names the trainer's device, not the reader's)."""
    import torch

    from lam_ops.backends import BACKENDS

    cuda = torch.cuda.is_available()
    if cfg["device"] == "cuda" and not cuda:
        raise ValueError("device=cuda: no CUDA device is available on this machine; set device=cpu (or auto)")
    device = torch.device("cuda" if cfg["device"] == "cuda" or (cfg["device"] == "auto" and cuda) else "cpu")
    name = cfg["model"]["lam_backend"]
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"model.lam_backend: expected one of 'auto', {', '.join(map(repr, BACKENDS))}, got {name!r}")
    why = BACKENDS[name].unavailable(device) if name != "auto" and cfg["model"]["lam"] else None
    if why:
        usable = [n for n, b in BACKENDS.items() if b.unavailable(device) is None]
        raise ValueError(
            f"model.lam_backend={name} cannot run on {device.type} here ({why}); set model.lam_backend=auto "
            f"(the fastest that runs) or one of {', '.join(usable)}"
        )


# ---------------------------------------------------------------- files and overrides


def read_config(path: str) -> dict:
    """The mapping of a YAML file merged over its `base:` chain, not yet resolved."""
    out: dict = {}
    for _, cfg in _chain(path):
        out = merge(out, cfg)
    return out


def config_files(path: str) -> list[str]:
    """The files a config is read from: its `base:` chain, then the file itself."""
    return [file for file, _ in _chain(path)]


def _chain(path: str, _seen=()) -> list[tuple[str, dict]]:
    """[(file, its mapping without `base:`)] from the first base to `path`."""
    real = os.path.realpath(path)
    if real in _seen:
        raise ValueError(f"config {path}: its base chain loops back to itself")
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a YAML mapping")
    base = cfg.pop(BASE_KEY, None)
    if base is None:
        return [(path, cfg)]
    if not isinstance(base, str):
        raise ValueError(f"{path}: {BASE_KEY} must be a path to a YAML file, got {base!r}")
    return [*_chain(os.path.join(os.path.dirname(path), base), (*_seen, real)), (path, cfg)]


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def load_config(path: str, overrides=(), resolved: bool = True) -> dict:
    """The config of a file with `overrides` applied; resolved=False keeps only what the file
    chain and the overrides state (what the ablation runner names runs by)."""
    cfg = apply_overrides(read_config(path), overrides)
    return resolve(cfg) if resolved else cfg


def apply_overrides(cfg: dict, overrides) -> dict:
    """`overrides` are "a.b.c=value" strings; the value is parsed as YAML (1e-4, null, [1, 2]).
    A section that is null (data.val=null) is created again by an override of one of its keys."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override must be key=value, got {item!r}")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        node[leaf] = _parse(value)
    return cfg


def _parse(value: str):
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf; a null or empty section is a leaf."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def fixed_differences(old: dict, new: dict, may_change=RESUME_MAY_CHANGE) -> list[str]:
    """The keys, outside `may_change` (keys or sections), whose values differ between two
    resolved configs, as "key: old -> new"."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def class_differences(old, new) -> list[str]:
    """How two class lists differ, as "number of classes: 5 -> 3" and "class 2: 'dots' -> 'spots'"
    (<absent> past a list's end); empty when they are equal."""
    old, new = list(old), list(new)
    out = [f"number of classes: {len(old)} -> {len(new)}"] if len(old) != len(new) else []
    for i in range(max(len(old), len(new))):
        a = repr(old[i]) if i < len(old) else "<absent>"
        b = repr(new[i]) if i < len(new) else "<absent>"
        if a != b:
            out.append(f"class {i}: {a} -> {b}")
    return out


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
