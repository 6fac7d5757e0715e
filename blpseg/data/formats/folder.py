"""The plain folder format for one's own data (data.format: folder; docs/training.md, "Your own data"):

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

import os
from typing import TYPE_CHECKING

from PIL import Image

from ..classes import read_class_file
from ..io import list_files, read_split_list
from .base import DataFormat

if TYPE_CHECKING:
    from ..dataset import LabeledImages

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
    from ..dataset import LabeledImages

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
        lists,
        split,
    )


class FolderFormat(DataFormat):
    name = "folder"
    description = "the folder format: images/, scribbles/, masks/, classes.txt under data.root"
    keys = ("train.label_diffusion",)

    def class_names(self, data: dict) -> tuple[str, ...]:
        return read_classes(data["root"])

    def class_source(self, data: dict) -> str:
        return os.path.join(data["root"], CLASSES)

    def files(self, data: dict) -> list[str]:
        return [self.class_source(data)]

    def split(self, data: dict, which: str, num_classes: int, transform, seed: int = 0, split: str | None = None):
        return folder_split(data["root"], which, num_classes, transform, seed, data["train"]["label_diffusion"], split)

    def pairs(self, data, num_classes, transform, split=None, mask_dir=None, scribble_dir=None):
        """The images that have both a mask and a scribble (the format names its own folders)."""
        from ..dataset import LabeledImages

        if split or mask_dir or scribble_dir:
            raise ValueError(
                "--split, --mask-dir and --scribble-dir apply to the VOC layout; a data.format=folder "
                "analysis reads the images that have both a scribble and a mask"
            )
        root = data["root"]
        images, scribbles, masks = _images(root), _labels(root, SCRIBBLES), _labels(root, MASKS)
        names = [n for n in images if n in scribbles and n in masks]
        if not names:
            raise ValueError(f"no image of {root} has both a scribble ({SCRIBBLES}/) and a mask ({MASKS}/)")
        return (
            LabeledImages([(n, images[n], masks[n]) for n in names], num_classes, False, transform),
            LabeledImages([(n, images[n], scribbles[n]) for n in names], num_classes, True, transform),
        )

    def title(self, data: dict, split: str | None = None) -> str:
        return data["root"]


FORMAT = FolderFormat()
