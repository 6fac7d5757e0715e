"""Scribbles drawn in labelme (https://github.com/wkentaro/labelme, the open annotation tool most
used for this) rasterised to scribble PNGs. A labelme JSON file holds imageHeight, imageWidth and
"shapes", each with a label, a shape_type and points [[x, y], ...]; the scribble shapes are drawn:
"line" and "linestrip" as polylines, "polygon" as its closed outline, "point" as a dot, each
`width` pixels wide, in file order (a later shape over an earlier one). Other shape types
(rectangle, circle, mask) are not scribbles and are refused naming the file, as are labels missing
from the class list. Read with the standard json module: the labelme package is not needed."""

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
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse labelme JSON {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise ValueError(f'{path} is not a labelme file (no "shapes" list)')
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"{path}: imageHeight and imageWidth must be positive integers, got {h!r} x {w!r}")
    strokes = []
    for i, shape in enumerate(doc["shapes"]):
        kind = shape.get("shape_type") or "polygon"  # labelme's own default
        if kind not in SCRIBBLE_SHAPES:
            raise ValueError(
                f"{path}: shape {i} ({shape.get('label')!r}) is a {kind!r}; scribbles are {', '.join(SCRIBBLE_SHAPES)}"
            )
        try:
            points = [(float(x), float(y)) for x, y in shape["points"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: shape {i} ({shape.get('label')!r}) needs points [[x, y], ...]") from None
        if not points:
            raise ValueError(f"{path}: shape {i} ({shape.get('label')!r}) has no points")
        if kind == "polygon" and len(points) > 2:
            points.append(points[0])
        strokes.append((class_id(path, shape.get("label"), class_names), points))
    return draw_strokes(path, (h, w), strokes, width)


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
