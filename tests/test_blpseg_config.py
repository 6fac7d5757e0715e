"""The config schema: unknown keys with the nearest valid one, types and ranges naming the key,
base files, --print-config, and the keys a resumed run may change."""

import os
import re
from pathlib import Path

import pytest
import yaml

from blpseg import cli
from blpseg.config import (
    RESUME_MAY_CHANGE,
    apply_overrides,
    class_differences,
    fixed_differences,
    load_config,
    read_config,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = str(ROOT / "configs" / "synthetic.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1e-4", "unknown config key train.lrr; did you mean train.lr?"),
        ("trian.lr=1", "unknown config key trian; did you mean train?"),
        ("model.sigmaa=2", "did you mean model.sigma?"),
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("train.lr=.nan", "train.lr: expected a finite number"),
        ("model.lam=yes please", "model.lam: expected true or false"),
        ("model.similarity=colour", "model.similarity: expected one of 'both', 'features', 'position'"),
        (
            "train.amp=float32",
            "train.amp: expected true or false or expected one of 'bfloat16', 'float16', got 'float32'",
        ),
        ("loss.pseudo_threshold=1.5", "loss.pseudo_threshold: must be <= 1"),
        ("data.scale=[1.2, 0.8]", "data.scale: expected [low, high]"),
        ("eval.scales=[1, 0]", "eval.scales[1]: must be >= 0.1"),
        ("data.train=3", "data.train: expected a section"),
        ("loss.seg_options.gamma=abc", "loss.seg_options.gamma: expected a number, got 'abc'"),
        ("loss.seg_options.normalize=area", "loss.seg_options.normalize: expected one of 'weights', 'pixels'"),
        ("loss.seg=ce", "loss.seg_options ['gamma', 'normalize'] do not apply to loss.seg='ce'"),
        # issue 18: every number has a range, checked before anything runs
        ("eval.scales=[0.01]", "eval.scales[0]: must be >= 0.1, got 0.01"),
        ("eval.scales=[1, 100]", "eval.scales[1]: must be <= 4"),
        ("data.scale=[0.01, 1]", "data.scale[0]: must be >= 0.1"),
        ("seed=-1", "seed: must be >= 0"),
        ("seed=4294967296", "seed: must be <= 4294967295"),
        ("threads=100000", "threads: must be <= 1024"),
        ("data.crop=8", "data.crop: must be >= 32"),
        ("data.crop=100000", "data.crop: must be <= 4096"),
        ("data.workers=100000", "data.workers: must be <= 256"),
        ("data.synthetic.size=100000", "data.synthetic.size: must be <= 2048"),
        ("data.synthetic.num_train=-1", "data.synthetic.num_train: must be >= 1"),
        ("data.train.label_diffusion={segments: 10000000}", "data.train.label_diffusion.segments: must be <="),
        ("model.channels=1000000000", "model.channels: must be <= 4096"),
        ("model.embed_dim=1000000000", "model.embed_dim: must be <= 4096"),
        ("model.radius=9223372036854775808", "model.radius: must be <= 2147483647"),
        ("loss.seg_options.gamma=1000", "loss.seg_options.gamma: must be <= 10"),
        ("eval.boundary_bins=0", "eval.boundary_bins: must be >= 1"),
        ("eval.boundary_bins=1000000", "eval.boundary_bins: must be <= 1000"),
        ("eval.crf={iterations: 0}", "eval.crf.iterations: must be >= 1"),
        ("eval.crf={iteration: 5}", "unknown config key eval.crf.iteration; did you mean eval.crf.iterations?"),
        ("eval.crf={bilateral_srgb: -1}", "eval.crf.bilateral_srgb: must be > 0"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(SYNTHETIC, [override])


def test_cli_refuses_typos_before_training(tmp_path, capsys):
    # Seen: `train.lrr=1e-4 trian.lr=1` trained with the default lr and exited 0.
    assert cli.main(["train", "--config", SYNTHETIC, f"out_dir={tmp_path / 'run'}", "train.lrr=1e-4"]) == 1
    assert "did you mean train.lr?" in capsys.readouterr().err
    assert cli.main(["train", "--config", SYNTHETIC, "train.batch_size=0"]) == 1
    assert "train.batch_size: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_defaults_fill_in_and_resolving_is_idempotent():
    cfg = load_config(SYNTHETIC)
    assert cfg["train"]["iters"] is None and cfg["data"]["image_dir"] == "JPEGImages" and cfg["data"]["format"] == "voc"
    assert resolve(cfg) == cfg
    minimal = resolve({"data": {"dataset": "synthetic", "root": "x"}})
    assert minimal["train"]["lr"] == 3.0e-5 and minimal["data"]["val"]["label_dir"] == "SegmentationClass"
    with pytest.raises(ValueError, match="config key data.root is required"):
        resolve({"data": {"dataset": "voc"}})
    with pytest.raises(ValueError, match="data.dataset: the VOC layout needs the class names"):
        resolve({"data": {"root": "x"}})


def test_context_inherits_the_voc_config_and_states_only_the_data():
    voc, context = (
        load_config(str(ROOT / "configs" / "voc_scribble.yaml")),
        load_config(str(ROOT / "configs" / "context_scribble.yaml")),
    )
    assert {k.split(":")[0].split(".")[0] for k in fixed_differences(voc, context, ())} == {"data", "out_dir"}
    assert context["data"]["train"] == {
        "split": "train",
        "label_dir": "ScribbleLabelsContext",
        "scribbles": True,
        "label_diffusion": None,
    }
    lines = [
        line
        for line in (ROOT / "configs" / "context_scribble.yaml").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) < 12 and lines[0] == "base: voc_scribble.yaml"


def test_base_files_merge_relative_to_the_file_and_refuse_loops(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("data: {dataset: voc, root: r, crop: 50}\ntrain: {lr: 0.5}\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../base.yaml\ndata: {crop: 70}\n")
    cfg = load_config(str(tmp_path / "sub" / "child.yaml"))
    assert (cfg["data"]["root"], cfg["data"]["crop"], cfg["train"]["lr"]) == ("r", 70, 0.5)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        read_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        read_config(str(tmp_path / "c.yaml"))


def test_print_config_shows_the_resolved_config(capsys):
    assert (
        cli.main(
            ["train", "--config", str(ROOT / "configs" / "context_scribble.yaml"), "--print-config", "train.lr=1e-4"]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(str(ROOT / "configs" / "context_scribble.yaml"), ["train.lr=1e-4"])
    assert printed["model"]["backbone"] == "resnet101_deepstem" and printed["data"]["dataset"] == "context"


# the VOC layout's keys, which a data.format=folder root does not read (its folder names are fixed)
VOC_ONLY = ["dataset", "image_dir", "image_ext", "list_dir", "synthetic"]
VOC_ONLY_SPLIT = {"train": ["split", "label_dir", "scribbles"], "val": ["split", "label_dir", "scribbles"]}


def test_print_config_shows_only_the_data_keys_of_its_format(capsys):
    # Seen: --print-config of configs/own_data.yaml showed image_dir, list_dir, train.label_dir... of the
    # VOC layout, which the folder format never reads.
    own = str(ROOT / "configs" / "own_data.yaml")
    assert cli.main(["train", "--config", own, "--print-config", "data.image_dir=photos"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    data = printed["data"]
    assert data["format"] == "folder" and not set(VOC_ONLY) & set(data)
    for section, keys in VOC_ONLY_SPLIT.items():
        assert not set(keys) & set(data[section]), section
    assert data["train"] == {"label_diffusion": None} and data["val"] == {}
    assert {"root", "crop", "scale", "workers"} <= set(data)
    assert resolve(printed) == printed  # what it prints is a config that resolves to itself
    # the VOC layout reads them all
    assert cli.main(["train", "--config", SYNTHETIC, "--print-config"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert set(VOC_ONLY) <= set(data) and all(set(k) <= set(data[s]) for s, k in VOC_ONLY_SPLIT.items())


def test_overrides_recreate_a_null_section():
    cfg = load_config(SYNTHETIC, ["data.val=null"])
    assert cfg["data"]["val"] is None
    again = resolve(apply_overrides(cfg, ["data.val.split=val"]))
    assert again["data"]["val"] == {"split": "val", "label_dir": "SegmentationClass", "scribbles": False}


def test_fixed_differences_name_the_keys_a_resume_cannot_change():
    cfg = load_config(SYNTHETIC)
    new = load_config(
        SYNTHETIC, ["model.sigma=2", "train.lr=1e-2", "train.epochs=99", "eval.flip=true", "data.root=/x"]
    )
    assert fixed_differences(cfg, new) == ["model.sigma: 6.0 -> 2.0", "train.lr: 0.001 -> 0.01"]
    assert "train.epochs" in RESUME_MAY_CHANGE and "model.sigma" not in RESUME_MAY_CHANGE


@pytest.mark.parametrize(
    "args, message",
    [
        (["make-synthetic", "--size", "100000"], "--size: must be <= 2048"),
        (["make-synthetic", "--size", "1"], "--size: must be >= 8"),
        (["make-synthetic", "--num-train", "-1"], "--num-train: must be >= 1"),
        (["make-synthetic", "--num-val", "0"], "--num-val: must be >= 1"),
        (["make-synthetic", "--seed", "-3"], "--seed: must be >= 0"),
        (["scribblize", "M", "O", "--max-width", "100000"], "--max-width: must be <= 64"),
        (["scribblize", "M", "O", "--min-width", "0"], "--min-width: must be >= 1"),
        (["scribblize", "M", "O", "--min-width", "4"], "--min-width (4) must be <= --max-width (3)"),
        (["scribblize", "M", "O", "--min-area", "-1"], "--min-area: must be >= 0"),
        (["scribblize", "M", "O", "--seed", "-1"], "--seed: must be >= 0"),
        (["convert-scribbles", "X", "O", "--width", "0"], "--width: must be >= 1"),
        (["convert-scribbles", "X", "O", "--width", "100000"], "--width: must be <= 64"),
        (["analyze-bias", "--bins", "0"], "--bins: must be >= 1"),
        (["analyze-bias", "--max-images", "0"], "--max-images: must be >= 1"),
        (["loss-maps", "--checkpoint", "c.pt", "--num", "0"], "--num: must be >= 1"),
        (["loss-maps", "--checkpoint", "c.pt", "--num", "1000"], "--num: must be <= 32"),
    ],
)
def test_numeric_options_are_checked_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    # Seen: `scribblize --max-width 100000` and `make-synthetic --size 100000` ran out of memory,
    # `--num-train -1` wrote an empty set, `--size 1` a traceback.
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 1
    assert f"blpseg {args[0]}: error: {message}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_class_differences_name_each_id():
    # what eval, the analyses and a resumed run print when the classes differ
    assert class_differences(["bg", "a", "b"], ["bg", "a", "b"]) == []
    assert class_differences(["bg", "a", "b"], ["bg", "a", "c"]) == ["class 2: 'b' -> 'c'"]
    assert class_differences(["bg", "a"], ["bg", "a", "b"]) == ["number of classes: 2 -> 3", "class 2: <absent> -> 'b'"]
