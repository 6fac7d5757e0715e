"""labelme (https://github.com/wkentaro/labelme, the open annotation tool most used for this) files
to label PNGs: scribbles for training, or with `masks` full masks for validation. A labelme JSON file
holds imageHeight, imageWidth and "shapes", each with a label, a shape_type and points [[x, y], ...].
Shapes are drawn in file order, a later one over an earlier one, as labelme's own export
(labelme.utils.shapes_to_label, used by its labelme2voc example) does:

- regions, filled with their label as labelme's shape_to_mask fills them (the outline included):
  "polygon" (3 points or more), "rectangle" (2 opposite corners), "circle" (2 points: the centre and
  a point on the circle, so the radius is their distance), "oriented_rectangle" (its 4 corners);
- strokes, `width` pixels wide (not labelme's 10-pixel lines and 5-pixel points: scribbles are
  thin): "line" and "linestrip" as polylines, "point" as a dot. A validation mask (`masks`) holds
  regions only: a stroke there is refused rather than given an arbitrary width.

Every pixel no shape covers is 255 (not scribbled; void in a mask): unlike labelme2voc, unlabelled
is not background, which must be drawn like any class. The label "__ignore__" (labelme's ignore
class) paints 255 too, and "_background_" (the name labelme's labels.txt gives class 0) is the
class "background" when the class list has "background" and no "_background_" of its own.
"mask" (AI mask) and "points" (AI prompt) shapes, labels missing from the class list and malformed
files are refused naming the file. Read with the standard json module: the labelme package is not
needed. imageHeight and imageWidth are the photo's size as labelme shows it, turned by its EXIF
orientation, which is how io.read_image reads it for training, evaluation and prediction; the
photo itself is not read here (training checks that each label has its image's size)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from .io import check_pixels
from .scribbles import (
    ELLIPSE,
    NOT_SCRIBBLED,
    POLYGON,
    RECTANGLE,
    STROKE,
    annotation_jobs,
    check_points,
    convert_files,
    draw_shapes,
)

IGNORE = "__ignore__"
# shape_type -> (what draw_shapes draws, the fewest points, the most: None for any number)
REGIONS = {
    "polygon": (POLYGON, 3, None),
    "rectangle": (RECTANGLE, 2, 2),
    "circle": (ELLIPSE, 2, 2),
    "oriented_rectangle": (POLYGON, 4, 4),
}
STROKES = {"line": (STROKE, 1, None), "linestrip": (STROKE, 1, None), "point": (STROKE, 1, None)}


def label_values(class_names: Sequence[str]) -> dict[str, int]:
    """labelme label -> pixel value: each class its id, "__ignore__" 255."""
    if IGNORE in class_names:
        raise ValueError(
            f"the class list holds {IGNORE!r}, labelme's ignore label (255 here), which would shift every "
            "class id: drop that line (labelme's labels.txt starts with __ignore__; classes.txt starts with "
            "the background class)"
        )
    return {**{name: i for i, name in enumerate(class_names)}, IGNORE: NOT_SCRIBBLED}


def _value(path: str, what: str, label: str, values: dict[str, int]) -> int:
    if label == "_background_" and label not in values and "background" in values:
        return values["background"]  # the name labelme's labels.txt (labelme2voc) gives class 0
    if label not in values:
        raise ValueError(
            f"{path}: {what} has unknown class {label!r} (expected one of "
            f"{', '.join(n for n in values if n != IGNORE)}, or {IGNORE} for 255)"
        )
    return values[label]


def read_labelme(path: str, values: dict[str, int], masks: bool = False) -> tuple[tuple[int, int], list]:
    """One labelme file as (size, shapes) for draw_shapes (label_values gives `values`). Every field
    read is checked, so that drawing cannot fail, and a malformed file is a ValueError naming it: a
    size over io.MAX_PIXELS, no shapes, a shape that is not an object, a label that is not a
    string or not a class, a shape type not read here (with `masks`, a stroke), points that are not
    [[x, y], ...] of numbers or not as many as the shape needs."""
    doc = _load(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise ValueError(f'{path} is not a labelme file (no "shapes" list)')
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"{path}: imageHeight and imageWidth must be positive integers, got {h!r} x {w!r}")
    check_pixels(path, h, w)
    if not doc["shapes"]:  # saved with every shape deleted: its label would hold nothing
        raise ValueError(f"{path} has no shapes: annotate the image or move the file out of the folder")
    kinds = REGIONS if masks else {**REGIONS, **STROKES}
    shapes = []
    for i, shape in enumerate(doc["shapes"]):
        if not isinstance(shape, dict):
            raise ValueError(f"{path}: shape {i} is {type(shape).__name__}, not a labelme shape object")
        label, kind = shape.get("label"), shape.get("shape_type")
        if not isinstance(label, str):
            raise ValueError(f"{path}: shape {i} has label {label!r}; a label is a class name (a string)")
        what = f"shape {i} ({label!r})"
        kind = "polygon" if kind is None else kind  # labelme's own default
        if kind not in kinds:
            raise ValueError(f"{path}: {what} is a {kind!r}; {_readable(masks)}")
        value = _value(path, what, label, values)
        points = shape.get("points")
        if not isinstance(points, list) or not all(_is_xy(p) for p in points):
            raise ValueError(f"{path}: {what} needs points [[x, y], ...] of numbers")
        if not points:
            raise ValueError(f"{path}: {what} has no points")
        draws, fewest, most = kinds[kind]
        if not fewest <= len(points) <= (most or len(points)):
            need = fewest if fewest == most else f"at least {fewest}"
            raise ValueError(f"{path}: {what} is a {kind} of {len(points)} points; it needs {need}")
        shapes.append((value, draws, _geometry(kind, check_points(path, (h, w), points, what))))
    return (h, w), shapes


def _geometry(kind: str, xy: np.ndarray) -> np.ndarray:
    """The points draw_shapes needs for a labelme shape: the bounding box of a circle (centre and a
    point on it) and the ordered corners of a rectangle, as labelme's shape_to_mask computes them."""
    if kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.hypot(cx - px, cy - py)
        return np.array([[cx - d, cy - d], [cx + d, cy + d]])
    if kind == "rectangle":
        return np.stack([xy.min(0), xy.max(0)])
    return xy


def _readable(masks: bool) -> str:
    regions = ", ".join(REGIONS)
    if masks:
        return f"a validation mask holds regions only ({regions}): convert strokes without --masks, as scribbles"
    return f"read are the regions {regions} and the strokes {', '.join(STROKES)} (draw an AI mask as an AI-Polygon)"


def rasterize_labelme(path: str, class_names: Sequence[str], width: int = 3, masks: bool = False) -> np.ndarray:
    """The label of one labelme file: a scribble label, or with `masks` a validation mask."""
    return draw_shapes(*read_labelme(path, label_values(class_names), masks), width)


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


def convert_labelme(
    json_dir: str,
    out_dir: str,
    class_names: Sequence[str],
    width: int = 3,
    masks: bool = False,
    overwrite: bool = False,
    files=(),
) -> int:
    """Every <name>.json of `json_dir` (any case of .json) to `out_dir`/<name>.png, all or nothing
    (every file is read and checked before the first is written: scribbles.convert_files). Existing
    PNGs are replaced only with `overwrite`; `files` (the class list) are inputs too. Returns the
    number written."""
    values = label_values(class_names)
    jobs = annotation_jobs(json_dir, ".json", out_dir, "labelme files")
    return convert_files(jobs, lambda p: read_labelme(p, values, masks), width, files=files, overwrite=overwrite)
