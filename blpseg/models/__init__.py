"""BLPSeg's network: ResNet backbone, PPM + UPerNet decoder, the two heads and the LAM."""

from .blpseg import BLPSeg, build_model

__all__ = ["BLPSeg", "build_model"]
