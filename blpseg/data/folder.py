"""Segmentation data in the PASCAL VOC layout, which PASCAL-Context and the synthetic set share:

    root/JPEGImages/<id>.jpg            images
    root/<label_dir>/<id>.png           labels: full masks (255 = void) or scribbles (255 = not scribbled)
    root/<list_dir>/<split>.txt         one id per line (list_dir: ImageSets/Segmentation)
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import read_image, read_label
from .superpixels import expand_scribbles


class SegmentationFolder(Dataset):
    """Items are dicts: image (3, H, W) float, target (H, W) int64, classes (K,) bool (the classes
    present in the label), name.

    scribbles=True reads scribble PNGs, whose 255 (not scribbled) becomes class K in the target;
    padding added by transforms is `ignore_index`. scribbles=False reads full masks as they are.
    label_diffusion (scribbles only): None, or expand_scribbles' options ({segments, compactness}):
    the scribbles are expanded into superpixels before the transforms (Table VI).
    """

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
        if label_diffusion is not None and not (scribbles and isinstance(label_diffusion, dict)):
            raise ValueError("label_diffusion needs scribbles: true and a mapping {segments, compactness}, "
                             f"got {label_diffusion!r}")  # fmt: skip
        if label_diffusion is not None and not set(label_diffusion) <= {"segments", "compactness"}:
            raise ValueError(f"label_diffusion: unknown keys {sorted(set(label_diffusion) - {'segments', 'compactness'})} "
                             "(known: segments, compactness)")  # fmt: skip
        split_file = os.path.join(root, list_dir, f"{split}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"split list not found: {split_file}")
        with open(split_file) as fh:
            self.names = [line.split()[0] for line in fh if line.strip()]
        if not self.names:
            raise ValueError(f"split list {split_file} is empty")
        self.root, self.num_classes, self.scribbles, self.transform = root, num_classes, scribbles, transform
        self.image_dir, self.label_dir, self.image_ext, self.label_ext = image_dir, label_dir, image_ext, label_ext
        self.seed, self.epoch, self.label_diffusion = seed, 0, label_diffusion

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def paths(self, index: int) -> tuple[str, str]:
        name = self.names[index]
        return (
            os.path.join(self.root, self.image_dir, name + self.image_ext),
            os.path.join(self.root, self.label_dir, name + self.label_ext),
        )

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


def build_dataset(cfg: dict, split_cfg: dict, num_classes: int, transform, seed: int = 0) -> SegmentationFolder:
    """`cfg` is the config's data section, `split_cfg` its train or val entry (split, label_dir,
    scribbles)."""
    return SegmentationFolder(
        cfg["root"],
        split_cfg["split"],
        num_classes,
        split_cfg["label_dir"],
        bool(split_cfg.get("scribbles", False)),
        transform,
        image_dir=cfg.get("image_dir", "JPEGImages"),
        image_ext=cfg.get("image_ext", ".jpg"),
        list_dir=cfg.get("list_dir", os.path.join("ImageSets", "Segmentation")),
        seed=seed,
        label_diffusion=split_cfg.get("label_diffusion"),
    )
