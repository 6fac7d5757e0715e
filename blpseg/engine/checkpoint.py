"""Checkpoints written atomically (a crash mid-write leaves the previous file intact) and read
with weights_only=True (a checkpoint from elsewhere cannot run code)."""

from __future__ import annotations

import os

import torch


def save_checkpoint(state: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


def load_model(checkpoint: str, overrides=()):
    """The model of a training checkpoint in eval mode on the configured device (CUDA when
    available unless device=cpu): (model, config with `overrides` applied, class names, device)."""
    from ..config import apply_overrides, class_names
    from ..models import build_model
    from .distributed import set_threads

    state = load_checkpoint(checkpoint)
    cfg = apply_overrides(state["config"], overrides)
    set_threads(cfg.get("threads"))
    names = class_names(cfg)
    model = build_model(len(names), **{**cfg["model"], "pretrained": None})
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if cfg.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), cfg, names, device
