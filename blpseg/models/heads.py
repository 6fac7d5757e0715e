"""The authors' heads: three 1x1 convolutions (channels, channels, outputs) with ReLU between."""

from torch import nn


class Head(nn.Sequential):
    def __init__(self, cin: int, num_outputs: int, channels: int = 256):
        super().__init__(
            nn.Conv2d(cin, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_outputs, 1),
        )
