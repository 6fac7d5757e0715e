"""lam_ops: the Local Aggregation operator of BLPSeg, fused and memory-efficient."""

from .functional import available_backends, local_aggregate, local_aggregate_with_lse
from .modules import LocalAggregation, PatchEmbed

__all__ = ["available_backends", "local_aggregate", "local_aggregate_with_lse", "LocalAggregation", "PatchEmbed"]
