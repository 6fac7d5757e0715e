"""Backbones that return four feature maps at strides 4, 8, 16 and 32, with their channels.

`build_backbone(name, weights)` makes:
  - "resnet18", "resnet50", "resnet101": torchvision's ResNets (weights: torchvision's ImageNet
    state_dict files, e.g. resnet101-63fe2227.pth);
  - "resnet101_deepstem": the authors' backbone, the PyTorch-Encoding ResNet-101 whose 7x7 stem is
    three 3x3 convolutions (3->64 stride 2, 64->64, 64->128), so layer1 takes 128 channels; not
    dilated, BN momentum 0.1 (weights: PyTorch-Encoding's resnet101s file, keys conv1.0, conv1.1,
    conv1.3, conv1.4, conv1.6, bn1, layer1..4);
  - "timm:<model>": any timm model with `features_only` support that has stride-4..32 stages
    (weights: that model's timm state_dict, a pytorch_model.bin or .safetensors).
`weights` is a local file, "imagenet" (each backbone's ImageNet weights, downloaded once into the
standard caches and verified: pretrained.py) or None (random initialisation)."""

from __future__ import annotations

import os

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from .pretrained import IMAGENET, deepstem_file, timm_file, torchvision_file

TORCHVISION_RESNETS = ("resnet18", "resnet50", "resnet101")
DEEPSTEM = "resnet101_deepstem"
TIMM_PREFIX = "timm:"
BACKBONES = (*TORCHVISION_RESNETS, DEEPSTEM, TIMM_PREFIX + "<model>")
REDUCTIONS = (4, 8, 16, 32)


def build_backbone(name: str, weights: str | None = None) -> nn.Module:
    """A module mapping (B, 3, H, W) to a list of 4 maps at REDUCTIONS, with `.channels` (4 ints)."""
    if not isinstance(name, str):
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX) :], weights)
    if name == DEEPSTEM:
        return ResNetBackbone(deepstem_resnet101(), deepstem_file() if weights == IMAGENET else weights)
    if name in TORCHVISION_RESNETS:
        net = getattr(torchvision.models, name)(weights=None)
        return ResNetBackbone(net, torchvision_file(name) if weights == IMAGENET else weights)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")


def deepstem_resnet101() -> torchvision.models.ResNet:
    """torchvision's ResNet-101 with the deep stem: the module names, hence the state_dict keys,
    are PyTorch-Encoding's."""
    net = torchvision.models.resnet101(weights=None)
    net.conv1 = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 128, 3, padding=1, bias=False),
    )
    net.bn1 = nn.BatchNorm2d(128)
    net.inplanes = 128
    net.layer1 = net._make_layer(Bottleneck, 64, 3)
    for m in (*net.conv1.modules(), net.bn1, *net.layer1.modules()):  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class ResNetBackbone(nn.Module):
    """A torchvision-layout ResNet returning C2..C5, under the same module names (conv1, bn1,
    layer1..4), so its state_dict keys are the weights file's. The file's classifier (fc.*) is
    ignored; every other key must match."""

    def __init__(self, net: torchvision.models.ResNet, weights: str | None = None):
        super().__init__()
        if weights:
            load_weights(net, weights, ignore=("fc.",))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        # a stage's output channels: its last BN's (bn3 of a Bottleneck, bn2 of a BasicBlock)
        self.channels = tuple(
            [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features for layer in self.stages()
        )

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in self.stages():
            x = layer(x)
            feats.append(x)
        return feats


class TimmBackbone(nn.Module):
    """A timm model built with features_only=True, keeping the deepest stage at each of the
    strides 4, 8, 16, 32 (timm's feature_info gives each stage's reduction and channels)."""

    def __init__(self, model_name: str, weights: str | None = None):
        super().__init__()
        import timm  # here, not at the top: importing timm takes a second that other backbones need not pay

        if not timm.is_model(model_name):
            raise ValueError(f"backbone 'timm:{model_name}': timm has no model {model_name!r}")
        try:
            probe = timm.create_model(model_name, pretrained=False, features_only=True)
        except RuntimeError as e:  # timm's message for models without feature extraction
            raise ValueError(f"backbone 'timm:{model_name}' cannot return feature maps: {e}") from e
        reductions = probe.feature_info.reduction()
        missing = [r for r in REDUCTIONS if r not in reductions]
        if missing:
            raise ValueError(
                f"backbone 'timm:{model_name}' has no stage at stride {missing} (its strides: {reductions}); "
                f"the decoder needs strides {REDUCTIONS}"
            )
        # the last stage at each stride is the deepest one there
        out_indices = tuple(max(i for i, r in enumerate(reductions) if r == red) for red in REDUCTIONS)
        options = dict(features_only=True, out_indices=out_indices)
        if weights:
            weights = timm_file(model_name) if weights == IMAGENET else weights
            state = _timm_weights(timm, model_name, weights)
            options.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=state, source=""))
        self.net = timm.create_model(model_name, **options)
        self.channels = tuple(self.net.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.net(x))


def _timm_weights(timm, model_name: str, path: str) -> dict:
    """The file's state_dict, checked against the full model (timm's own loading is not strict for
    feature extractors): every key but the classifier's must be there, with its shape. Read by
    timm (torch.load with weights_only=True, or safetensors; "state_dict" / "model" entries and
    "module." prefixes handled)."""
    _check_file(path)
    try:
        state = timm.models.load_state_dict(path)
    except Exception as e:  # pickle, zip, safetensors and unpickler errors alike
        raise ValueError(f"{path!r} is not a readable weights file: {e}") from e
    full = timm.create_model(model_name, pretrained=False)
    classifier = full.pretrained_cfg.get("classifier") or ()
    classifier = tuple(c + "." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}  # any number of classes
    try:
        missing, unexpected = full.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path!r} does not match timm model {model_name!r}: {e}") from e
    missing = [k for k in missing if not k.startswith(classifier)]
    if missing or unexpected:
        raise ValueError(
            f"{path!r} does not match timm model {model_name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return state


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained backbone weights not found: {path!r} (give the path of a local weights file, "
            "model.pretrained=imagenet to download the backbone's ImageNet weights, or null to train from scratch)"
        )


def load_weights(net: nn.Module, path: str, ignore: tuple[str, ...] = ()) -> None:
    """Loads a state_dict file (optionally under "state_dict", keys optionally prefixed "module.")
    into `net`: keys starting with `ignore` are dropped; every other key must match, except the
    BN `num_batches_tracked` counters that older files (PyTorch-Encoding's) lack."""
    _check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean the same thing here
        raise ValueError(f"{path!r} is not a readable weights file: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path!r} does not match the backbone: {e}") from e
    missing = [k for k in missing if not k.startswith(ignore) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path!r} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")
