"""The data set every data format reads into (data/formats/): (image, label) file pairs as items
of image, target, classes present and name, with the labels checked up front."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .io import read_image, read_label
from .superpixels import expand_scribbles


class LabeledImages(Dataset):
    """(name, image path, label path) triples as items that are dicts: image (3, H, W) float,
    target (H, W) int64, classes (K,) bool (the classes present in the label), name.

    scribbles=True reads scribble PNGs, whose 255 (not scribbled) becomes class K in the target;
    padding added by transforms is `ignore_index`. scribbles=False reads full masks as they are.
    label_diffusion (scribbles only): None, or expand_scribbles' options ({segments, compactness}):
    the scribbles are expanded into superpixels before the transforms (Table VI). lists: the split
    list files the items come from; split: the split's name.
    """

    def __init__(
        self,
        items: list[tuple[str, str, str]],
        num_classes: int,
        scribbles: bool,
        transform,
        seed: int = 0,
        label_diffusion: dict | None = None,
        lists=(),
        split: str | None = None,
    ):
        if label_diffusion is not None and not (scribbles and isinstance(label_diffusion, dict)):
            raise ValueError(
                "label_diffusion needs scribbles: true and a mapping {segments, compactness}, "
                f"got {label_diffusion!r}"
            )
        if label_diffusion is not None and not set(label_diffusion) <= {"segments", "compactness"}:
            raise ValueError(
                f"label_diffusion: unknown keys {sorted(set(label_diffusion) - {'segments', 'compactness'})} "
                "(known: segments, compactness)"
            )
        self.items, self.names = items, [name for name, _, _ in items]
        self.split = split  # the split's name, as results record it
        self.num_classes, self.scribbles, self.transform = num_classes, scribbles, transform
        self.seed, self.epoch, self.label_diffusion = seed, 0, label_diffusion
        self.lists = list(lists)  # the split list files the items come from
        self.shapes = self.class_pixels = None  # set by check_labels

    def files(self) -> list[str]:
        """Every file the data set reads: its images, labels and split lists."""
        return [*(p for _, image, label in self.items for p in (image, label)), *self.lists]

    def check_labels(self) -> np.ndarray:
        """Reads every label once, up front, and refuses (naming the file) a missing image or label,
        an unreadable label, or class ids outside the classes: a bad file then stops a run before it
        trains, not hours into it. The labels are decoded in threads (PIL decodes without the GIL);
        the bar shows only when this takes more than 2 s. Records `shapes`, the (H, W) of every label
        (what the test scales must fit: inference.check_scales), and `class_pixels`, which it
        returns: (N, K) int64, the pixels of each class in each label (what the data summary counts,
        data/summary.py)."""
        for _, image, _ in self.items:
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image not found: {image}")
        labels = [label for _, _, label in self.items]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            bar = tqdm(
                pool.map(_label_counts, labels),
                total=len(labels),
                desc="checking labels",
                unit="file",
                delay=2,
                disable=int(os.environ.get("RANK", "0")) != 0,
            )
            shapes, counts = [], []
            for path, (count, shape) in zip(labels, bar, strict=True):
                check_ids(path, np.flatnonzero(count), self.num_classes)
                shapes.append(shape)
                counts.append(count[: self.num_classes])
        self.shapes = shapes
        self.class_pixels = np.array(counts, dtype=np.int64).reshape(len(counts), self.num_classes)
        return self.class_pixels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def paths(self, index: int) -> tuple[str, str]:
        return self.items[index][1:]

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.paths(index)
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{label_path} is {label.shape} but its image {image_path} is {image.shape[:2]}")
        K = self.num_classes
        check_ids(label_path, _ids(label), K)
        if self.label_diffusion is not None:
            label = expand_scribbles(image, label, **self.label_diffusion)
        label = label.astype(np.int64)
        if self.scribbles:
            label[label == 255] = K
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, y = self.transform(image, label, rng)
        classes = torch.zeros(K, dtype=torch.bool)
        ids = np.unique(label)
        classes[torch.from_numpy(ids[ids < K])] = True
        return {"image": x, "target": y, "classes": classes, "name": self.names[index]}


def _ids(label: np.ndarray) -> np.ndarray:
    """The values present in a uint8 label (a bincount: faster than np.unique)."""
    return np.flatnonzero(np.bincount(label.ravel(), minlength=256))


def _label_counts(path: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels of each value 0..255 in the label at `path`, and its (H, W)."""
    label = read_label(path)
    return np.bincount(label.ravel(), minlength=256), label.shape


def check_ids(path: str, ids: np.ndarray, num_classes: int) -> None:
    """Labels hold class ids 0..K-1 and 255 (not scribbled, or void in a mask); any other value,
    K included (the "not scribbled" class inside the training code), is an error naming the file:
    most often a class missing from the class list."""
    bad = ids[(ids >= num_classes) & (ids != 255)]
    if len(bad):
        raise ValueError(
            f"{path} holds class ids {bad.tolist()} >= {num_classes} classes (ids are 0..{num_classes - 1}, "
            "255 = not labelled): is a class missing from the class list?"
        )
