"""Data a config generates itself before training or analysis: the synthetic set (data.synthetic)."""

from __future__ import annotations

import torch

from .synthetic import make_synthetic, synthetic_exists


def prepare_data(cfg: dict, d) -> None:
    """Generates the synthetic set on first use (data.synthetic holds its options), on the main
    process of `d` (an engine.distributed.Dist) while the others wait."""
    data = cfg["data"]
    if data["synthetic"] is not None and not synthetic_exists(data["root"]):
        if d.is_main:
            try:
                make_synthetic(data["root"], **data["synthetic"], seed=cfg["seed"])
            except ValueError as e:  # files of something else there
                raise ValueError(
                    f"data.synthetic: cannot generate the set under data.root={data['root']}: {e}"
                ) from None
        if d.world_size > 1:
            torch.distributed.barrier()
