"""Scribble labels: rasterising PASCAL-Scribble's XML polylines (with the checks, drawing and
all-or-nothing conversion that the labelme converter shares), and simulating annotators' scribbles
on full masks. In every scribble PNG, 255 means "not scribbled"."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence

import numpy as np
from defusedxml import ElementTree
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.morphology import skeletonize
from tqdm import tqdm

from .io import check_outputs, check_pixels, image_size, list_files, read_label, write_label
from .regions import connected_regions

NOT_SCRIBBLED = 255


def parse_scribble_xml(path: str) -> tuple[tuple[int, int] | None, list[tuple[str, list[tuple[float, float]]]]]:
    """PASCAL-Scribble XML -> ((height, width) or None, [(tag, [(x, y), ...]), ...]). Parsed with
    defusedxml: the files come from outside."""
    try:
        root = ElementTree.parse(path).getroot()
    except Exception as e:
        raise ValueError(f"cannot parse scribble XML {path}: {e}") from e
    size = None
    h, w = root.findtext("size/height"), root.findtext("size/width")
    if h is not None and w is not None:
        try:
            size = (int(h), int(w))
        except ValueError:
            size = None
        if size is None or min(size) < 1:
            raise ValueError(f"{path}: <size> must hold positive integer <height> and <width>, got {h!r} x {w!r}")
    polygons = []
    for poly in root.iter("polygon"):
        tag = (poly.findtext("tag") or "").strip()
        try:
            points = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in poly.iter("point")]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: a point of polygon {tag!r} lacks a numeric <X> or <Y>") from e
        polygons.append((tag, points))
    if not polygons:  # e.g. a VOC detection annotation: it would become a label with no scribble
        raise ValueError(f"{path} holds no <polygon>: not a PASCAL-Scribble file")
    return size, polygons


def read_scribble_xml(path: str, class_names: Sequence[str], size=None) -> tuple[tuple[int, int], list]:
    """One XML file as (size, shapes) for draw_shapes, checked so that drawing cannot fail. `size`
    (H, W) overrides the file's <size>."""
    xml_size, polygons = parse_scribble_xml(path)
    size = size or xml_size
    if size is None:
        raise ValueError(f"{path} has no <size>; pass the image size")
    check_pixels(path, *size)
    shapes = [
        (class_id(path, tag, class_names), STROKE, check_points(path, size, points, f"a polygon of {tag!r}"))
        for tag, points in polygons
    ]
    return size, shapes


def rasterize_scribbles(path: str, class_names: Sequence[str], width: int = 3, size=None) -> np.ndarray:
    """Draws the polylines of one XML file, `width` pixels wide, into an (H, W) uint8 label that is
    NOT_SCRIBBLED elsewhere. `size` (H, W) overrides the file's <size>."""
    return draw_shapes(*read_scribble_xml(path, class_names, size), width)


def class_id(path: str, name: str, class_names: Sequence[str]) -> int:
    if name not in class_names:
        raise ValueError(f"{path}: unknown class {name!r} (expected one of {', '.join(class_names)})")
    return list(class_names).index(name)


# What draw_shapes draws: a stroke is a polyline `width` pixels wide (one point: a dot); a polygon,
# a rectangle (two corners, [min, max]) and an ellipse (its bounding box, [min, max]) are filled.
STROKE, POLYGON, RECTANGLE, ELLIPSE = "stroke", "polygon", "rectangle", "ellipse"


def check_points(path: str, size: tuple[int, int], points, what: str) -> np.ndarray:
    """`points` [(x, y), ...] as an (N, 2) float array. Refused naming `path` and `what`: a
    coordinate that is not finite (PIL would draw it as a line across the image) or more than the
    image's size outside it (annotation tools keep points on the image; PIL would step through
    every pixel to it)."""
    try:
        xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{path}: {what} has a coordinate that is not finite") from None
    if not np.isfinite(xy).all():
        raise ValueError(f"{path}: {what} has a coordinate that is not finite (NaN or Inf)")
    extent = np.array([size[1], size[0]], dtype=np.float64)  # (x, y) bounds
    if ((xy < -extent) | (xy > 2 * extent)).any():
        raise ValueError(
            f"{path}: {what} has a point more than the image's size outside the {size[0]} x {size[1]} image"
        )
    return xy


def draw_shapes(size: tuple[int, int], shapes, width: int = 3) -> np.ndarray:
    """Draws [(value, kind, (N, 2) points)] in order (a later shape over an earlier one) into an
    (H, W) uint8 label that is NOT_SCRIBBLED elsewhere. The shapes come from a reader that checked
    them (check_points, check_pixels), so drawing does not fail."""
    if width < 1:
        raise ValueError(f"the stroke width must be >= 1, got {width}")
    canvas = Image.new("L", (size[1], size[0]), NOT_SCRIBBLED)
    draw = ImageDraw.Draw(canvas)
    r = (width - 1) / 2
    fill = {POLYGON: draw.polygon, RECTANGLE: draw.rectangle, ELLIPSE: draw.ellipse}
    for value, kind, xy in shapes:
        points = [tuple(p) for p in xy.tolist()]
        if not points:  # an XML <polygon> without <point>
            continue
        if kind in fill:  # the outline too, as labelme's shape_to_mask draws regions
            fill[kind](points, fill=value, outline=value)
        elif len(points) == 1 and width <= 1:
            draw.point(points, fill=value)
        elif len(points) == 1:
            (x, y) = points[0]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
        else:
            draw.line(points, fill=value, width=width, joint="curve")
    return np.asarray(canvas).copy()


