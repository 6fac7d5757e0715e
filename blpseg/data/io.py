"""Reading and writing images and label PNGs; a file that cannot be read is named in the error."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..files import atomic_write
from .classes import palette


class CorruptFileError(OSError):
    pass


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image in any mode PIL reads: 8-bit modes (L, LA, P, RGBA, CMYK,
    YCbCr...) through PIL's conversion (alpha dropped), 16-bit greyscale (I;16*, and I, as which PIL
    may open a 16-bit PNG) scaled from 0..65535, float greyscale (F) from 0..1. Other ranges are
    refused naming the file rather than guessed."""
    return _read(path, label=False)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise ValueError("a float (mode F) image must hold values in [0, 1]; convert it to 8 or 16 bits")
            grey = a * 255
        else:
            if a.min() < 0 or a.max() > 65535:
                raise ValueError("a 32-bit integer (mode I) image must hold values in 0..65535 (16 bits)")
            grey = a / 257  # 65535 -> 255
        return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB")).copy()


def read_label(path: str) -> np.ndarray:
    """(H, W) uint8 class ids of a palette or greyscale PNG."""
    return _read(path, label=True)


def _read(path: str, label: bool) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if not label:
                return _to_rgb(im)
            if im.mode not in ("P", "L"):
                raise ValueError(f"a label must be a palette or greyscale PNG, got mode {im.mode}")
            return np.asarray(im).copy()
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises several types for truncated or foreign files
        raise CorruptFileError(f"cannot read {path}: {e}") from e


def write_label(path: str, label: np.ndarray) -> None:
    """A palette PNG (VOC style: class ids as indices, 255 shown white)."""
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    pal = palette()
    pal[255] = 255
    im.putpalette(pal.flatten().tolist())
    _atomic_save(im, path)


def write_image(path: str, image: np.ndarray) -> None:
    _atomic_save(Image.fromarray(image), path)


def _atomic_save(im: Image.Image, path: str) -> None:
    # no fsync: a data set or a folder of predictions is thousands of small files (it doubled
    # make-synthetic's time); the rename alone keeps a killed process from leaving a broken one
    with atomic_write(path, sync=False) as fh:
        im.save(fh, format=Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG"))


def _identity(path: str):
    """The same file whatever the spelling: (device, inode) when it exists, else the real path."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)


def check_outputs(jobs, inputs=()) -> None:
    """Refuses, before anything is written, `jobs` [(input, output)] whose output is (through links
    or another spelling) any input of the jobs or of `inputs`, or the output of another input."""
    sources = {_identity(p): p for p in [*(src for src, _ in jobs), *inputs]}
    seen: dict = {}
    for src, out in jobs:
        if _identity(out) in sources:
            raise ValueError(
                f"the output {out} would overwrite the input {sources[_identity(out)]}; choose another output"
            )
        key = os.path.realpath(out)
        if key in seen and seen[key] != src:
            raise ValueError(f"{seen[key]} and {src} would both be written to {out}")
        seen[key] = src
