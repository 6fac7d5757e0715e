"""`blpseg export-folder`: a config's data (the synthetic set, a VOC-layout set) written in the plain
folder format (data/formats/folder.py)."""

from __future__ import annotations

import filecmp
import os
import shutil

from tqdm import tqdm

from . import formats
from .formats.folder import CLASSES, IMAGES, MASKS, SCRIBBLES
from .formats.folder import FORMAT as FOLDER
from .io import check_outputs, refuse_existing


def export_folder(data: dict, class_names, out: str, overwrite: bool = False, files=()) -> dict:
    """Writes a config's data (a resolved data section) in the folder format: the train split's
    images and scribbles, the val split's images and masks, classes.txt. Returns counts.
    A file already there with the same bytes is left as it is (exporting again does nothing); other
    files there are replaced only with `overwrite`. `files`: the config's files, never written."""
    if data["format"] == FOLDER.name:
        raise ValueError("export-folder writes a config's data in the folder format, which this config's already is")
    if data["val"] is None:
        raise ValueError("export-folder needs the config's data.val section (the validation masks)")
    jobs, counts, lists = [], {}, [*files]
    for which, folder in (("train", SCRIBBLES), ("val", MASKS)):
        ds = formats.of(data).split(data, which, len(class_names), None)
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
