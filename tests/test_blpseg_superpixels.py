"""Label diffusion: scribbles expanded into SLIC superpixels (Table VI)."""

import pathlib

import numpy as np
import pytest

from blpseg.data.formats.voc import voc_split
from blpseg.data.superpixels import expand_scribbles
from blpseg.data.synthetic import make_synthetic
from blpseg.data.transforms import EvalTransform

N = 255  # not scribbled


def two_halves():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = (200, 30, 30)
    image[:, 16:] = (30, 30, 200)
    return image


def test_a_superpixel_touched_by_one_class_takes_it():
    scribbles = np.full((32, 32), N, np.uint8)
    scribbles[10:20, 6] = 1
    scribbles[10:20, 25] = 2
    out = expand_scribbles(two_halves(), scribbles, segments=4)
    left, right = out[:, :16], out[:, 16:]
    assert set(np.unique(left)) <= {1, N} and set(np.unique(right)) <= {2, N}
    assert (out != N).mean() > 0.5  # the expansion labels far more than the 20 scribbled pixels
    assert out.dtype == scribbles.dtype


def test_a_superpixel_touched_by_two_classes_keeps_the_scribbles_only():
    scribbles = np.full((32, 32), N, np.uint8)
    scribbles[10:20, 4] = 1
    scribbles[10:20, 10] = 2  # both in the red half
    out = expand_scribbles(two_halves(), scribbles, segments=2)
    np.testing.assert_array_equal(out[:, :16], scribbles[:, :16])


def test_scribbled_pixels_never_change_and_no_scribbles_stay_none():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    scribbles = np.where(rng.random((40, 40)) < 0.05, rng.integers(0, 3, (40, 40)), N).astype(np.uint8)
    out = expand_scribbles(image, scribbles, segments=30)
    np.testing.assert_array_equal(out[scribbles != N], scribbles[scribbles != N])
    empty = np.full((40, 40), N, np.uint8)
    np.testing.assert_array_equal(expand_scribbles(image, empty), empty)


def test_bad_options_name_the_key():
    s = np.full((8, 8), N, np.uint8)
    with pytest.raises(ValueError, match="label_diffusion.segments"):
        expand_scribbles(two_halves()[:8, :8], s, segments=0)
    with pytest.raises(ValueError, match="label_diffusion.compactness"):
        expand_scribbles(two_halves()[:8, :8], s, compactness=-1.0)


def test_the_dataset_expands_training_scribbles(tmp_path):
    make_synthetic(str(tmp_path), num_train=4, num_val=1, size=48, seed=0)
    args = (str(tmp_path), "train", 5, "Scribbles")
    plain = voc_split(*args, scribbles=True, transform=EvalTransform(), image_ext=".png")
    diffused = voc_split(
        *args,
        scribbles=True,
        transform=EvalTransform(),
        image_ext=".png",
        label_diffusion={"segments": 50, "compactness": 10.0},
    )
    masks = voc_split(
        str(tmp_path), "train", 5, "SegmentationClass", scribbles=False, transform=EvalTransform(), image_ext=".png"
    )
    labeled = right = 0
    for i in range(4):
        a, b, m = plain[i]["target"], diffused[i]["target"], masks[i]["target"]
        assert (b[a < 5] == a[a < 5]).all()
        labeled += int((b < 5).sum()) - int((a < 5).sum())
        right += int(((b < 5) & (a == 5) & (b == m)).sum())
    assert labeled > 0 and right / labeled > 0.8  # mostly right on this set (95% over the 300 images)
    with pytest.raises(ValueError, match="label_diffusion needs scribbles"):
        voc_split(*args, scribbles=False, transform=None, label_diffusion={"segments": 50})
    with pytest.raises(ValueError, match="unknown keys"):
        voc_split(*args, scribbles=True, transform=None, label_diffusion={"n_segments": 50})


def test_the_config_key_reaches_the_training_split(tmp_path):
    from blpseg.config import load_config
    from blpseg.data.formats import build_split

    make_synthetic(str(tmp_path), num_train=2, num_val=1, size=32, seed=0)
    config = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")
    cfg = load_config(config, [f"data.root={tmp_path}", "data.train.label_diffusion={segments: 20}"])
    assert cfg["data"]["train"]["label_diffusion"] == {"segments": 20, "compactness": 10.0}
    assert build_split(cfg["data"], "train", 5, EvalTransform()).label_diffusion == {
        "segments": 20,
        "compactness": 10.0,
    }
    assert build_split(cfg["data"], "val", 5, EvalTransform()).label_diffusion is None
    with pytest.raises(ValueError, match="data.train.label_diffusion.n_segments"):
        load_config(config, ["data.train.label_diffusion={n_segments: 20}"])
    with pytest.raises(ValueError, match="data.train.label_diffusion.segments"):
        load_config(config, ["data.train.label_diffusion={segments: 0}"])
