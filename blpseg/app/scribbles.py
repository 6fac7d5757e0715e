"""Brush colours and drawn layers: each class draws in its palette colour (data/classes.py), and a
drawn layer is read back into class ids.

The rule that reads strokes back (exact colour, fully opaque): a pixel is class c only where the
layer holds c's colour exactly with alpha 255. A canvas antialiases a stroke's edge: there the alpha
is partial (and, once un-premultiplied, the colour inexact), and where two strokes of different
classes overlap, the top one's soft edge mixes their colours. Such pixels stay 255 (not
scribbled) rather than being guessed as the nearest colour, which can be a third class: a scribble
that misses a pixel costs nothing, one that labels it wrongly teaches the model the wrong class.
The palette's class colours are distinct for ids 0..255, so the mapping is one to one."""

from __future__ import annotations

import numpy as np

from ..data.classes import palette

UNLABELLED = 255


def class_colours(num_classes: int) -> list[str]:
    """The brush colour of each class, "#rrggbb": its colour in the palette PNGs and the overlay."""
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in palette()[:num_classes].tolist()]


def paint(image: np.ndarray, scribble: np.ndarray, num_classes: int, alpha: float = 0.6) -> np.ndarray:
    """The photo ((H, W, 3) uint8) with a saved scribble's pixels blended with their class colours
    (`alpha` of the colour: regions from labelme stay see-through): the editor's background, so
    that the scribble already there is seen under the new strokes (drawn opaque, on their layer)."""
    out = image.copy()
    labelled = scribble < num_classes
    colour = palette()[:num_classes][scribble[labelled]].astype(np.float64)
    out[labelled] = np.round((1 - alpha) * image[labelled] + alpha * colour).astype(np.uint8)
    return out


def add_strokes(saved: np.ndarray | None, strokes: np.ndarray) -> np.ndarray:
    """The scribble to save: `saved` (None: nothing) with the new strokes' class ids on top; a pixel
    no stroke marks keeps its saved id."""
    if saved is None:
        return strokes
    return np.where(strokes != UNLABELLED, strokes, saved).astype(np.uint8)


def layers_to_scribble(layers, num_classes: int, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class ids, 255 where nothing is scribbled, from the editor's drawn layers ((H, W, 4)
    uint8 RGBA, the first at the bottom; a later layer's opaque pixel replaces an earlier's). A layer
    of another size than the photo (`shape`) is refused: its pixels would not be the photo's."""
    colours = palette()[:num_classes].astype(np.int64)
    codes = {int(v): i for i, v in enumerate((colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2])}
    out = np.full(shape, UNLABELLED, dtype=np.uint8)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4 or layer.shape[:2] != tuple(shape):
            raise ValueError(f"a drawn layer of shape {layer.shape} does not fit the {shape[0]}x{shape[1]} photo")
        rgb = layer[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        opaque = layer[..., 3] == 255
        ids = np.full(shape, -1, dtype=np.int64)
        for value, c in codes.items():
            ids[opaque & (code == value)] = c
        # an opaque pixel of no class colour (two strokes' mixed edge) unlabels what lay below it
        out[opaque] = UNLABELLED
        out[ids >= 0] = ids[ids >= 0]
    return out
