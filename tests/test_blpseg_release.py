"""`blpseg import-release`: the authors' released models (their train.py's state_dict) as our
checkpoints. The reference is a transcription of their forward (tests/release_model.py) at the
release's full size (deep-stem ResNet-101, 256 channels, VOC's 21 classes), with random weights."""

import datetime
import hashlib
import os

import pytest
import release_model
import torch
import torch.nn.functional as F
from torch import nn

from blpseg import cli
from blpseg.config import load_config
from blpseg.data.classes import VOC_CLASSES
from blpseg.data.synthetic import make_synthetic
from blpseg.engine.builders import model_from_config
from blpseg.engine.checkpoint import load_checkpoint, load_model
from blpseg.engine.release import PPM_BOTTLENECK, convert, read_release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC = os.path.join(ROOT, "configs", "voc_scribble.yaml")
CONTEXT = os.path.join(ROOT, "configs", "context_scribble.yaml")
SIZES = [(75, 100), (97, 131)]  # not multiples of 32, as VOC's 500 x 375 photos


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def release():
    """The release's network in eval mode, with weights that exercise every part: BN statistics
    of real activations (varied images, so the PPM's pooled branches have a spread), random BN
    affines, and guidance features scaled down (random ones are so large that each pixel's
    feature softmax is one-hot on itself, and the LAM would change nothing)."""
    torch.manual_seed(0)
    net = release_model.BLPSeg(release_model.release_config(len(VOC_CLASSES)))
    net.build_distance_buffer((8, 8))  # the release's is 96 x 96: 340 MB
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # running statistics = those of the one batch below
    net.train()
    with torch.no_grad():
        x = torch.randn(4, 3, 64, 64) * torch.rand(4, 1, 1, 1) * 2 + torch.randn(4, 1, 1, 1)
        feats = net.backbone(x)
        net.decoder(feats + [net.ppm(feats[-1])])
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
        net.embed_proj.conv.weight.mul_(0.05)
    return net.eval()


