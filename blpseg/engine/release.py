"""The authors' released models (github.com/YudeWang/BLPSeg, Model Zoo) as checkpoints of ours.

A release file is what their train.py writes, `torch.save(module.state_dict())`: their module
names, the same network part by part (tested against a transcription of their forward,
tests/release_model.py). `import_release` maps every key to ours or stops naming the missing and
unexpected ones, and writes a checkpoint that `blpseg eval` and `predict` take.

Two things are more than a rename:
- Their PPM concatenates [the pooled branches, the input] before its 1x1 bottleneck, ours
  [input, branches]: the bottleneck conv's input columns are reordered on import (decision: our
  network and the results trained with it stay as they are; the reordered weights compute what
  theirs do, to float rounding).
- Dropped, being no weights of the network: `distance_prob`, the LAM's Gaussian distance matrix
  frozen at the training grid (96 x 96) and used only in training (it is read first, for the sigma
  it was built with, which must be the config's); `backbone.layernorm`, which their forward never
  uses; the `_tmp_running_mean`, `_tmp_running_var` and `_running_iter` buffers of their
  SynchronizedBatchNorm2d, the bias-corrected accumulators of training, whose quotients are the
  `running_mean` and `running_var` that evaluation reads (kept); and `CELoss.weight`, the class
  weights of their scribble loss (ours: `loss.unlabeled_weight`)."""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import pickle

import torch
from torch import Tensor, nn

RELEASE = "github.com/YudeWang/BLPSeg"

# (their prefix, ours), tried in order; the first match renames a key
RENAMES = (
    ("backbone.", "backbone."),
    ("ppm.stages.", "decoder.ppm.branches."),
    ("ppm.bottleneck.0.", "decoder.ppm.bottleneck.0.0."),  # conv
    ("ppm.bottleneck.1.", "decoder.ppm.bottleneck.0.1."),  # norm
    ("decoder.lateral_convs.", "decoder.lateral."),
    ("decoder.fpn_convs.", "decoder.fpn."),
    ("decoder.fpn_bottleneck.", "decoder.fuse."),
    ("seg_head.", "seg_head."),
    ("scribble_head.", "scrib_head."),
    ("embed_proj.proj.", "lam.embed.proj."),
    ("embed_proj.norm.", "lam.embed.norm."),
    ("embed_proj.conv.", "lam.embed.out."),
)
DISTANCE = "distance_prob"
DROPPED_PREFIXES = ("backbone.layernorm.", "CELoss.")
DROPPED_SUFFIXES = ("._tmp_running_mean", "._tmp_running_var", "._running_iter")
PPM_BOTTLENECK = "decoder.ppm.bottleneck.0.0.weight"
# ours that a release file need not hold: BN counters (unused in evaluation; older files lack
# them) and the LAM's sigma, which comes from the config
OURS_ONLY_SUFFIXES = ("num_batches_tracked",)
OURS_ONLY = ("lam.log_sigma",)
SIGMA_RTOL = 1e-4


def read_release(path: str) -> dict[str, Tensor]:
    """The state_dict of a release file, read with weights_only=True, a `module.` prefix (their
    nn.DataParallel's) removed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"release model not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False: not for untrusted files
        raise ValueError(
            f"{path} is not a file of tensors that torch.load(weights_only=True) reads, as the release's state_dict is"
        ) from None
    except Exception as e:  # zip and I/O errors
        raise ValueError(
            f"{path} is not a readable weights file: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
        ) from e
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors), as the release saves")
    return {k.removeprefix("module."): v for k, v in state.items()}


def our_name(key: str) -> str | None:
    for theirs, ours in RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


def their_name(key: str) -> str:
    for theirs, ours in RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def dropped(key: str) -> bool:
    return key == DISTANCE or key.startswith(DROPPED_PREFIXES) or key.endswith(DROPPED_SUFFIXES)


def trained_sigma(distance: Tensor) -> float:
    """The sigma of `distance_prob`, exp(-d^2 / (2 sigma^2)) over the pairs of a grid's pixels:
    entry (0, 1) is the pair at distance 1."""
    if distance.dim() != 3 or distance.shape[1] != distance.shape[2] or distance.shape[1] < 2:
        raise ValueError(f"{DISTANCE} has shape {tuple(distance.shape)}, not (1, N, N) with N >= 2")
    p = float(distance[0, 0, 1])
    if not 0 < p < 1:
        raise ValueError(f"{DISTANCE}[0, 0, 1] is {p}, not a Gaussian weight in (0, 1)")
    return math.sqrt(-1 / (2 * math.log(p)))


def convert(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Our state_dict for `model` from a release state_dict; a ValueError names the keys that do
    not map (missing and unexpected, in the release's names), the shapes that differ, and a sigma
    other than the one the release trained with."""
    ours = model.state_dict()
    out, unexpected = {}, []
    for key, value in state.items():
        if dropped(key):
            continue
        name = our_name(key)
        if name is None or name not in ours:
            unexpected.append(key)
        else:
            out[name] = value
    optional = [k for k in ours if k.endswith(OURS_ONLY_SUFFIXES) or k in OURS_ONLY]
    missing = [their_name(k) for k in ours if k not in out and k not in optional]
    if missing or unexpected:
        raise ValueError(
            f"the file does not match this config's network: missing {_listed(missing)}; "
            f"unexpected {_listed(unexpected)}"
        )
    shapes = [
        f"{their_name(k)} {tuple(v.shape)} (this config: {tuple(ours[k].shape)})"
        for k, v in out.items()
        if v.shape != ours[k].shape
    ]
    if shapes:
        raise ValueError(f"the file does not match this config's network: other shapes: {_listed(shapes)}")
    if DISTANCE in state and getattr(model, "lam", None) is not None:
        sigma, configured = trained_sigma(state[DISTANCE]), float(model.lam.sigma)
        if abs(sigma - configured) > SIGMA_RTOL * configured:
            raise ValueError(
                f"the release's LAM was trained with sigma {sigma:.4g} (from its {DISTANCE}), this config's has "
                f"{configured:.4g}: set model.sigma={sigma:.4g} (with model.similarity=both, as the release)"
            )
    # their PPM bottleneck reads [branches, input], ours [input, branches]
    cin = model.decoder.ppm.branches[0][1].in_channels
    w = out[PPM_BOTTLENECK]
    out[PPM_BOTTLENECK] = torch.cat([w[:, -cin:], w[:, :-cin]], dim=1)
    return {k: out.get(k, ours[k]) for k in ours}


def _listed(keys: list[str], shown: int = 8) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_release(src: str, cfg: dict, names, out: str) -> dict:
    """Writes `out`, a checkpoint of ours holding the release file `src`'s weights in the network
    of `cfg` (a resolved config) for the classes `names`, and where they came from. Returns it."""
    from .builders import model_from_config
    from .checkpoint import save_checkpoint

    state = read_release(src)
    cfg = {**cfg, "model": {**cfg["model"], "pretrained": None}}  # the weights are all the release's
    model = model_from_config(cfg["model"], len(names))
    try:
        weights = convert(state, model)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    model.load_state_dict(weights)  # strict: every key of ours is set
    checkpoint = {
        "model": model.state_dict(),
        "config": cfg,
        "class_names": list(names),
        "source": {
            "release": RELEASE,
            "path": os.path.abspath(src),
            "sha256": sha256(src),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    save_checkpoint(checkpoint, out)
    return checkpoint
