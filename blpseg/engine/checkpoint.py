"""Checkpoints written atomically (a failed or interrupted write leaves the previous file intact,
blpseg/files.py) and read with weights_only=True (a checkpoint from elsewhere cannot run code).
Whatever is wrong with a file given as a checkpoint is a CheckpointError naming it."""

from __future__ import annotations

import os
import pickle
import re

import torch

from ..files import TEMPORARY, atomic_write


class CheckpointError(ValueError):
    pass


def save_checkpoint(state: dict, path: str) -> None:
    with atomic_write(path, what="checkpoint ") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str) -> dict:
    """The checkpoint at `path`: a dict with the model's weights ("model") and its config ("config"),
    as `blpseg train` writes it."""
    if TEMPORARY.search(path):
        raise CheckpointError(f"{path} is a temporary file of an interrupted checkpoint write, not a checkpoint")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wants = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(
            f"{path} was refused: it holds Python objects other than tensors and plain data"
            f"{f' (it asks for {wants.group(1)})' if wants else ''}, which could run code when loaded. Checkpoints are "
            f"read with weights_only=True; only one written by `blpseg train` (or holding only tensors) loads"
        ) from None
    except OSError:
        raise
    except Exception as e:  # torch raises several types for truncated or foreign files
        why = re.split(r"(?<=\.)\s", str(e).strip())[0] or type(e).__name__  # torch's first sentence
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch file ({why})") from e
    problem = _problem(state)
    if problem:
        raise CheckpointError(f"{path} is not a checkpoint written by `blpseg train`: {problem}")
    return state


def _problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict with the model's weights and config"
    missing = [k for k in ("model", "config") if k not in state]
    if missing:
        keys = ", ".join(map(str, state)) or "none"
        return f"it has no {' and no '.join(map(repr, missing))} entry (its keys: {keys})"
    model, config = state["model"], state["config"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return "its 'model' entry is not a state_dict (names -> tensors)"
    if not isinstance(config, dict):
        return f"its 'config' entry is a {type(config).__name__}, not a mapping"
    names = state.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names)
    ):
        return "its 'class_names' entry is not a list of two or more names"
    return None


def load_weights(model: torch.nn.Module, weights: dict, path: str) -> None:
    """model.load_state_dict(weights), or a CheckpointError naming `path` and what does not fit."""
    own = model.state_dict()
    problems = [
        f"{k}: {tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the network"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    missing, unexpected = [k for k in own if k not in weights], [k for k in weights if k not in own]
    problems += [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
    problems += [f"{len(unexpected)} unknown, e.g. {unexpected[0]}"] if unexpected else []
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(
            f"{path}: its weights do not fit the network its config and {model.num_classes} class names describe "
            f"({shown})"
        )
    model.load_state_dict(weights)


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


def checkpoint_config(state: dict, overrides=(), path: str = "the checkpoint") -> tuple[dict, tuple[str, ...]]:
    """The resolved config of the checkpoint `state` (read from `path`) with `overrides` applied,
    and its class names."""
    from ..config import apply_overrides, fixed_differences, resolve
    from ..data.formats import class_names

    saved = saved_config(state, path)
    cfg = resolve(apply_overrides(saved, overrides))
    changed = fixed_differences(saved, cfg, MODEL_FIXED_MAY_CHANGE)
    if changed:
        raise ValueError(f"the model of a checkpoint is fixed; these overrides would change it: {'; '.join(changed)}")
    names = tuple(state["class_names"]) if "class_names" in state else class_names(cfg["data"])
    return cfg, names


def saved_config(state: dict, path: str) -> dict:
    """The checkpoint's own config, resolved (defaults filled in), or a CheckpointError naming `path`."""
    from ..config import resolve

    try:
        return resolve(state["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: the config it holds is not valid: {e}") from None


def load_model(checkpoint: str, overrides=()):
    """The model of a training checkpoint in eval mode on the configured device (CUDA when
    available unless device=cpu): (model, config with `overrides` applied, class names, device)."""
    from .builders import model_from_config
    from .distributed import set_threads

    state = load_checkpoint(checkpoint)
    cfg, names = checkpoint_config(state, overrides, checkpoint)
    set_threads(cfg["threads"])
    model = model_from_config(cfg["model"], len(names), pretrained=False)
    load_weights(model, state["model"], checkpoint)
    device = torch.device("cuda" if cfg["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), cfg, names, device
