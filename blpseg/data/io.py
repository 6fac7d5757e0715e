"""Reading and writing images, label PNGs and split lists; a file that cannot be read is named in the error."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from ..files import atomic_write
from .classes import palette

# The most pixels an image, a label PNG, or the size a scribble file declares may have: 2**27
# (134,217,728, e.g. 16384 x 8192; 384 MiB as 8-bit RGB). Above it a file is refused naming it, not
# decoded into memory (PIL's own decompression-bomb guard errs only at twice its 89,478,485).
MAX_PIXELS = 2**27


class CorruptFileError(OSError):
    pass


def check_pixels(path: str, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"{path}: {height} x {width} is over the limit of {MAX_PIXELS:,} pixels; "
            "resize the image or split it into tiles"
        )


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image in any mode PIL reads: 8-bit modes (L, LA, P, RGBA, CMYK,
    YCbCr...) through PIL's conversion (alpha dropped), 16-bit greyscale (I;16*, and I, as which PIL
    may open a 16-bit PNG) scaled from 0..65535, float greyscale (F) from 0..1. Other ranges are
    refused naming the file rather than guessed. Turned as its EXIF orientation says (see _open)."""
    return _read(path, label=False)


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image as read_image reads it (after its EXIF orientation)."""
    with _open(path) as im:
        return im.height, im.width


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
    """(H, W) uint8 class ids of a palette or greyscale PNG (turned by its EXIF orientation, if any)."""
    return _read(path, label=True)


def _read(path: str, label: bool) -> np.ndarray:
    with _open(path) as im:
        try:
            if not label:
                return _to_rgb(im)
            if im.mode not in ("P", "L"):
                raise ValueError(f"a label must be a palette or greyscale PNG, got mode {im.mode}")
            return np.asarray(im).copy()
        except Exception as e:  # PIL raises several types for truncated or foreign files
            raise CorruptFileError(f"cannot read {path}: {e}") from e


@contextmanager
def _open(path: str):
    """The image at `path` as viewers show it: turned by its EXIF orientation, as labelme turns a
    photo before it is annotated (so scribbles, masks and predictions share the photo's frame).
    Over MAX_PIXELS is refused before decoding; an unreadable file is a CorruptFileError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides
            im = Image.open(path)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError:  # over PIL's own limit, which is above MAX_PIXELS
        raise ValueError(f"{path}: the image is over the limit of {MAX_PIXELS:,} pixels") from None
    except Exception as e:
        raise CorruptFileError(f"cannot read {path}: {e}") from e
    with im:
        check_pixels(path, im.height, im.width)
        try:
            turned = ImageOps.exif_transpose(im)
        except Exception as e:  # a truncated file fails here, where the pixels are decoded
            raise CorruptFileError(f"cannot read {path}: {e}") from e
        yield turned


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


def read_split_list(path: str) -> list[str]:
    """The names of a split list: the first word of each non-blank line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: {path}")
    with open(path) as fh:
        names = [line.split()[0] for line in fh if line.strip()]
    if not names:
        raise ValueError(f"split list {path} is empty")
    return names


def list_files(folder: str, extensions, what: str) -> dict[str, str]:
    """{name: path} of the files in `folder` whose extension is one of `extensions` (lower case,
    ".png"), matched in any case (x.PNG, y.Jpg), in name order; hidden files and sub-folders are
    passed over. Two files of one name (x.png, x.PNG) are an error, and so is a folder that holds
    files but none of these extensions: they would otherwise be passed over in silence."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    out: dict[str, str] = {}
    others = set()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        name, ext = os.path.splitext(entry.name)
        if ext.lower() not in extensions:
            others.add(ext or "(no extension)")
            continue
        if name in out:
            raise ValueError(f"two {what} named {name!r}: {out[name]} and {entry.path}; keep one per name")
        out[name] = entry.path
    if not out and others:
        raise ValueError(f"{folder} holds no {what} ({_some(extensions)}), only files ending in {_some(others)}")
    return out


def _some(names, n: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _identity(path: str):
    """The same file whatever the spelling: (device, inode) when it exists, else the real path."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)


def _folder(path: str):
    return _identity(os.path.dirname(os.path.abspath(path)))


def check_outputs(jobs, inputs=(), files=(), overwrite: bool = True) -> None:
    """Refuses, before anything is written, outputs that would write over what a command reads.
    `jobs` are [(data input or None, output)]; `inputs` more data inputs (images, labels,
    annotations, split lists); `files` the other inputs (checkpoints, configs, class lists, result
    files), whose folders hold outputs by design (eval.json beside last.pt). Refused:
    an output that is (through links, or spelled otherwise) an input; an output that would replace a
    file in a folder a data input comes from (a photo beside labelme's JSON files); an output that is
    a folder; two inputs written to one output; and, without `overwrite`, any output that exists."""
    data = [*(src for src, _ in jobs if src is not None), *inputs]
    sources = {_identity(p): p for p in [*data, *files]}
    folders = {_folder(p): os.path.dirname(p) or "." for p in data}
    seen: dict = {}
    existing = []
    for src, out in jobs:
        if os.path.isdir(out):
            raise ValueError(f"the output {out} is a folder; name a file")
        if _identity(out) in sources:
            raise ValueError(
                f"the output {out} would overwrite the input {sources[_identity(out)]}; choose another output"
            )
        if os.path.lexists(out):
            if _folder(out) in folders:
                raise ValueError(
                    f"the output {out} would replace a file in {folders[_folder(out)]}, a folder the command "
                    "reads its data from; choose another output"
                )
            existing.append(out)
        key = os.path.realpath(out)
        if key in seen and seen[key] != src:
            raise ValueError(f"{seen[key]} and {src} would both be written to {out}")
        seen[key] = src
    if existing and not overwrite:
        refuse_existing(existing)


def refuse_existing(paths) -> None:
    """The error for outputs that exist, when the command was not told to replace them."""
    if paths:
        more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
        raise ValueError(f"{paths[0]} exists{more}: pass --overwrite to replace, or choose another output")