def annotation_jobs(in_dir: str, ext: str, out_dir: str, what: str) -> list[tuple[str, str]]:
    """[(in_dir/<name><ext>, out_dir/<name>.png)] for every file of `in_dir` ending in `ext` (in any
    case): what the converters read and write."""
    files = list_files(in_dir, {ext}, what)
    if not files:
        raise FileNotFoundError(f"no {ext} files in {in_dir}")
    return [(path, os.path.join(out_dir, name + ".png")) for name, path in files.items()]


def convert_files(jobs, read, width: int = 3, inputs=(), files=(), overwrite: bool = False) -> int:
    """Writes, for each (input, output) of `jobs`, the label drawn from read(input) -> (size,
    shapes). Outputs are checked against every input first (io.check_outputs: `inputs` more data
    inputs, `files` the class list; existing outputs are replaced only with `overwrite`). All or
    nothing: every input is read and checked before the first output is written, so one bad file is
    an error naming it and nothing is written (a failing disk can still stop it part way). Only the
    shapes are kept meanwhile (16 bytes a point: 16 MB for a million points), never the drawn
    labels. Returns the number written."""
    check_outputs(jobs, inputs, files, overwrite)
    read_all = [read(src) for src, _ in tqdm(jobs, desc="convert-scribbles: check", unit="file")]
    for (_, out), (size, shapes) in tqdm(
        zip(jobs, read_all, strict=True), total=len(jobs), desc="convert-scribbles: write", unit="file"
    ):
        write_label(out, draw_shapes(size, shapes, width))
    return len(jobs)


def convert_scribbles(
    xml_dir: str,
    out_dir: str,
    class_names: Sequence[str],
    width: int = 3,
    image_dir: str | None = None,
    overwrite: bool = False,
    files=(),
) -> int:
    """Rasterises every <id>.xml of `xml_dir` to `out_dir`/<id>.png (all or nothing: convert_files);
    sizes come from the XML or, when `image_dir` is given, from its image <id>.* (any image format).
    Existing PNGs are replaced only with `overwrite`; `files` (the class list) are inputs too.
    Returns the number of files written."""
    jobs = annotation_jobs(xml_dir, ".xml", out_dir, "PASCAL-Scribble XML files")
    images = {}
    if image_dir is not None:
        found = list_files(image_dir, set(Image.registered_extensions()), "images")
        for path, _ in jobs:
            name = os.path.splitext(os.path.basename(path))[0]
            if name not in found:
                raise FileNotFoundError(f"{path}: no image {name}.* in {image_dir} (--image-dir) to take the size from")
            images[path] = found[name]

    def read(path: str):
        return read_scribble_xml(path, class_names, image_size(images[path]) if image_dir is not None else None)

    return convert_files(jobs, read, width, images.values(), files, overwrite)


def simulate_scribbles(
    mask: np.ndarray,
    rng: np.random.Generator,
    width: tuple[int, int] = (1, 3),
    length: tuple[float, float] = (0.4, 0.9),
    erosion: float = 0.3,
    min_area: int = 16,
    ignore_index: int = 255,
) -> np.ndarray:
    """Scribbles as annotators draw them (the bias of the paper's Fig. 1): one stroke per connected
    region of each class, along the skeleton of the region eroded to the pixels deeper than
    `erosion` x its largest depth, running from the skeleton point nearest the region's centre a
    random fraction `length` of the way to the skeleton's ends, then widened to 1-3 px (`width`).
    Regions under `min_area` pixels and `ignore_index` pixels get none."""
    out = np.full(mask.shape, NOT_SCRIBBLED, dtype=np.uint8)
    for c, box, region in connected_regions(mask, ignore_index):
        if region.sum() < min_area:
            continue
        stroke = _stroke(region, rng, length, erosion)
        w = int(rng.integers(width[0], width[1] + 1))
        if w > 1:
            stroke = ndimage.binary_dilation(stroke, structure=np.ones((w, w), dtype=bool))
        out[box][stroke & region] = c
    return out


def _stroke(region: np.ndarray, rng, length, erosion) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    skeleton = skeletonize(depth >= max(erosion * depth.max(), 1.0))
    centre = np.unravel_index(np.argmax(depth), depth.shape)
    points = np.argwhere(skeleton)
    if len(points) == 0:
        skeleton[centre] = True
        return skeleton
    seed = tuple(points[np.argmin(((points - centre) ** 2).sum(1))])
    steps = _geodesic_steps(skeleton, seed)
    reach = rng.uniform(*length) * max(steps.values())
    stroke = np.zeros_like(skeleton)
    for p, d in steps.items():
        if d <= reach:
            stroke[p] = True
    return stroke


def _geodesic_steps(skeleton: np.ndarray, seed) -> dict:
    """Breadth-first steps along the 8-connected skeleton from `seed`."""
    steps, queue = {seed: 0}, deque([seed])
    H, W = skeleton.shape
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                if 0 <= q[0] < H and 0 <= q[1] < W and skeleton[q] and q not in steps:
                    steps[q] = steps[(y, x)] + 1
                    queue.append(q)
    return steps


def scribblize(mask_dir: str, out_dir: str, seed: int = 0, overwrite: bool = False, **options) -> int:
    """simulate_scribbles on every PNG mask of `mask_dir`, written to `out_dir`/<name>.png; existing
    files there are replaced only with `overwrite`."""
    jobs = annotation_jobs(mask_dir, ".png", out_dir, "masks")
    check_outputs(jobs, overwrite=overwrite)
    for i, (path, out) in enumerate(tqdm(jobs, desc="scribblize", unit="mask")):
        write_label(out, simulate_scribbles(read_label(path), np.random.default_rng([seed, i]), **options))
    return len(jobs)
