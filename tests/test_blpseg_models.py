"""BLPSeg's network: forward and backward for every ablation option, at tiny sizes."""

import pytest
import torch
import torchvision

from blpseg.models import BLPSeg
from blpseg.models.backbone import ResNetBackbone

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


@pytest.mark.parametrize("name,c5", [("resnet18", 512), ("resnet50", 2048)])
def test_backbone_returns_c2_to_c5(name, c5):
    net = ResNetBackbone(name)
    feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(net.channels) == [c5 // 8, c5 // 4, c5 // 2, c5]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # with the classifier, as torchvision ships it
    net = ResNetBackbone("resnet18", str(path))
    torch.testing.assert_close(net.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(net.layers[3][1].conv2.weight, ref.layer4[1].conv2.weight)


def test_pretrained_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResNetBackbone("resnet18", str(missing))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises((ValueError, RuntimeError), match="wrong.pth"):
        ResNetBackbone("resnet18", str(wrong))


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="backbone"):
        BLPSeg(K, backbone="vgg16")
    with pytest.raises(ValueError, match="key_mask"):
        BLPSeg(K, **TINY, key_mask="scribbled")
    with pytest.raises(ValueError, match="key_mask needs"):
        BLPSeg(K, **TINY, lam=False, key_mask="labeled")
    with pytest.raises(ValueError, match="num_classes"):
        BLPSeg(1, **TINY)
