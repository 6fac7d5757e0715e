"""The data summary (issue 19): the per-class counts of the label check, `blpseg data-summary`, its
warnings, and what `blpseg train` does with it (printed, data_summary.json, TensorBoard)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blpseg import cli
from blpseg.config import resolve
from blpseg.data.formats import build_split
from blpseg.data.io import write_label
from blpseg.engine import run_folder

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "cat", "dog", "bird"]


def folder(root, scribbles: dict, masks: dict, size=(20, 24)):
    """A folder-format set: random photos, the given label arrays (name -> (H, W) uint8)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    for name in {*scribbles, *masks}:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    for sub, labels in (("scribbles", scribbles), ("masks", masks)):
        for name, label in labels.items():
            write_label(str(root / sub / f"{name}.png"), label)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return [f"data.root={root}", "data.format=folder", "data.dataset=null", "data.synthetic=null"]


def random_labels(n, classes, size=(20, 24), seed=0):
    """`n` labels holding 255 and the class ids `classes`, at random."""
    rng = np.random.default_rng(seed)
    return [rng.choice([255, *classes], size=size).astype(np.uint8) for _ in range(n)]


def test_the_label_check_counts_each_class_in_each_label(tmp_path):
    scribbles = dict(zip("abc", random_labels(3, [0, 1, 3]), strict=True))
    masks = dict(zip("de", random_labels(2, [0, 1, 2], seed=1), strict=True))
    folder(tmp_path, scribbles, masks)
    data = resolve({"data": {"format": "folder", "root": str(tmp_path)}})["data"]
    for which, labels in (("train", scribbles), ("val", masks)):
        ds = build_split(data, which, len(CLASSES), None)
        expected = [[int((labels[n] == c).sum()) for c in range(len(CLASSES))] for n in ds.names]
        assert ds.class_pixels.tolist() == expected
        assert ds.shapes == [(20, 24)] * len(labels)


def summary_of(capsys, *args):
    assert cli.main(["data-summary", "--config", str(ROOT / "configs" / "own_data.yaml"), *args]) == 0
    return capsys.readouterr().out


def test_data_summary_counts_pixels_and_images_per_class(tmp_path, capsys):
    a, b = np.full((20, 24), 255, np.uint8), np.full((20, 24), 255, np.uint8)
    a[2, :10], a[5, :3], b[7, :4], b[9, :6] = 0, 1, 1, 2  # bird (3) never scribbled
    mask = np.zeros((20, 24), np.uint8)
    mask[:5] = 3
    overrides = folder(tmp_path, {"a": a, "b": b}, {"v": mask})
    out = summary_of(capsys, *overrides)
    assert "training data: 2 images (scribbles), 960 pixels, 23 scribbled (2.40%)" in out
    assert "validation data: 1 image, 2 of 4 classes present" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[0] in CLASSES}
    assert rows == {
        "background": ["10", "1", "360", "1"],
        "cat": ["7", "2", "0", "0"],
        "dog": ["6", "1", "0", "0"],
        "bird": ["0", "0", "120", "1"],
    }
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of 4 classes" in warnings[0] and warnings[0].endswith(": bird")
    data = json.loads(summary_of(capsys, *overrides, "--json"))
    assert data["train"]["class_pixels"] == [10, 7, 6, 0] and data["val"]["class_images"] == [1, 0, 0, 1]


def test_data_summary_warns_without_validation_data(tmp_path, capsys):
    labels = dict(zip("ab", random_labels(2, [0, 1, 2, 3]), strict=True))
    overrides = folder(tmp_path, labels, {})
    out = summary_of(capsys, *overrides)
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        f"warning: no validation set: {tmp_path} has no validation images (masks/ of images without scribbles, "
        "or val.txt); training runs without evaluation"
    ]
    assert "validation data" not in out and "val px" not in out
    out = summary_of(capsys, *overrides, "data.val=null")
    assert "warning: no validation set: data.val is null; training runs without evaluation" in out


def test_train_prints_the_summary_and_keeps_it_in_the_run_folder(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    labels = dict(zip("ab", random_labels(2, [0, 1, 2]), strict=True))
    overrides = folder(tmp_path / "set", labels, {"v": random_labels(1, [0, 1, 2, 3])[0]})
    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "configs" / "own_data.yaml"), *overrides, f"out_dir={run}"]
    args += ["device=cpu", "model.channels=8", "model.embed_dim=8", "model.lam_backend=auto", "train.iters=1"]
    args += ["train.batch_size=2", "data.crop=32", "data.resize=null", "loss.self_training_from=null"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "training data: 2 images" in out and "warning: 1 of 4 classes have no scribbled pixel" in out
    assert out.index("warning:") < out.index("training 1 iterations")  # before training starts
    expected = json.loads(summary_of(capsys, *overrides, "--json"))
    assert json.loads((run / "data_summary.json").read_text()) == expected
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    [text] = events.Tensors("data/text_summary")
    assert "warning: 1 of 4 classes" in text.tensor_proto.string_val[0].decode()


def test_a_data_summary_is_a_run_file(tmp_path):
    (tmp_path / "data_summary.json").write_text("{}")
    with pytest.raises(run_folder.RunFolderError, match="data_summary.json"):
        run_folder.check_new_run(str(tmp_path), None, False)
    assert run_folder.clear(str(tmp_path)) == [os.path.join(tmp_path, "data_summary.json")]
