"""Reading and writing images and label PNGs; a file that cannot be read is named in the error."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .classes import palette


class CorruptFileError(OSError):
    pass


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return _read(path, label=False)


def read_label(path: str) -> np.ndarray:
    """(H, W) uint8 class ids of a palette or greyscale PNG."""
    return _read(path, label=True)


def _read(path: str, label: bool) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if not label:
                return np.asarray(im.convert("RGB")).copy()
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    im.save(tmp, format=Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG"))
    os.replace(tmp, path)
