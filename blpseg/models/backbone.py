"""torchvision ResNets that return the four stage outputs C2..C5 (strides 4, 8, 16, 32)."""

from __future__ import annotations

import os
from typing import Optional

import torch
import torchvision
from torch import Tensor, nn

RESNETS = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048}


class ResNetBackbone(nn.Module):
    """`pretrained` is a local state_dict file (e.g. torchvision's resnet101-cd907fc2.pth); the
    classifier (fc.*) in it is ignored, every other key must match."""

    def __init__(self, name: str = "resnet101", pretrained: Optional[str] = None):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {tuple(RESNETS)}, got {name!r}")
        net = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            load_pretrained(net, pretrained)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        c5 = RESNETS[name]
        self.channels = (c5 // 8, c5 // 4, c5 // 2, c5)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def load_pretrained(net: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained backbone weights not found: {path!r} (give the path of a local torchvision "
            "ResNet state_dict, or model.pretrained=null to train from scratch)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path!r} does not match the backbone: {e}") from e
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path!r} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
