"""Labeled image sets: the PASCAL VOC layout, which PASCAL-Context and the synthetic set share,

    root/JPEGImages/<id>.jpg            images
    root/<label_dir>/<id>.png           labels: full masks (255 = void) or scribbles (255 = not scribbled)
    root/<list_dir>/<split>.txt         one id per line (list_dir: ImageSets/Segmentation)

and, through `build_split`, the plain folder format of one's own data (own.py).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import read_image, read_label
from .superpixels import expand_scribbles


class LabeledImages(Dataset):
    """(name, image path, label path) triples as items that are dicts: image (3, H, W) float,
    target (H, W) int64, classes (K,) bool (the classes present in the label), name.

    scribbles=True reads scribble PNGs, whose 255 (not scribbled) becomes class K in the target;
    padding added by transforms is `ignore_index`. scribbles=False reads full masks as they are.
    label_diffusion (scribbles only): None, or expand_scribbles' options ({segments, compactness}):
    the scribbles are expanded into superpixels before the transforms (Table VI).
    """

    def __init__(
        self,
        items: list[tuple[str, str, str]],
        num_classes: int,
        scribbles: bool,
        transform,
        seed: int = 0,
        label_diffusion: dict | None = None,
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
        self.num_classes, self.scribbles, self.transform = num_classes, scribbles, transform
        self.seed, self.epoch, self.label_diffusion = seed, 0, label_diffusion

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
        if self.label_diffusion is not None:
            label = expand_scribbles(image, label, **self.label_diffusion)
        label = label.astype(np.int64)
        K = self.num_classes
        if self.scribbles:
            label[label == 255] = K
        bad = (label > K) & (label != 255) if self.scribbles else (label >= K) & (label != 255)
        if bad.any():
            raise ValueError(f"{label_path} holds class ids {np.unique(label[bad]).tolist()} >= {K} classes")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, y = self.transform(image, label, rng)
        classes = torch.zeros(K, dtype=torch.bool)
        ids = np.unique(label)
        classes[torch.from_numpy(ids[ids < K])] = True
        return {"image": x, "target": y, "classes": classes, "name": self.names[index]}


class SegmentationFolder(LabeledImages):
    """The VOC layout: the ids of root/list_dir/<split>.txt."""

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        label_dir: str,
        scribbles: bool,
        transform,
        image_dir: str = "JPEGImages",
        image_ext: str = ".jpg",
        label_ext: str = ".png",
        list_dir: str = os.path.join("ImageSets", "Segmentation"),
        seed: int = 0,
        label_diffusion: dict | None = None,
    ):
        names = read_split_list(os.path.join(root, list_dir, f"{split}.txt"))
        items = [
            (n, os.path.join(root, image_dir, n + image_ext), os.path.join(root, label_dir, n + label_ext))
            for n in names
        ]
        super().__init__(items, num_classes, scribbles, transform, seed, label_diffusion)
        self.root = root


def read_split_list(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: {path}")
    with open(path) as fh:
        names = [line.split()[0] for line in fh if line.strip()]
    if not names:
        raise ValueError(f"split list {path} is empty")
    return names


def build_dataset(data: dict, split_cfg: dict, num_classes: int, transform, seed: int = 0) -> SegmentationFolder:
    """A VOC-layout split: `data` is a resolved config's data section, `split_cfg` a mapping with
    split, label_dir and optionally scribbles (false when absent)."""
    return SegmentationFolder(
        data["root"],
        split_cfg["split"],
        num_classes,
        split_cfg["label_dir"],
        bool(split_cfg.get("scribbles", False)),
        transform,
        image_dir=data["image_dir"],
        image_ext=data["image_ext"],
        list_dir=data["list_dir"],
        seed=seed,
        label_diffusion=split_cfg.get("label_diffusion"),
    )


def build_split(data: dict, which: str, num_classes: int, transform, seed: int = 0) -> LabeledImages:
    """The config's train or val data ("train": its scribbles, "val": its full masks) in either
    format; for "val" the config must have a data.val section (see `validation_section`)."""
    if data["format"] == "folder":
        from .own import folder_split

        return folder_split(data["root"], which, num_classes, transform, seed, data["train"]["label_diffusion"])
    return build_dataset(data, data[which], num_classes, transform, seed)
