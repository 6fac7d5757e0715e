"""BLPSeg's network: a backbone (backbone.py), PPM + UPerNet decoder, the two heads and the LAM."""

from .backbone import build_backbone
from .blpseg import NETWORK_VERSION, BLPSeg

__all__ = ["BLPSeg", "NETWORK_VERSION", "build_backbone"]
