"""Class names of the supported data sets, class lists from users' files (classes.txt), and the
PASCAL colour palette."""

import codecs
import os

import numpy as np

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# PASCAL-Context's 59 most frequent classes, with background (everything else) as class 0.
CONTEXT_CLASSES = ("background",) + (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)

SYNTHETIC_CLASSES = ("background", "stripes", "dots", "plain", "speckle")

CLASS_SETS = {"voc": VOC_CLASSES, "context": CONTEXT_CLASSES, "synthetic": SYNTHETIC_CLASSES}


def read_class_file(path: str) -> tuple[str, ...]:
    """A classes.txt: UTF-8 text, one class name per line, line i (from 0) naming class id i. A
    byte-order mark is passed over (Windows editors write one), line ends may be \\n, \\r\\n or \\r,
    spaces around a name are not part of it, and blank lines may end the file. Refused naming the
    file and line: text that is not UTF-8, a blank line before a name (it would shift every later
    id), a name given twice, fewer than 2 or more than 255 names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path} (one class name per line, background first)")
    with open(path, "rb") as fh:
        data = fh.read()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{path} is UTF-16 text; save it as UTF-8")
    names: list[str] = []
    for number, line in enumerate(data.removeprefix(codecs.BOM_UTF8).splitlines(), 1):
        try:
            names.append(line.decode("utf-8").strip())
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {number} is not UTF-8 text; save the file as UTF-8") from None
    while names and not names[-1]:
        names.pop()
    lines: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path} line {number} is blank; line i names class id i-1, so remove the blank line")
        if name in lines:
            raise ValueError(f"{path} names {name!r} on lines {lines[name]} and {number}; class names must be distinct")
        lines[name] = number
    if len(names) < 2:
        raise ValueError(f"{path} must name at least 2 distinct classes, one per line; got {names}")
    if len(names) > 255:
        raise ValueError(f"{path} names {len(names)} classes; label PNGs hold at most 255 (255 = not scribbled)")
    return tuple(names)


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, the bits of the class id spread over R, G, B."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap
