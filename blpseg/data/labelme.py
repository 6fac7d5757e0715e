"""Scribbles drawn in labelme (https://github.com/wkentaro/labelme, the open annotation tool most
used for this) rasterised to scribble PNGs. A labelme JSON file holds imageHeight, imageWidth and
"shapes", each with a label, a shape_type and points [[x, y], ...]; the scribble shapes are drawn:
"line" and "linestrip" as polylines, "polygon" as its closed outline, "point" as a dot, each
`width` pixels wide, in file order (a later shape over an earlier one). Other shape types
(rectangle, circle, mask) are not scribbles and are refused naming the file, as are labels missing
from the class list. Read with the standard json module: the labelme package is not needed.
imageHeight and imageWidth are the photo's size as labelme shows it, turned by its EXIF orientation,
which is how io.read_image reads it for training, evaluation and prediction; the photo itself is
not read here (training checks that each scribble PNG has its image's size)."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from .io import check_outputs, write_label
from .scribbles import class_id, draw_strokes

SCRIBBLE_SHAPES = ("line", "linestrip", "polygon", "point")


def rasterize_labelme(path: str, class_names: Sequence[str], width: int = 3) -> np.ndarray:
    """The scribble label of one labelme file. Every field read is checked, and a malformed file is
    a ValueError naming it: a size over io.MAX_PIXELS (checked by draw_strokes), a shape that is not
    an object, a label that is not a string, points that are not [[x, y], ...] of numbers."""
    doc = _load(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise ValueError(f'{path} is not a labelme file (no "shapes" list)')
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"{path}: imageHeight and imageWidth must be positive integers, got {h!r} x {w!r}")
    strokes = []
    for i, shape in enumerate(doc["shapes"]):
        if not isinstance(shape, dict):
            raise ValueError(f"{path}: shape {i} is {type(shape).__name__}, not a labelme shape object")
        label, kind = shape.get("label"), shape.get("shape_type")
        if not isinstance(label, str):
            raise ValueError(f"{path}: shape {i} has label {label!r}; a label is a class name (a string)")
        kind = "polygon" if kind is None else kind  # labelme's own default
        if kind not in SCRIBBLE_SHAPES:
            raise ValueError(f"{path}: shape {i} ({label!r}) is a {kind!r}; scribbles are {', '.join(SCRIBBLE_SHAPES)}")
        points = shape.get("points")
        if not isinstance(points, list) or not all(_is_xy(p) for p in points):
            raise ValueError(f"{path}: shape {i} ({label!r}) needs points [[x, y], ...] of numbers")
        if not points:
            raise ValueError(f"{path}: shape {i} ({label!r}) has no points")
        try:
            points = [(float(x), float(y)) for x, y in points]
        except OverflowError:  # an integer too large for a float; NaN and Inf are refused by draw_strokes
            raise ValueError(f"{path}: shape {i} ({label!r}) has a coordinate that is not finite") from None
        if kind == "polygon" and len(points) > 2:
            points.append(points[0])
        strokes.append((class_id(path, label, class_names), points))
    return draw_strokes(path, (h, w), strokes, width)


def _load(path: str):
    """The JSON document of `path` (UTF-8, as labelme writes it; a byte-order mark is passed over)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except ValueError as e:  # bad JSON or UTF-8, and numbers of over 4300 digits
        raise ValueError(f"cannot parse labelme JSON {path}: {e}") from None
    except RecursionError:  # json's decoder recurses once per nested list or object
        raise ValueError(f"cannot parse labelme JSON {path}: nested too deeply") from None


def _is_xy(p) -> bool:
    return (
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
    )


def convert_labelme(json_dir: str, out_dir: str, class_names: Sequence[str], width: int = 3) -> int:
    """Every <name>.json of `json_dir` to `out_dir`/<name>.png; returns the number written."""
    paths = sorted(glob.glob(os.path.join(json_dir, "*.json")))
    if not paths:
        raise FileNotFoundError(f"no .json files in {json_dir}")
    jobs = [(p, os.path.join(out_dir, os.path.splitext(os.path.basename(p))[0] + ".png")) for p in paths]
    check_outputs(jobs)
    for path, out in tqdm(jobs, desc="convert-scribbles", unit="file"):
        write_label(out, rasterize_labelme(path, class_names, width))
    return len(paths)
