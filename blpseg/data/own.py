"""The plain folder format for one's own data (docs/training.md, "Your own data"):

    root/classes.txt        one class name per line; line i (from 0) is class id i, background first
    root/images/<name>.*    images in any format and mode PIL reads (.jpg, .png, .tif...); other
                            files there (labelme's <name>.json) are not images and are passed over
    root/scribbles/<name>.png   scribbles: palette or greyscale PNG of class ids, 255 = not scribbled
    root/masks/<name>.png   optional full masks (255 = void), for validation
    root/train.txt, root/val.txt    optional: one name per line

Without split lists, an image is trained on when it has a scribble, and validated on when it has a
mask but no scribble, so a validation image is never trained on by default. A split list, when
present, chooses instead (and `blpseg eval --split NAME` reads root/NAME.txt).
"""

from __future__ import annotations

import glob
import os
import shutil

from PIL import Image
from tqdm import tqdm

from .classes import read_class_file
from .folder import LabeledImages, read_split_list
from .io import check_outputs

IMAGES, SCRIBBLES, MASKS, CLASSES = "images", "scribbles", "masks", "classes.txt"


def read_classes(root: str) -> tuple[str, ...]:
    return read_class_file(os.path.join(root, CLASSES))


def _images(root: str) -> dict[str, str]:
    folder = os.path.join(root, IMAGES)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    out: dict[str, str] = {}
    image_exts = Image.registered_extensions()  # labelme's .json files beside the images are not images
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        name, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() not in image_exts:
            continue
        if name in out:
            raise ValueError(f"two images named {name!r}: {out[name]} and {path}; keep one per name")
        out[name] = path
    return out


def _labels(root: str, folder: str) -> dict[str, str]:
    return {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(os.path.join(root, folder, "*.png")))}


def folder_split(
    root: str, which: str, num_classes: int, transform, seed: int = 0, label_diffusion: dict | None = None
) -> LabeledImages | None:
    """ "train" (scribbles), "val" (masks), or any NAME with root/NAME.txt (masks). None for "val"
    when the folder has no validation images (no masks/ beyond the scribbled images, no val.txt).
    `label_diffusion` applies to "train" (LabeledImages)."""
    images = _images(root)
    scribbles, masks = _labels(root, SCRIBBLES), _labels(root, MASKS)
    labels = scribbles if which == "train" else masks
    list_path = os.path.join(root, f"{which}.txt")
    if os.path.isfile(list_path):
        names = read_split_list(list_path)
    elif which == "train":
        names = [n for n in images if n in scribbles]
    elif which == "val":
        names = [n for n in images if n in masks and n not in scribbles]
        if not names:
            return None
    else:
        raise FileNotFoundError(f"split list not found: {list_path}")
    if not names:
        raise ValueError(f"no image of {root}/{IMAGES} has a scribble in {root}/{SCRIBBLES}")
    for n in names:
        if n not in images:
            raise FileNotFoundError(f"{n!r} ({which}) has no image in {os.path.join(root, IMAGES)}")
        if n not in labels:
            where = os.path.join(root, SCRIBBLES if which == "train" else MASKS)
            raise FileNotFoundError(f"{n!r} ({which}) has no label {os.path.join(where, n + '.png')}")
    return LabeledImages(
        [(n, images[n], labels[n]) for n in names],
        num_classes,
        which == "train",
        transform,
        seed,
        label_diffusion if which == "train" else None,
    )


def export_folder(data: dict, class_names, out: str) -> dict:
    """Writes a VOC-layout config's data (a resolved data section) in the folder format: the train
    split's images and scribbles, the val split's images and masks, classes.txt. Returns counts."""
    from .folder import build_dataset

    if data["format"] != "voc":
        raise ValueError("export-folder reads a VOC-layout config (data.format=voc)")
    if data["val"] is None:
        raise ValueError("export-folder needs the config's data.val section (the validation masks)")
    jobs, counts = [], {}
    for which, folder in (("train", SCRIBBLES), ("val", MASKS)):
        ds = build_dataset(data, data[which], len(class_names), None)
        counts[which] = len(ds)
        for i, name in enumerate(ds.names):
            image, label = ds.paths(i)
            jobs.append((image, os.path.join(out, IMAGES, name + os.path.splitext(image)[1])))
            jobs.append((label, os.path.join(out, folder, name + ".png")))
    check_outputs(jobs)
    for src, dst in tqdm(jobs, desc="export-folder", unit="file"):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src} not found")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
    with open(os.path.join(out, CLASSES), "w") as fh:
        fh.write("\n".join(class_names) + "\n")
    return counts


def paired_folder_items(root: str, num_classes: int, transform) -> tuple[LabeledImages, LabeledImages]:
    """The images with both a mask and a scribble, as (masks, scribbles) data sets in one order."""
    images, scribbles, masks = _images(root), _labels(root, SCRIBBLES), _labels(root, MASKS)
    names = [n for n in images if n in scribbles and n in masks]
    if not names:
        raise ValueError(f"no image of {root} has both a scribble ({SCRIBBLES}/) and a mask ({MASKS}/)")
    return (
        LabeledImages([(n, images[n], masks[n]) for n in names], num_classes, False, transform),
        LabeledImages([(n, images[n], scribbles[n]) for n in names], num_classes, True, transform),
    )
