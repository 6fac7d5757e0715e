"""BLPSeg's network: forward and backward for every ablation option, at tiny sizes; the release's
network (parameter counts from the spec, key names, PPM, heads, initialisation); the backbone
factory on saved state dicts; `blpseg info`."""

import pathlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from blpseg import cli
from blpseg.config import class_names, load_config
from blpseg.models import BLPSeg, build_backbone, build_model
from blpseg.models.decoder import PPM

ROOT = pathlib.Path(__file__).resolve().parents[1]

K = 3
TINY = dict(backbone="resnet18", channels=16, embed_dim=8, lam_backend="auto")


def inputs(B=2, H=36, W=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, 3, H, W, generator=g)
    target = torch.randint(0, K + 1, (B, H, W), generator=g)
    target[:, :, :4] = 255  # padding
    return image, target


OPTIONS = {
    "lam_off": dict(lam=False),
    "both_fixed_global": dict(similarity="both", radius=None),
    "both_learnable_radius2": dict(similarity="both", learnable_sigma=True, radius=2),
    "features_only": dict(similarity="features"),
    "position_only_learnable": dict(similarity="position", learnable_sigma=True),
    "keys_labeled": dict(key_mask="labeled"),
    "keys_unlabeled": dict(key_mask="unlabeled", radius=3),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = BLPSeg(K, **TINY, **OPTIONS[name]).train()
    image, target = inputs()
    out = model(image, target)
    assert out["seg"].shape == (2, K, 36, 44) and out["scrib"].shape == (2, K + 1, 36, 44)
    (out["seg"].square().mean() + out["scrib"].square().mean()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    if OPTIONS[name].get("learnable_sigma"):
        assert model.lam.log_sigma.grad.abs() > 0
    model.eval()
    with torch.no_grad():
        out = model(image)
    assert set(out) == {"seg"} and torch.isfinite(out["seg"]).all()


def test_scribble_head_does_not_train_the_backbone():
    model = BLPSeg(K, **TINY).train()
    image, target = inputs()
    model(image, target)["scrib"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.seg_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.scrib_head.parameters())


def test_key_mask_changes_the_aggregation():
    torch.manual_seed(0)
    model = BLPSeg(K, **TINY, key_mask="labeled").eval()
    image, target = inputs(B=1)
    with torch.no_grad():
        masked = model(image, target)["seg"]
        unmasked = model(image)["seg"]  # no target (inference): every pixel is a key
    assert not torch.allclose(masked, unmasked)


def test_lam_changes_the_logits():
    torch.manual_seed(0)
    with_lam = BLPSeg(K, **TINY).eval()
    without = BLPSeg(K, **TINY, lam=False).eval()
    without.load_state_dict({k: v for k, v in with_lam.state_dict().items() if not k.startswith("lam.")})
    image, _ = inputs(B=1)
    with torch.no_grad():
        assert not torch.allclose(with_lam(image)["seg"], without(image)["seg"])


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="backbone"):
        BLPSeg(K, backbone="vgg16")
    with pytest.raises(ValueError, match="key_mask"):
        BLPSeg(K, **TINY, key_mask="scribbled")
    with pytest.raises(ValueError, match="key_mask needs"):
        BLPSeg(K, **TINY, lam=False, key_mask="labeled")
    with pytest.raises(ValueError, match="num_classes"):
        BLPSeg(1, **TINY)


# ------------------------------------------------- the release's network, by arithmetic from its spec


def conv(cin, cout, k=1, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def bottleneck(cin, planes, downsample):
    out = 4 * planes
    n = conv(cin, planes) + bn(planes) + conv(planes, planes, 3) + bn(planes) + conv(planes, out) + bn(out)
    return n + (conv(cin, out) + bn(out) if downsample else 0)


def resnet101_stages(cin):
    n = 0
    for planes, blocks in ((64, 3), (128, 4), (256, 23), (512, 3)):
        n += bottleneck(cin, planes, True) + sum(bottleneck(4 * planes, planes, False) for _ in range(blocks - 1))
        cin = 4 * planes
    return n


DEEPSTEM = conv(3, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 128, 3) + bn(128)


def release_counts(K, C=256, D=256, c5=2048, lateral=(256, 512, 1024)):
    return {
        "backbone": DEEPSTEM + resnet101_stages(128),
        "ppm": 4 * (conv(c5, C) + bn(C)) + conv(c5 + 4 * C, C) + bn(C),
        "fpn": sum(conv(c, C) + bn(C) for c in lateral) + 3 * (conv(C, C, 3) + bn(C)) + conv(4 * C, C, 3) + bn(C),
        "seg_head": 2 * conv(C, C) + conv(C, K, bias=True),
        "scrib_head": 2 * conv(C, C) + conv(C, K + 1, bias=True),
        # the guidance branch: Conv 4x4 stride 4 (3 -> D), LayerNorm(D), Conv 1x1 (D -> D); sigma fixed
        "lam": conv(3, D, 4, bias=True) + 2 * D + conv(D, D, bias=True),
    }


def test_the_resnet_arithmetic_gives_torchvisions_published_count():
    # torchvision documents ResNet-101 at 44,549,160 parameters: the 7x7 stem, the stages, the classifier
    assert conv(3, 64, 7) + bn(64) + resnet101_stages(64) + conv(2048, 1000, bias=True) == 44_549_160


@pytest.mark.parametrize("config,K", [("voc_scribble", 21), ("context_scribble", 60)])
def test_paper_configs_build_the_releases_network(config, K):
    cfg = load_config(str(ROOT / "configs" / f"{config}.yaml"))
    assert len(class_names(cfg)) == K
    model = build_model(K, **{**cfg["model"], "pretrained": None})
    assert model.parameter_counts() == release_counts(K)
    assert sum(p.numel() for p in model.parameters()) == sum(release_counts(K).values())


def test_info_prints_the_counts_and_the_total_last(capsys):
    assert cli.main(["info", "--config", str(ROOT / "configs" / "voc_scribble.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"total parameters: {sum(release_counts(21).values())}"
    assert any(line.split()[:2] == ["ppm", f"{release_counts(21)['ppm']:,}"] for line in lines)
    assert cli.main(["info", "--config", str(ROOT / "configs" / "voc_scribble.yaml"), "model.backbone=vgg"]) == 1
    assert "backbone" in capsys.readouterr().err


def test_deepstem_keys_are_the_releases():
    net = build_backbone("resnet101_deepstem")
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    stem = {"conv1.0.weight", "conv1.3.weight", "conv1.6.weight"}
    stem |= {f"{m}.{k}" for m in ("conv1.1", "conv1.4", "bn1") for k in bn_keys}
    layers = {k for k in torchvision.models.resnet101().state_dict() if k.startswith("layer")}
    assert set(net.state_dict()) == stem | layers
    assert net.layer1[0].conv1.weight.shape == (64, 128, 1, 1)  # layer1 takes the stem's 128 channels
    assert net.bn1.momentum == 0.1
    feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(net.channels) == [256, 512, 1024, 2048]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]  # not dilated


def test_deepstem_loads_a_pytorch_encoding_style_file(tmp_path):
    ref = build_backbone("resnet101_deepstem")
    for p in ref.parameters():
        nn.init.normal_(p)
    # as PyTorch-Encoding ships it: with the classifier, without BN num_batches_tracked counters
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "enc.pth")
    net = build_backbone("resnet101_deepstem", str(tmp_path / "enc.pth"))
    for key in ("conv1.0.weight", "conv1.4.running_var", "layer3.22.conv2.weight"):
        torch.testing.assert_close(net.state_dict()[key], ref.state_dict()[key])
    # torchvision's 7x7 stem (its layers are the same: left out to keep the file small)
    stem7 = {k: v for k, v in torchvision.models.resnet101().state_dict().items() if not k.startswith("layer")}
    torch.save(stem7 | {k: v for k, v in state.items() if k.startswith("layer")}, tmp_path / "torchvision.pth")
    with pytest.raises(ValueError, match="torchvision.pth"):
        build_backbone("resnet101_deepstem", str(tmp_path / "torchvision.pth"))


def test_ppm_branches_have_no_relu_and_upsample_with_aligned_corners():
    torch.manual_seed(0)
    ppm = PPM(8, 4).eval()
    seen = {}
    ppm.bottleneck.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.randn(2, 8, 5, 7)
    ppm(x)

    def expected(align):
        return torch.cat(
            [x] + [F.interpolate(b(x), (5, 7), mode="bilinear", align_corners=align) for b in ppm.branches], 1
        )

    torch.testing.assert_close(seen["x"], expected(True))
    assert not torch.allclose(seen["x"], expected(False))
    assert (seen["x"][:, 8:] < 0).any()  # no ReLU after the branches' BN
    conv, norm, relu = ppm.bottleneck[0]
    assert conv.kernel_size == (1, 1) and isinstance(relu, nn.ReLU)
    assert isinstance(ppm.bottleneck[1], nn.Dropout2d) and ppm.bottleneck[1].p == 0.1


def test_heads_and_initialisation_are_the_releases(tmp_path):
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    torch.manual_seed(0)
    model = BLPSeg(K, backbone="resnet18", pretrained=str(tmp_path / "r18.pth"), channels=256, embed_dim=64)
    for head in (model.seg_head, model.scrib_head):
        convs = [m for m in head if isinstance(m, nn.Conv2d)]
        assert [c.bias is not None for c in convs] == [False, False, True]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in head)
        assert (convs[-1].bias == 0).all()
    outside = [model.decoder, model.seg_head, model.scrib_head, model.lam]
    for m in (m for part in outside for m in part.modules()):
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096:  # enough weights for a std estimate
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert abs(m.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.1, m
    # the backbone keeps its weights
    torch.testing.assert_close(model.backbone.conv1.weight, ref.conv1.weight)


# ------------------------------------------------------------------------ the backbone factory


@pytest.mark.parametrize("name,c5", [("resnet18", 512), ("resnet50", 2048), ("resnet101", 2048)])
def test_torchvision_backbones_return_c2_to_c5(name, c5):
    net = build_backbone(name)
    feats = net(torch.randn(1, 3, 64, 96))
    expansion = 1 if name == "resnet18" else 4
    assert [f.shape[1] for f in feats] == list(net.channels) == [64 * expansion * 2**i for i in range(4)]
    assert feats[-1].shape[1] == c5
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_torchvision_weights_load_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # with the classifier, as torchvision ships it
    net = build_backbone("resnet18", str(path))
    torch.testing.assert_close(net.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert set(net.state_dict()) == {k for k in ref.state_dict() if not k.startswith("fc.")}


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet10t"])
def test_weights_errors_name_the_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(name, str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth"):
        build_backbone(name, str(wrong))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        build_backbone(name, str(corrupt))
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": nn.Conv2d(1, 1, 1)}, pickled)  # a module, not tensors: weights_only refuses
    with pytest.raises(ValueError, match="pickled.pth"):
        build_backbone(name, str(pickled))


TIMM_MODELS = {"timm:resnet10t": (64, 128, 256, 512), "timm:convnext_atto": (40, 80, 160, 320)}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_backbones_pick_strides_4_to_32_and_load_weights(tmp_path, name):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(name.removeprefix("timm:"), pretrained=False)  # with its classifier
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net = build_backbone(name, str(tmp_path / "w.pth"))
    feats = net(torch.randn(1, 3, 64, 96))
    assert tuple(f.shape[1] for f in feats) == net.channels == TIMM_MODELS[name]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    # every parameter of the feature extractor is the file's (timm renames modules, not values)
    loaded = list(ref.parameters())
    assert all(any(p.shape == q.shape and torch.equal(p, q) for q in loaded) for p in net.parameters())
    other = next(n for n in TIMM_MODELS if n != name)
    torch.save(timm.create_model(other.removeprefix("timm:")).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth"):
        build_backbone(name, str(tmp_path / "other.pth"))


def test_the_decoder_takes_its_channels_from_a_timm_backbone():
    model = BLPSeg(K, backbone="timm:convnext_atto", channels=16, embed_dim=8).train()
    assert [seq[0].in_channels for seq in model.decoder.lateral] == [40, 80, 160]
    assert model.decoder.ppm.branches[0][1].in_channels == 320
    image, target = inputs()
    out = model(image, target)
    out["seg"].square().mean().backward()
    assert out["seg"].shape == (2, K, 36, 44)
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_backbone_names_are_checked():
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="no model 'resnet_nope'"):
        build_backbone("timm:resnet_nope")
    with pytest.raises(ValueError, match="stride"):  # a ViT has stride-16 features only
        build_backbone("timm:vit_tiny_patch16_224")
