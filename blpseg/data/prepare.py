"""Data a config generates itself before training or analysis (the VOC layout's data.synthetic)."""

from __future__ import annotations

import torch

from . import formats


def prepare_data(cfg: dict, d) -> None:
    """Generates what the config's data format writes on first use (DataFormat.generate), on the
    main process of `d` (an engine.distributed.Dist) while the others wait."""
    data = cfg["data"]
    if d.is_main:
        formats.of(data).generate(data, cfg["seed"])
    if d.world_size > 1:
        torch.distributed.barrier()
