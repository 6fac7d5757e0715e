"""The page's data folder (`--data-root`, the folder format of data/formats/folder.py): its photos,
saving a photo's scribble, and its data summary."""

from __future__ import annotations

import os
import re

from ..data.formats.folder import CLASSES, IMAGES, SCRIBBLES, _images, folder_split, read_classes
from ..data.io import read_label, write_image, write_label
from ..data.summary import data_summary, format_summary
from ..files import atomic_write


def photos(root: str | None) -> dict[str, str]:
    """{name: path} of the images of root/images/ ({} without a data folder or images)."""
    if not root or not os.path.isdir(os.path.join(root, IMAGES)):
        return {}
    return _images(root)


def saved_scribble(root: str | None, name: str):
    """root/scribbles/NAME.png as class ids, or None where there is none."""
    path = os.path.join(root, SCRIBBLES, name + ".png") if root else None
    return read_label(path) if path and os.path.isfile(path) else None


def safe_name(filename: str) -> str:
    """An uploaded file's name as a data name: its base name without extension, characters other
    than letters, digits, '-', '_' and '.' replaced (a name from a browser is untrusted)."""
    name = re.sub(r"[^\w.-]", "_", os.path.splitext(os.path.basename(filename))[0]).lstrip(".")
    if not name:
        raise ValueError(f"cannot make a file name of {filename!r}")
    return name


def check_classes(root: str, names) -> None:
    """root/classes.txt, when present, must list the checkpoint's classes in its order: the saved
    scribbles hold the checkpoint's class ids."""
    path = os.path.join(root, CLASSES)
    if os.path.exists(path) and tuple(read_classes(root)) != tuple(names):
        raise ValueError(
            f"{path} lists other classes than the checkpoint ({', '.join(names)}); scribbles drawn with the "
            "checkpoint's brushes would be read as other classes. Choose another --data-root"
        )


def save(root: str, name: str, image, scribble, names, image_path: str | None, overwrite: bool) -> list[str]:
    """Writes scribbles/NAME.png (the class ids, 255 unscribbled) and, for a photo not yet in
    root/images/ (`image_path` None: an upload), images/NAME.png; classes.txt when missing.
    Without `overwrite`, a scribble or image already there is refused (nothing is written).
    Returns the files written."""
    check_classes(root, names)
    scribble_path = os.path.join(root, SCRIBBLES, name + ".png")
    existing = [scribble_path] if os.path.lexists(scribble_path) else []
    writes = [(scribble_path, scribble)]
    same = photos(root).get(name) if image_path is None else None  # images/NAME.* of another photo
    if same is not None:
        existing.append(same)
    if image_path is None:
        writes.insert(0, (os.path.join(root, IMAGES, name + ".png"), image))
    if existing and not overwrite:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: tick "
            '"overwrite an existing scribble" to replace, or leave it as it is'
        )
    if not os.path.exists(os.path.join(root, CLASSES)):
        with atomic_write(os.path.join(root, CLASSES), "w", sync=False) as fh:
            fh.write("".join(n + "\n" for n in names))
    written = []
    for path, array in writes:
        (write_label if path == scribble_path else write_image)(path, array)
        written.append(path)
    if same is not None and os.path.normcase(same) != os.path.normcase(writes[0][0]):
        os.remove(same)  # images/NAME.jpg replaced by images/NAME.png: one image per name
    return written


def summary_text(root: str | None, names) -> str:
    """The data summary of root's scribbles (as `blpseg data-summary` prints it), or why there is none."""
    if not root:
        return "no data folder (--data-root): scribbles cannot be saved"
    try:
        train = folder_split(root, "train", len(names), None)
        val = folder_split(root, "val", len(names), None)
        for split in (train, val):
            if split is not None:
                split.check_labels()
    except (OSError, ValueError) as e:  # no scribble yet, or a bad file: said on the page
        return f"no data summary of {root}: {e}"
    return format_summary(data_summary(train, val, names, f"no full masks in {root}/masks/"))
