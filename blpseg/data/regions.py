"""Connected regions of a label map, class by class."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage


def connected_regions(label: np.ndarray, ignore_index: int = 255) -> Iterator[tuple[int, tuple, np.ndarray]]:
    """Yields (class id, bounding box slices, bool mask of the region within the box) for every
    4-connected region of every class but `ignore_index`."""
    for c in np.unique(label):
        if c == ignore_index:
            continue
        regions, _ = ndimage.label(label == c)
        for i, box in enumerate(ndimage.find_objects(regions), start=1):
            yield int(c), box, regions[box] == i
