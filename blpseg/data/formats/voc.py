"""The PASCAL VOC layout (data.format: voc), which PASCAL-Context and the synthetic set share:

    root/<image_dir>/<id><image_ext>    images (JPEGImages/<id>.jpg)
    root/<label_dir>/<id>.png           labels: full masks (255 = void) or scribbles (255 = not scribbled)
    root/<list_dir>/<split>.txt         one id per line (list_dir: ImageSets/Segmentation)

data.dataset names the class names (data/classes.py), data.train and data.val each split's list
and label folder, and data.synthetic the synthetic set to generate under root on first use.
"""

from __future__ import annotations

import os

from ..classes import CLASS_SETS
from ..io import read_split_list
from .base import DataFormat


def voc_split(
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
    """The ids of root/list_dir/<split>.txt, their images and their labels in label_dir, as a
    LabeledImages (data/dataset.py, which holds the other arguments' meaning)."""
    from ..dataset import LabeledImages

    list_path = os.path.join(root, list_dir, f"{split}.txt")
    items = [
        (n, os.path.join(root, image_dir, n + image_ext), os.path.join(root, label_dir, n + label_ext))
        for n in read_split_list(list_path)
    ]
    return LabeledImages(items, num_classes, scribbles, transform, seed, label_diffusion, [list_path], split)


def _config_split(data: dict, section: dict, num_classes: int, transform, seed: int = 0):
    """voc_split of a data section and a split `section`: split, label_dir, and optionally scribbles
    (false when absent) and label_diffusion."""
    return voc_split(
        data["root"],
        section["split"],
        num_classes,
        section["label_dir"],
        bool(section.get("scribbles", False)),
        transform,
        image_dir=data["image_dir"],
        image_ext=data["image_ext"],
        list_dir=data["list_dir"],
        seed=seed,
        label_diffusion=section.get("label_diffusion"),
    )


class VocLayout(DataFormat):
    name = "voc"
    description = "the VOC layout: image and label folders and split lists under data.root, classes by data.dataset"
    keys = (
        "dataset",
        "image_dir",
        "image_ext",
        "list_dir",
        "synthetic",
        "train.split",
        "train.label_dir",
        "train.scribbles",
        "train.label_diffusion",
        "val.split",
        "val.label_dir",
        "val.scribbles",
    )

    def check(self, data: dict) -> None:
        if data["dataset"] is None:
            raise ValueError(f"data.dataset: the VOC layout needs the class names, one of {tuple(CLASS_SETS)}")

    def class_names(self, data: dict) -> tuple[str, ...]:
        return CLASS_SETS[data["dataset"]]

    def class_source(self, data: dict) -> str:
        return f"data.dataset={data['dataset']}"

    def split(self, data: dict, which: str, num_classes: int, transform, seed: int = 0, split: str | None = None):
        """data.train or data.val, or with `split` another list read as that section says."""
        section = data[which] if split is None else {**data[which], "split": split}
        return _config_split(data, section, num_classes, transform, seed)

    def pairs(self, data, num_classes, transform, split=None, mask_dir=None, scribble_dir=None):
        """The masks of mask_dir (default data.val.label_dir) and the scribbles of scribble_dir
        (default data.train.label_dir) of the ids of split (default data.train.split)."""
        if mask_dir is None and data["val"] is None:
            raise ValueError("this config has no data.val section to take the full masks' folder from: pass --mask-dir")
        split = split or data["train"]["split"]
        masks = {"split": split, "label_dir": mask_dir or data["val"]["label_dir"]}
        scribbles = {"split": split, "label_dir": scribble_dir or data["train"]["label_dir"], "scribbles": True}
        return tuple(_config_split(data, s, num_classes, transform) for s in (masks, scribbles))

    def title(self, data: dict, split: str | None = None) -> str:
        return f"{data['dataset']}, {split or data['train']['split']} split"

    def generate(self, data: dict, seed: int) -> None:
        """The synthetic set (data.synthetic holds its options), when root does not hold it yet."""
        from ..synthetic import make_synthetic, synthetic_exists

        if data["synthetic"] is None or synthetic_exists(data["root"]):
            return
        try:
            make_synthetic(data["root"], **data["synthetic"], seed=seed)
        except ValueError as e:  # files of something else there
            raise ValueError(f"data.synthetic: cannot generate the set under data.root={data['root']}: {e}") from None


FORMAT = VocLayout()
