"""Label diffusion (the paper's Table VI): scribbles expanded into SLIC superpixels before
training, the classic ScribbleSup-style expansion. Each superpixel touched by scribbles of exactly
one class takes that class; superpixels touched by none or by several classes keep their scribbled
pixels only."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

NOT_SCRIBBLED = 255


def expand_scribbles(
    image: np.ndarray, scribbles: np.ndarray, segments: int = 100, compactness: float = 10.0
) -> np.ndarray:
    """image (H, W, 3) uint8, scribbles (H, W) with class ids and 255 where not scribbled ->
    the expanded scribbles, same encoding. `segments` and `compactness` are SLIC's n_segments
    and compactness (in Lab colour, scikit-image's default)."""
    if not (isinstance(segments, int) and segments >= 1):
        raise ValueError(f"label_diffusion.segments must be an int >= 1, got {segments!r}")
    if not compactness > 0:
        raise ValueError(f"label_diffusion.compactness must be > 0, got {compactness!r}")
    sp = slic(image, n_segments=segments, compactness=compactness, start_label=0)
    scribbled = scribbles != NOT_SCRIBBLED
    # the distinct (superpixel, class) pairs under the scribbles
    pairs = np.unique(np.stack([sp[scribbled], scribbles[scribbled].astype(np.int64)]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    single = ids[counts == 1]
    lut = np.full(sp.max() + 1, NOT_SCRIBBLED, dtype=np.int64)
    lut[pairs[0][np.isin(pairs[0], single)]] = pairs[1][np.isin(pairs[0], single)]
    out = lut[sp]
    out[scribbled] = scribbles[scribbled]  # scribbles in mixed superpixels stay as drawn
    return out.astype(scribbles.dtype)
