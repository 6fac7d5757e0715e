"""The authors' heads: 1x1 convolutions without bias (channels -> channels, ReLU, channels ->
channels, ReLU), then a 1x1 convolution with bias to the outputs. No BN (the release has none,
although the paper's text mentions it)."""

from torch import nn


class Head(nn.Sequential):
    def __init__(self, cin: int, num_outputs: int, channels: int = 256):
        super().__init__(
            nn.Conv2d(cin, channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_outputs, 1),
        )
