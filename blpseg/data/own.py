"""The plain folder format for one's own data (docs/training.md, "Your own data"):

    root/classes.txt        one class name per line; line i (from 0) is class id i, background first
    root/images/<name>.*    images in any format and mode PIL reads (.jpg, .png, .tif...); other
                            files there (labelme's <name>.json) are not images and are passed over
    root/scribbles/<name>.png   scribbles: palette or greyscale PNG of class ids, 255 = not scribbled
    root/masks/<name>.png   optional full masks (255 = void), for validation
    root/train.txt, root/val.txt    optional: one name per line

Without split lists, an image is trained on when it has a scribble, and validated on when it has a
mask but no scribble, so a validation image is never trained on by default. A split list, when
present, chooses instead (and `blpseg eval --split NAME` evaluates the masks of root/NAME.txt's
images, or with NAME=train and no list, of the scribbled images). Extensions match in any case.
"""

from __future__ import annotations

import filecmp
import os
import shutil

from PIL import Image
from tqdm import tqdm

from .classes import read_class_file
from .folder import LabeledImages, read_split_list
from .io import check_outputs, list_files, refuse_existing

IMAGES, SCRIBBLES, MASKS, CLASSES = "images", "scribbles", "masks", "classes.txt"


def read_classes(root: str) -> tuple[str, ...]:
    return read_class_file(os.path.join(root, CLASSES))


def _images(root: str) -> dict[str, str]:
    folder = os.path.join(root, IMAGES)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    # labelme's .json files beside the images are not images
    return list_files(folder, set(Image.registered_extensions()), "images")


def _labels(root: str, folder: str) -> dict[str, str]:
    path = os.path.join(root, folder)
    return list_files(path, {".png"}, folder) if os.path.isdir(path) else {}


def folder_split(
    root: str,
    which: str,
    num_classes: int,
    transform,
    seed: int = 0,
    label_diffusion: dict | None = None,
    split: str | None = None,
) -> LabeledImages | None:
    """`which` "train" reads scribbles, "val" full masks, of the images of `split` (default: `which`):
    root/<split>.txt when present, else for "train" the images with a scribble and for "val" those
    with a mask but no scribble; another split needs its list. None for the default "val" when the
    folder has no such image. `label_diffusion` applies to "train" (LabeledImages)."""
    split = split or which
    images = _images(root)
    scribbles, masks = _labels(root, SCRIBBLES), _labels(root, MASKS)
    labels, folder = (scribbles, SCRIBBLES) if which == "train" else (masks, MASKS)
    list_path = os.path.join(root, f"{split}.txt")
    lists = []
    if os.path.isfile(list_path):
        names, lists = read_split_list(list_path), [list_path]
    elif split == "train":
        names = [n for n in images if n in scribbles]
        if not names:
            raise ValueError(f"no image of {root}/{IMAGES} has a scribble in {root}/{SCRIBBLES}")
    elif split == "val":
        names = [n for n in images if n in masks and n not in scribbles]
        if not names:
            return None
    else:
        raise FileNotFoundError(f"split list not found: {list_path}")
    for n in names:
        if n not in images:
            raise FileNotFoundError(f"{n!r} ({split}) has no image in {os.path.join(root, IMAGES)}")
        if n not in labels:
            kind = "scribble" if which == "train" else "full mask (evaluation compares with masks, not scribbles)"
            raise FileNotFoundError(f"{n!r} ({split}) has no {kind}: {os.path.join(root, folder, n + '.png')}")
    return LabeledImages(
        [(n, images[n], labels[n]) for n in names],
        num_classes,
        which == "train",
        transform,
        seed,
        label_diffusion if which == "train" else None,
        lists=lists,
    )


def export_folder(data: dict, class_names, out: str, overwrite: bool = False, files=()) -> dict:
    """Writes a VOC-layout config's data (a resolved data section) in the folder format: the train
    split's images and scribbles, the val split's images and masks, classes.txt. Returns counts.
    A file already there with the same bytes is left as it is (exporting again does nothing); other
    files there are replaced only with `overwrite`. `files`: the config's files, never written."""
    from .folder import build_dataset

    if data["format"] != "voc":
        raise ValueError("export-folder reads a VOC-layout config (data.format=voc)")
    if data["val"] is None:
        raise ValueError("export-folder needs the config's data.val section (the validation masks)")
    jobs, counts, lists = [], {}, [*files]
    for which, folder in (("train", SCRIBBLES), ("val", MASKS)):
        ds = build_dataset(data, data[which], len(class_names), None)
        counts[which], lists = len(ds), lists + ds.lists
        for i, name in enumerate(ds.names):
            image, label = ds.paths(i)
            jobs.append((image, os.path.join(out, IMAGES, name + os.path.splitext(image)[1])))
            jobs.append((label, os.path.join(out, folder, name + ".png")))
    classes_path, classes_text = os.path.join(out, CLASSES), ("\n".join(class_names) + "\n").encode()
    check_outputs([*jobs, (None, classes_path)], files=lists)
    for src, _ in jobs:
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src} not found")
    jobs = [(src, dst) for src, dst in jobs if not (os.path.isfile(dst) and filecmp.cmp(src, dst, shallow=False))]
    write_classes = not (os.path.isfile(classes_path) and _read_bytes(classes_path) == classes_text)
    changed = [dst for _, dst in jobs] + ([classes_path] if write_classes else [])
    if not overwrite:
        refuse_existing([p for p in changed if os.path.lexists(p)])
    for src, dst in tqdm(jobs, desc="export-folder", unit="file"):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp{os.getpid()}"  # then renamed: a link at dst is replaced, never written through
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    if write_classes:
        os.makedirs(out, exist_ok=True)
        with open(classes_path, "wb") as fh:
            fh.write(classes_text)
    return counts


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


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
