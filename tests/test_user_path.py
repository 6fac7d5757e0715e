"""A new user's first day (docs/training.md, "A first day with your own photos"), end to end on a
few generated photos: labelme files beside the photos -> convert-scribbles -> data-summary ->
train with configs/own_data.yaml -> eval -> predict with an overlay."""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blpseg import cli
from blpseg.data.io import read_label

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "ball", "box"]
H, W = 48, 64


def photo(path, rng, ball, box):
    """A noisy green photo with a red ball (centre, radius) and a blue box (x0, y0, x1, y1)."""
    rgb = np.clip(rng.normal((90, 140, 80), 25, (H, W, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    (cx, cy), r = ball
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200, 40, 40))
    draw.rectangle(box, fill=(40, 60, 190))
    im.save(path)


def shape(label, kind, points):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def labelme(path, image, shapes):
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image, "imageData": None}
    path.write_text(json.dumps({**doc, "imageHeight": H, "imageWidth": W}))


def make_set(root):
    """my_set/images: 4 training photos with their labelme files (regions for the objects), 2
    validation photos; labelme_val/: the validation photos' files, fully annotated."""
    rng = np.random.default_rng(0)
    images, val = root / "my_set" / "images", root / "labelme_val"
    images.mkdir(parents=True)
    val.mkdir()
    (root / "my_set" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(6):
        ball = ((14 + 6 * i, 16 + 2 * i), 8)
        box = (40 - 3 * i, 26, 58 - 3 * i, 44)
        name = f"photo_{i}"
        photo(images / f"{name}.jpg", rng, ball, box)
        (cx, cy), r = ball
        objects = [shape("ball", "circle", [[cx, cy], [cx + r - 1, cy]]), shape("box", "rectangle", [box[:2], box[2:]])]
        if i < 4:
            labelme(images / f"{name}.json", f"{name}.jpg", objects)
        else:  # validation: the whole photo is background first, the objects over it
            labelme(
                val / f"{name}.json",
                f"{name}.jpg",
                [shape("background", "rectangle", [[0, 0], [W - 1, H - 1]]), *objects],
            )


def add_background_strokes(images):
    """What an annotator does after the summary's warning: a stroke across each photo's background."""
    for path in sorted(images.glob("*.json")):
        doc = json.loads(path.read_text())
        doc["shapes"].append(shape("background", "linestrip", [[1, 2], [30, 3], [62, 1]]))
        path.write_text(json.dumps(doc))


def run(*args):
    assert cli.main([str(a) for a in args]) == 0, args


def test_a_new_users_first_day(tmp_path, capsys):
    make_set(tmp_path)
    my_set, images = tmp_path / "my_set", tmp_path / "my_set" / "images"
    classes = ["--classes", my_set / "classes.txt"]
    config = ["--config", ROOT / "configs" / "own_data.yaml", f"data.root={my_set}"]

    # labelme files beside the photos, as labelme saves them: objects outlined, no background
    run("convert-scribbles", images, my_set / "scribbles", "--from", "labelme", *classes)
    run("convert-scribbles", tmp_path / "labelme_val", my_set / "masks", "--from", "labelme", "--masks", *classes)
    capsys.readouterr()
    run("data-summary", *config)
    out = capsys.readouterr().out
    assert "training data: 4 images" in out and "validation data: 2 images, 3 of 3 classes present" in out
    assert "warning: 1 of 3 classes have no scribbled pixel in the 4 training images" in out
    assert out.splitlines()[-1].endswith(": background")

    # the summary's advice followed: a background stroke in each file, converted again
    add_background_strokes(images)
    run("convert-scribbles", images, my_set / "scribbles", "--from", "labelme", *classes, "--overwrite")
    capsys.readouterr()
    run("data-summary", *config)
    assert "warning" not in capsys.readouterr().out

    # training, with the network and schedule shrunk to fit a test
    run_dir = tmp_path / "runs" / "my_set"
    tiny = ["device=cpu", "threads=1", "model.backbone=resnet18", "model.channels=16", "model.embed_dim=8"]
    tiny += ["data.resize=48", "data.crop=32", "train.epochs=3", "train.log_every=1"]
    run("train", *config, f"out_dir={run_dir}", *tiny)
    out = capsys.readouterr().out
    assert "training data: 4 images" in out and "training 6 iterations" in out  # 3 epochs of 4 // 2 batches
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert summary["classes"] == CLASSES and summary["warnings"] == []

    run("eval", "--checkpoint", run_dir / "last.pt")
    result = json.loads((run_dir / "eval.json").read_text())
    assert list(result["iou_by_class"]) == CLASSES
    assert np.array(result["confusion"]).sum() == 2 * H * W  # masks at the photos' size, every pixel labelled

    predictions = tmp_path / "predictions"
    run("predict", images / "photo_4.jpg", "--checkpoint", run_dir / "last.pt", "--out", predictions, "--overlay")
    assert sorted(os.listdir(predictions)) == ["photo_4.png", "photo_4_overlay.png"]
    assert read_label(str(predictions / "photo_4.png")).shape == (H, W)  # back at the photo's size
    assert Image.open(predictions / "photo_4_overlay.png").size[0] == W
