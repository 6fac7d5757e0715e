"""The authors' decoder: a pyramid pooling module (PPM) on C5, an UPerNet FPN over C2..C5, and a
3x3 fusion of all levels at stride 4. Input channels come from the backbone (any four stages)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _resize(x: Tensor, size, align_corners: bool = False) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class PPM(nn.Module):
    """As in the release: each scale is adaptive average pooling, 1x1 conv and BN (no ReLU),
    upsampled with align_corners=True; the input and the branches, concatenated, go through a 1x1
    conv + BN + ReLU + Dropout2d(0.1)."""

    def __init__(self, cin: int, channels: int = 256, scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(cin, channels, 1, bias=False), nn.BatchNorm2d(channels))
            for s in scales
        )
        self.bottleneck = nn.Sequential(conv_bn_relu(cin + len(scales) * channels, channels, 1), nn.Dropout2d(dropout))

    def forward(self, x: Tensor) -> Tensor:
        outs = [x] + [_resize(b(x), x.shape[-2:], align_corners=True) for b in self.branches]
        return self.bottleneck(torch.cat(outs, dim=1))


class UPerNetDecoder(nn.Module):
    """C2..C5 -> one (B, channels, H/4, W/4) map: lateral 1x1 conv-BN-ReLU on C2..C4 and the PPM
    on C5, top-down sums, 3x3 conv-BN-ReLU on the three lower levels, all resized to stride 4
    (align_corners=False, as mmsegmentation's UPerHead; the release states True only for the PPM)
    and fused by a 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.ppm = PPM(in_channels[-1], channels, pool_scales)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.channels = channels

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats[:-1], strict=True)] + [self.ppm(feats[-1])]
        for i in range(len(lat) - 1, 0, -1):  # top-down pathway
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:-1], strict=True)] + [lat[-1]]
        size = outs[0].shape[-2:]
        return self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
