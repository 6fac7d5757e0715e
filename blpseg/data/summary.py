"""The data summary that `blpseg train` prints before it trains (and `blpseg data-summary` alone):
per class, the scribbled pixels and images of the training split and the pixels and images of the
validation split, with a `warning:` line for each thing that makes a run useless without failing
it: classes that no scribble marks (a model can never learn them) and a missing validation set.

The numbers come from the pass that checks every label before training
(LabeledImages.check_labels), so no label is read twice. They count the labels as stored: before
label diffusion, the transforms and data.resize.
"""

from __future__ import annotations


def split_summary(dataset) -> dict:
    """images, pixels (all of the labels'), labelled (class ids, not 255), and per class its
    pixels and the images holding it, of a data set whose labels were checked (check_labels)."""
    counts = dataset.class_pixels
    return {
        "images": len(dataset),
        "scribbles": bool(dataset.scribbles),
        "pixels": int(sum(h * w for h, w in dataset.shapes)),
        "labelled": int(counts.sum()),
        "class_pixels": counts.sum(0).tolist(),
        "class_images": (counts > 0).sum(0).tolist(),
    }


def no_val_reason(data: dict) -> str:
    """Why a config's data (a resolved data section) has no validation set."""
    if data["val"] is None:
        return "data.val is null"
    return f"{data['root']} has no validation images (masks/ of images without scribbles, or val.txt)"


def data_summary(train_set, val_set, class_names, no_val: str = "") -> dict:
    """The summary of a run's data (data_summary.json): the class names, the splits' numbers
    (split_summary; "val" None without validation data, `no_val` saying why) and the warnings."""
    names = list(class_names)
    train = split_summary(train_set)
    val = split_summary(val_set) if val_set is not None else None
    what = "scribbled" if train["scribbles"] else "labelled"
    unseen = [n for n, px in zip(names, train["class_pixels"], strict=True) if px == 0]
    warnings = []
    if unseen:
        warnings.append(
            f"{len(unseen)} of {len(names)} classes have no {what} pixel in the {train['images']} training images, "
            f"so a model can never learn them: {', '.join(unseen)}"
        )
    if val is None:
        warnings.append(f"no validation set: {no_val or 'none configured'}; training runs without evaluation")
    return {"classes": names, "train": train, "val": val, "warnings": warnings}


def format_summary(summary: dict) -> str:
    """The summary as printed: a line per split, a table of the classes, the `warning:` lines."""
    train, val = summary["train"], summary["val"]
    what = "scribbled" if train["scribbles"] else "labelled"
    share = 100 * train["labelled"] / max(train["pixels"], 1)
    lines = [
        f"training data: {_images(train['images'])} ({'scribbles' if train['scribbles'] else 'full masks'}), "
        f"{train['pixels']:,} pixels, {train['labelled']:,} {what} ({share:.2f}%)"
    ]
    if val is not None:
        present = sum(px > 0 for px in val["class_pixels"])
        lines.append(
            f"validation data: {_images(val['images'])}, {present} of {len(summary['classes'])} classes present"
        )
    width = max(12, *(len(n) for n in summary["classes"]))
    header = f"{'class':<{width}} {what + ' px':>14} {'train images':>13}"
    if val is not None:
        header += f" {'val px':>12} {'val images':>11}"
    lines.append(header)
    for i, name in enumerate(summary["classes"]):
        row = f"{name:<{width}} {train['class_pixels'][i]:>14,} {train['class_images'][i]:>13,}"
        if val is not None:
            row += f" {val['class_pixels'][i]:>12,} {val['class_images'][i]:>11,}"
        lines.append(row)
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def markdown(summary: dict) -> str:
    """The printed summary for TensorBoard's text tab (markdown: the table as a code block)."""
    return "\n".join("    " + line for line in format_summary(summary).splitlines())
