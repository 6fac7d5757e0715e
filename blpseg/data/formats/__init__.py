"""The data formats, one module each in this package (voc.py: the VOC layout; folder.py: the plain
folder format), each defining FORMAT, an instance of base.DataFormat. A module added here with a
FORMAT is a format that data.format can name: nothing else changes (docs/extending.md). The rest of
the code asks this registry: `get(data["format"])` or `of(data)`, and `build_split`, `class_names`."""

from __future__ import annotations

import copy
import importlib
import pkgutil

from .base import DataFormat


def _discover() -> dict[str, DataFormat]:
    found: dict[str, DataFormat] = {}
    for module in pkgutil.iter_modules(__path__):
        fmt = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FORMAT", None)
        if fmt is not None:
            if fmt.name in found:
                raise ImportError(f"two data formats are named {fmt.name!r} ({__name__}.{module.name} and another)")
            found[fmt.name] = fmt
    return found


FORMATS = _discover()  # name -> format


def get(name: str) -> DataFormat:
    """The format that data.format `name` chooses; an error lists the known ones."""
    if name not in FORMATS:
        known = "; ".join(f"{n} ({f.description})" for n, f in sorted(FORMATS.items()))
        raise ValueError(f"data.format: unknown data format {name!r}; known: {known}")
    return FORMATS[name]


def of(data: dict) -> DataFormat:
    """The format of a config's data section."""
    return get(data["format"])


def class_names(data: dict) -> tuple[str, ...]:
    return of(data).class_names(data)


def build_split(data: dict, which: str, num_classes: int, transform, seed: int = 0, split: str | None = None):
    """The config's training data ("train": its scribbles) or evaluation data ("val": full masks),
    its labels checked up front (LabeledImages.check_labels); None where the format finds no
    validation images. `split` names other images (DataFormat.split)."""
    dataset = of(data).split(data, which, num_classes, transform, seed, split)
    if dataset is not None:
        dataset.check_labels()
    return dataset


def prune(data: dict) -> dict:
    """A copy of the data section without the keys that other formats read and its format does not
    (DataFormat.keys): a folder config shows no VOC folder names."""
    own = set(of(data).keys)
    out = copy.deepcopy(data)
    for key in {k for f in FORMATS.values() for k in f.keys} - own:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


__all__ = ["FORMATS", "DataFormat", "build_split", "class_names", "get", "of", "prune"]
