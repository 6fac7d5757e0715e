"""Checkpoints written atomically (a crash mid-write leaves the previous file intact) and read
with weights_only=True (a checkpoint from elsewhere cannot run code)."""

from __future__ import annotations

import glob
import os
import re

import torch

_TEMPORARY = re.compile(r"\.tmp\d+$")


def save_checkpoint(state: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Deletes the `<checkpoint>.tmp<pid>` files a process killed mid-write left in `folder` (one
    run writes a folder's checkpoints: any such file is stale when the run starts)."""
    stale = [p for p in glob.glob(os.path.join(glob.escape(folder), "*.pt.tmp*")) if _TEMPORARY.search(p)]
    for p in stale:
        os.remove(p)
    return stale


def load_checkpoint(path: str) -> dict:
    if _TEMPORARY.search(path):
        raise ValueError(f"{path} is a temporary file of an interrupted checkpoint write, not a checkpoint")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


# What `blpseg eval/predict/...` overrides may not change on a trained model: its architecture.
MODEL_FIXED_MAY_CHANGE = (
    "out_dir",
    "seed",
    "device",
    "threads",
    "data",
    "loss",
    "train",
    "eval",
    "model.pretrained",
    "model.lam_backend",
)


def checkpoint_config(state: dict, overrides=()) -> tuple[dict, tuple[str, ...]]:
    """The resolved config of a checkpoint with `overrides` applied, and its class names."""
    from ..config import apply_overrides, class_names, fixed_differences, resolve

    saved = resolve(state["config"])
    cfg = resolve(apply_overrides(saved, overrides))
    changed = fixed_differences(saved, cfg, MODEL_FIXED_MAY_CHANGE)
    if changed:
        raise ValueError(f"the model of a checkpoint is fixed; these overrides would change it: {'; '.join(changed)}")
    names = tuple(state["class_names"]) if "class_names" in state else class_names(cfg)
    return cfg, names


def load_model(checkpoint: str, overrides=()):
    """The model of a training checkpoint in eval mode on the configured device (CUDA when
    available unless device=cpu): (model, config with `overrides` applied, class names, device)."""
    from ..models import build_model
    from .distributed import set_threads

    state = load_checkpoint(checkpoint)
    cfg, names = checkpoint_config(state, overrides)
    set_threads(cfg["threads"])
    model = build_model(len(names), **{**cfg["model"], "pretrained": None})
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if cfg["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), cfg, names, device