@pytest.fixture(scope="module")
def release_file(release, tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "BLPSeg_resnet101_VOCDataset_epoch40.pth"
    torch.save(release.state_dict(), path)  # as their train.py: torch.save(module.state_dict(), ...)
    return str(path)


@pytest.fixture(scope="module")
def imported(release_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imported") / "release.pt")
    assert cli.main(["import-release", release_file, "--config", VOC, "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def ours(imported):
    model, _, names, _ = load_model(imported, ["device=cpu"])
    assert tuple(names) == VOC_CLASSES
    return model


def test_the_state_dict_holds_what_the_release_saves(release):
    keys = release.state_dict().keys()
    assert {"distance_prob", "backbone.layernorm.weight", "CELoss.weight", "ppm.stages.3.2._running_iter"} <= set(keys)
    assert "decoder.fpn_bottleneck.1._tmp_running_var" in keys and "backbone.layer3.22.bn3.running_mean" in keys


@pytest.mark.parametrize("size", SIZES)
def test_an_imported_model_gives_the_releases_logits_of_both_heads(release, ours, size):
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        seg, scrib = release(x)
        out = ours(x, scribble_head=True)
        # the LAM is in play: a pixel's feature softmax is spread, and the LAM moves the logits
        shallow = release.embed_proj(x)
        grid = shallow.shape[-2:]
        assert float(release.get_feat_prob(shallow, grid).max(dim=1).values.mean()) < 0.5
        plain = F.interpolate(ours.seg_head(ours.decoder(ours.backbone(x))), size=size, mode="bilinear")
    assert seg.shape == out["seg"].shape == (1, len(VOC_CLASSES), *size)
    assert scrib.shape == out["scrib"].shape == (1, len(VOC_CLASSES) + 1, *size)
    assert rel(plain, seg) > 0.1
    for ref, got in ((seg, out["seg"]), (scrib, out["scrib"])):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_the_ppm_bottleneck_columns_must_be_reordered(release):
    """Without the reordering (their PPM reads [branches, input], ours [input, branches]) the
    logits are far off: the comparison above can tell."""
    cfg = load_config(VOC, ["model.pretrained=null"])
    model = model_from_config(cfg["model"], len(VOC_CLASSES))
    state = release.state_dict()
    weights = convert(state, model)
    assert not torch.equal(weights[PPM_BOTTLENECK], state["ppm.bottleneck.0.weight"])
    weights[PPM_BOTTLENECK] = state["ppm.bottleneck.0.weight"]
    model.load_state_dict(weights)
    x = torch.randn(1, 3, *SIZES[0])
    with torch.no_grad():
        out, (seg, scrib) = model.eval()(x, scribble_head=True), release(x)
    assert rel(out["seg"], seg) > 0.3 and rel(out["scrib"], scrib) > 0.3  # measured: 0.87 and 0.59


def test_the_checkpoint_records_its_source_and_is_evaluated_and_used_for_prediction(
    imported, release_file, tmp_path, capsys
):
    state = load_checkpoint(imported)
    with open(release_file, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    source = state["source"]
    assert source["path"] == os.path.abspath(release_file) and source["sha256"] == digest
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(source["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)
    assert state["config"]["model"]["pretrained"] is None and state["class_names"] == list(VOC_CLASSES)
    assert not any(k.endswith(("_tmp_running_mean", "_running_iter")) or "layernorm" in k for k in state["model"])

    root = tmp_path / "voc"
    make_synthetic(str(root), num_train=2, num_val=2, size=64, seed=0)  # class ids 0..2: VOC ids too
    fast = ["device=cpu", "eval.scales=[1.0]", "eval.flip=false"]
    data = [f"data.root={root}", "data.image_ext=.png", "data.val.label_dir=SegmentationClass"]
    assert cli.main(["eval", "--checkpoint", imported, "--out", str(tmp_path / "e.json"), *fast, *data]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "e.json").exists()
    image = str(root / "JPEGImages" / "val_00000.png")
    assert cli.main(["predict", image, "--checkpoint", imported, "--out", str(tmp_path / "p"), "--set", *fast]) == 0
    assert (tmp_path / "p" / "val_00000.png").exists()
    # weights without a training state cannot be resumed: said, without a traceback
    assert cli.main(["train", "--config", VOC, "--resume", imported, "device=cpu"]) == 1
    assert "holds no training state" in capsys.readouterr().err


def test_a_file_of_other_classes_is_refused_naming_the_shapes(release_file, tmp_path, capsys):
    out = tmp_path / "context.pt"
    assert cli.main(["import-release", release_file, "--config", CONTEXT, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blpseg import-release: error: ") and err.count("\n") == 1
    assert release_file in err and "seg_head.4.weight (21, 256, 1, 1) (this config: (60, 256, 1, 1))" in err
    assert "scribble_head.4.bias (22,) (this config: (61,))" in err and not out.exists()


@pytest.fixture(scope="module")
def model():
    cfg = load_config(VOC, ["model.pretrained=null"])
    return model_from_config(cfg["model"], len(VOC_CLASSES))


def test_missing_and_unexpected_keys_are_named_in_the_releases_names(release, model):
    state = dict(release.state_dict())
    del state["ppm.stages.2.1.weight"], state["embed_proj.conv.bias"]
    state["aux_head.weight"] = torch.zeros(3)
    state["decoder.lateral_convs.3.0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as e:
        convert(state, model)
    missing, unexpected = str(e.value).split("unexpected")
    assert "ppm.stages.2.1.weight" in missing and "embed_proj.conv.bias" in missing
    assert "aux_head.weight" in unexpected and "decoder.lateral_convs.3.0.weight" in unexpected


def test_what_is_dropped_and_what_may_be_absent(release, model):
    state = {k: v for k, v in release.state_dict().items() if not k.endswith("num_batches_tracked")}
    del state["distance_prob"]  # then sigma is the config's alone
    weights = convert(state, model)
    assert weights.keys() == model.state_dict().keys()
    assert float(weights["lam.log_sigma"].exp()) == pytest.approx(6.0)
    torch.testing.assert_close(weights["lam.embed.out.weight"], state["embed_proj.conv.weight"])
    torch.testing.assert_close(weights["decoder.fuse.1.running_var"], state["decoder.fpn_bottleneck.1.running_var"])


def test_a_sigma_other_than_the_releases_is_refused(release, model):
    state = dict(release.state_dict())
    state["distance_prob"] = release.get_distance((8, 8), sigma=4.0)  # trained with sigma 4
    with pytest.raises(ValueError, match=r"trained with sigma 4 .*this config's has 6: set model\.sigma=4"):
        convert(state, model)


def test_a_module_prefix_is_tolerated_and_bad_files_are_named(tmp_path, capsys):
    torch.save({"module.seg_head.0.weight": torch.ones(2)}, tmp_path / "dp.pth")  # nn.DataParallel's
    assert list(read_release(str(tmp_path / "dp.pth"))) == ["seg_head.0.weight"]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    torch.save(nn.Linear(1, 1), tmp_path / "module.pth")  # a pickled object: refused by weights_only
    for name in ("junk.pth", "list.pth", "module.pth", "absent.pth"):
        path = str(tmp_path / name)
        assert cli.main(["import-release", path, "--config", VOC, "--out", str(tmp_path / "o.pt")]) == 1
        err = capsys.readouterr().err
        assert path in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.pt").exists()


def test_the_command_never_writes_over_its_inputs(release_file, imported, tmp_path, capsys):
    before = os.path.getmtime(release_file)
    for out in (release_file, VOC):
        assert cli.main(["import-release", release_file, "--config", VOC, "--out", out]) == 1
        assert "would overwrite the input" in capsys.readouterr().err
    assert os.path.getmtime(release_file) == before
    out = tmp_path / "x.pt"
    out.write_bytes(b"mine")
    assert cli.main(["import-release", release_file, "--config", VOC, "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert cli.main(["import-release", release_file, "--config", VOC, "--out", str(out), "--overwrite"]) == 0
    assert load_checkpoint(str(out))["source"]["sha256"] == load_checkpoint(imported)["source"]["sha256"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["import-release", "--help"])
    assert e.value.code == 0 and "weights_only" in capsys.readouterr().out
