"""A synthetic scribble data set in the VOC layout: textured objects of four classes on textured
backgrounds, full masks for validation and simulated scribbles for training.

Colours overlap between classes and with the background (hues are jittered across the
neighbouring classes' ranges), so a pixel's colour alone does not give its class; the texture
(stripes, dots, plain, speckle) and the shape's extent do. Objects occlude each other."""

from __future__ import annotations

import json
import os

import numpy as np
from skimage.color import hsv2rgb
from skimage.draw import ellipse, polygon
from tqdm import tqdm

from ..files import atomic_write
from .classes import SYNTHETIC_CLASSES
from .io import check_outputs, write_image, write_label
from .scribbles import simulate_scribbles

IMAGE_DIR, MASK_DIR, SCRIBBLE_DIR = "JPEGImages", "SegmentationClass", "Scribbles"
SPLITS = ("train", "val")
OPTIONS_FILE = "synthetic.json"


def _texture(kind: str, S: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S) brightness modulation in about [-0.35, 0.35]."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    if kind == "stripes":
        theta, period = rng.uniform(0, np.pi), rng.uniform(4, 8)
        return 0.3 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period)
    if kind == "dots":
        period = rng.uniform(5, 8)
        return 0.35 * ((np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)) > 0.4) - 0.15
    if kind == "speckle":
        return rng.normal(0, 0.18, (S, S)).astype(np.float32)
    return rng.normal(0, 0.03, (S, S)).astype(np.float32)  # plain and background


def _colour_field(hue: float, sat: float, val: float, texture: np.ndarray, rng) -> np.ndarray:
    S = texture.shape[0]
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) / S
    gradient = rng.uniform(-0.15, 0.15) * x + rng.uniform(-0.15, 0.15) * y  # uneven lighting
    hsv = np.stack([np.full((S, S), hue % 1.0), np.full((S, S), sat), np.clip(val + gradient + texture, 0, 1)], axis=-1)
    return hsv2rgb(hsv)


def _shape(S: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = rng.uniform(0.15 * S, 0.85 * S, size=2)
    r = rng.uniform(0.12 * S, 0.3 * S)
    if rng.random() < 0.5:
        return ellipse(cy, cx, r, r * rng.uniform(0.5, 1.0), shape=(S, S), rotation=rng.uniform(0, np.pi))
    n = int(rng.integers(3, 8))  # a star-shaped polygon: evenly spread corners, so never a sliver
    angles = rng.uniform(0, 2 * np.pi) + (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
    radii = r * rng.uniform(0.6, 1.2, n)
    return polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape=(S, S))


def make_scene(S: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (S, S, 3) uint8 image and its (S, S) uint8 mask (0 = background)."""
    image = _colour_field(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.8), _texture("plain", S, rng), rng)
    mask = np.zeros((S, S), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        c = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        hue = (c - 1) / 4 + rng.uniform(-0.2, 0.2)
        field = _colour_field(
            hue, rng.uniform(0.35, 0.9), rng.uniform(0.35, 0.85), _texture(SYNTHETIC_CLASSES[c], S, rng), rng
        )
        rr, cc = _shape(S, rng)
        image[rr, cc] = field[rr, cc]
        mask[rr, cc] = c
    image += rng.normal(0, 0.02, image.shape)  # sensor noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


def make_synthetic(
    root: str, num_train: int = 300, num_val: int = 60, size: int = 64, seed: int = 0, overwrite: bool = False
) -> bool:
    """Writes the set under `root` (VOC layout, .png images) and returns True; False, writing
    nothing, when root already holds this very set. Its options are recorded first, in
    root/synthetic.json, and the split lists written last: an interrupted run leaves no usable half
    set, and running again completes it. Other files there (another set, another data set's split
    lists) are replaced only with `overwrite`."""
    options = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    recorded = recorded_options(root)
    if recorded == options and synthetic_exists(root):
        return False
    if recorded not in (None, options) and not overwrite:
        differ = ", ".join(f"{k} {recorded.get(k)} (asked: {v})" for k, v in options.items() if recorded.get(k) != v)
        raise ValueError(f"{root} holds a synthetic set made with {differ}: pass --overwrite to replace it")
    names = {
        split: [f"{split}_{i:05d}" for i in range(n)] for split, n in zip(SPLITS, (num_train, num_val), strict=True)
    }
    list_dir = os.path.join(root, "ImageSets", "Segmentation")
    lists = {split: os.path.join(list_dir, f"{split}.txt") for split in SPLITS}
    outputs = [os.path.join(root, OPTIONS_FILE), *lists.values()]
    for split in SPLITS:
        outputs += [
            os.path.join(root, d, n + ".png") for n in names[split] for d in (IMAGE_DIR, MASK_DIR, SCRIBBLE_DIR)
        ]
    check_outputs([(None, p) for p in outputs], overwrite=overwrite or recorded == options)
    for path in lists.values():  # until the new lists are written, no set is there
        if os.path.lexists(path):
            os.remove(path)
    os.makedirs(list_dir, exist_ok=True)
    with atomic_write(os.path.join(root, OPTIONS_FILE), "w") as fh:
        fh.write(json.dumps(options) + "\n")
    for split_index, split in enumerate(SPLITS):
        for i, name in enumerate(tqdm(names[split], desc=f"synthetic {split}", unit="image")):
            rng = np.random.default_rng([seed, split_index, i])
            image, mask = make_scene(size, rng)
            write_image(os.path.join(root, IMAGE_DIR, name + ".png"), image)
            write_label(os.path.join(root, MASK_DIR, name + ".png"), mask)
            write_label(os.path.join(root, SCRIBBLE_DIR, name + ".png"), simulate_scribbles(mask, rng, min_area=9))
    for split in SPLITS:
        with atomic_write(lists[split], "w") as fh:
            fh.write("\n".join(names[split]) + "\n")
    return True


def recorded_options(root: str) -> dict | None:
    """The options root/synthetic.json records (None when absent: no set, or one made before the
    record was written)."""
    path = os.path.join(root, OPTIONS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            options = json.load(fh)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(options, dict):
        raise ValueError(f"{path} must hold the set's options as a mapping")
    return options


def synthetic_exists(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, "ImageSets", "Segmentation", f"{s}.txt")) for s in SPLITS)
