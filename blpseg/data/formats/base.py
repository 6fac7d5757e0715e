"""What every data format answers (DataFormat); the registry (this package's __init__) finds them."""

from __future__ import annotations


class DataFormat:
    """A way of laying out images, scribbles, masks and class names on disk, chosen by data.format.
    Every method takes the resolved config's data section (`data`).

    name: the value of data.format that chooses it.
    description: one line, where it reads what (listed when data.format names no format).
    keys: the keys of the data section it reads besides those every format reads (format, root, crop,
        scale, workers, and whether val is null), as "image_dir" or "train.split": a resolved config
        keeps only these of the keys other formats list, so --print-config, config.yaml and
        checkpoints show what the run reads.

    Its modules import no torch at module level: the config (and `--print-config`) reads the
    registry; the data sets (data/dataset.py) are imported where they are built.
    """

    name: str
    description: str
    keys: tuple[str, ...] = ()

    def check(self, data: dict) -> None:
        """Refuses, naming the key, a data section this format cannot read (resolve calls it)."""

    def class_names(self, data: dict) -> tuple[str, ...]:
        """The class names, class id i first at i (background first)."""
        raise NotImplementedError

    def class_source(self, data: dict) -> str:
        """Where the class names come from, for messages: a file, or the key that names them."""
        raise NotImplementedError

    def files(self, data: dict) -> list[str]:
        """The files it reads besides its data sets' images, labels and split lists (a class list):
        outputs never replace them (io.check_outputs)."""
        return []

    def split(self, data: dict, which: str, num_classes: int, transform, seed: int = 0, split: str | None = None):
        """The training data ("train": scribbles) or the evaluation data ("val": full masks) as a
        LabeledImages, labels not yet checked; `split` names other images than the config's (for
        `blpseg eval --split`). None when the format finds no validation images by default."""
        raise NotImplementedError

    def pairs(
        self,
        data: dict,
        num_classes: int,
        transform,
        split: str | None = None,
        mask_dir: str | None = None,
        scribble_dir: str | None = None,
    ):
        """(full masks, scribbles) of the same images in one order, as two LabeledImages: what the
        analyses compare (analysis/bias.py). split, mask_dir, scribble_dir: other images or label
        folders than the config's, where the format has such names (else an error)."""
        raise NotImplementedError

    def title(self, data: dict, split: str | None = None) -> str:
        """How figures name this data (and `split` of it)."""
        raise NotImplementedError

    def generate(self, data: dict, seed: int) -> None:
        """Writes data the config asks to be generated on first use (data/prepare.py); none by default."""
