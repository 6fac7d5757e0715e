"""Predictions to look at (`blpseg predict --overlay`): the photo blended with the colours of its
predicted classes (the PASCAL palette of the label PNGs), and below it a legend of the classes
present."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.classes import palette


def overlay(image: np.ndarray, pred: np.ndarray, class_names, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 photo and (H, W) class ids -> (H + legend, W, 3) uint8: each pixel
    (1 - alpha) x photo + alpha x its class's colour, every class blended, background (black in the
    palette) included, as mmsegmentation shows predictions; the legend names the classes present."""
    colours = palette()
    blended = ((1 - alpha) * image + alpha * colours[pred].astype(np.float64)).round().astype(np.uint8)
    present = [(class_names[c], tuple(int(v) for v in colours[c])) for c in np.unique(pred).tolist()]
    return np.asarray(_with_legend(Image.fromarray(blended), present))


def _with_legend(im: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """`im` above a white strip holding a colour swatch and the name of each entry, in rows that
    fit its width; the text grows with the image (a 4000 px photo gets a readable legend)."""
    W, H = im.size
    size = max(12, min(W, H) // 30)
    font = _font(size)
    pad = size // 2
    measure = ImageDraw.Draw(im)
    rows: list[list[tuple[int, str, tuple]]] = [[]]
    x = pad
    for name, colour in entries:
        width = size + pad // 2 + round(measure.textlength(name, font=font)) + 2 * pad
        if rows[-1] and x + width > W:
            rows.append([])
            x = pad
        rows[-1].append((x, name, colour))
        x += width
    line = size + pad
    sheet = Image.new("RGB", (W, H + len(rows) * line + pad), (255, 255, 255))
    sheet.paste(im, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = H + pad + r * line
        for x, name, colour in row:
            draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour, outline=(120, 120, 120))
            draw.text((x + size + pad // 2, y + size // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return sheet


def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib (a dependency) ships: Latin with its accents, Greek and
    Cyrillic (class names are UTF-8). PIL's default font draws everything outside ASCII as boxes;
    CJK names are boxes in both."""
    import matplotlib

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
