"""`model.pretrained=imagenet`: a backbone's ImageNet weights by name, downloaded once into the
standard caches and verified before every use (docs/training.md, "Pretrained weights"):

  - torchvision's ResNets: torchvision's IMAGENET1K_V1 file, in torch.hub's cache
    ($TORCH_HOME/hub/checkpoints/), checked against the SHA-256 prefix in its name;
  - resnet101_deepstem: the file the release loads, PyTorch-Encoding's resnet101s (a zip holding one
    state_dict), extracted into the same cache and checked against its full published SHA-1;
  - timm:<model>: timm's weights for that model (its default tag unless the name has one), in the
    Hugging Face hub cache ($HF_HOME/hub), checked against the SHA-256 the hub names the blob by.

A download is written under a temporary name and takes its cache name only once verified; a cached
file that fails its check is deleted and downloaded again. When the weights cannot be had, the
error names the URL and where to put the file by hand."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import uuid
import zipfile

import torch
import torchvision
from torch.hub import download_url_to_file

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGENET = "imagenet"
# The release's lib/net/backbone/resnet.py loads this URL (through torch.hub, unchecked). It is where
# PyTorch-Encoding's encoding/models/model_store.py fetches 'resnet101s', which then checks the
# extracted resnet101s-03a0f310.pth against this SHA-1 (the file name carries its first 8 digits). No
# hash of the zip is published, and torch.hub's check_hash would compare the zip's SHA-256 with that
# SHA-1 prefix: the extracted file is what is checked, against the full SHA-1.
DEEPSTEM_URL = "https://s3.us-west-1.wasabisys.com/encoding/models/resnet101s-03a0f310.zip"
DEEPSTEM_SHA1 = "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e"
# torch.hub's convention (torchvision's and timm's files): name-<first digits of the SHA-256>.ext
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


class WeightsUnavailable(OSError):
    """The named weights could not be downloaded or verified; the message says where to put them."""


def torchvision_file(name: str) -> str:
    """torchvision's ImageNet weights of ResNet `name`: IMAGENET1K_V1, the original recipe's (the
    only ones resnet18 has; V2's longer recipe tops ImageNet but is not what segmentation work,
    torchvision's own segmentation models included, starts from)."""
    weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
    return _hub_file(weights.url, f"torchvision's IMAGENET1K_V1 weights of {name}")


def deepstem_file() -> str:
    """PyTorch-Encoding's resnet101s state_dict, extracted from the zip the release downloads."""
    folder = _hub_checkpoints()
    path = os.path.join(folder, os.path.basename(DEEPSTEM_URL).removesuffix(".zip") + ".pth")
    return _cached(
        path,
        lambda p: _digest(p, "sha1") == DEEPSTEM_SHA1,
        lambda p: _fetch_zip(DEEPSTEM_URL, p),
        f"PyTorch-Encoding's ImageNet resnet101s (the release's backbone) from {DEEPSTEM_URL}",
        f"unzip it into {folder} (it holds {os.path.basename(path)}, SHA-1 {DEEPSTEM_SHA1})",
    )


def timm_file(model_name: str) -> str:
    """The weights timm.create_model(model_name, pretrained=True) loads, through timm's pretrained
    config: from the Hugging Face hub (hf_hub_id) or, for the few models without, its URL."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"model.pretrained=imagenet: timm has no pretrained weights for {model_name!r}")
    if cfg.custom_load:  # e.g. .npz files read by the model's own code, not a state_dict
        raise ValueError(f"model.pretrained=imagenet: timm's weights for {model_name!r} are not a state_dict")
    if (tuple(cfg.mean), tuple(cfg.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        # the data pipeline normalises with ImageNet's statistics (data/transforms.py)
        raise ValueError(
            f"model.pretrained=imagenet: timm's weights for {model_name!r} expect inputs normalised with mean "
            f"{cfg.mean}, std {cfg.std}, not ImageNet's {IMAGENET_MEAN}, {IMAGENET_STD} that blpseg uses: "
            "name a tag trained on ImageNet-normalised inputs (timm:<model>.<tag>)"
        )
    if cfg.hf_hub_id:
        return _hf_file(cfg.hf_hub_id, f"timm's weights for {model_name}")
    return _hub_file(cfg.url, f"timm's weights for {model_name}")


def _hub_checkpoints() -> str:
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    return folder


def _hub_file(url: str, what: str) -> str:
    """`url`'s file in torch.hub's cache, where torch.hub.load_state_dict_from_url (torchvision's,
    timm's) keeps it, checked against the SHA-256 prefix in its name."""
    name = os.path.basename(url)
    path = os.path.join(_hub_checkpoints(), name)
    found = HASH_IN_NAME.search(name)
    prefix = found.group(1) if found else None
    return _cached(
        path,
        lambda p: prefix is None or _digest(p, "sha256").startswith(prefix),
        lambda p: download_url_to_file(url, p, hash_prefix=prefix),
        f"{what} from {url}",
        f"put it at {path}" + (f" (its SHA-256 starts with {prefix})" if prefix else ""),
    )


def _cached(path: str, valid, fetch, what: str, by_hand: str) -> str:
    """`path` if it passes `valid`, else `fetch(path)`, which writes it only once verified."""
    if os.path.exists(path):
        if valid(path):
            return path
        _delete_corrupt(path)
    print(f"downloading {what} to {path}", file=sys.stderr)
    try:
        fetch(path)
    except Exception as e:  # no network, HTTP errors, a short or corrupt download: the same advice
        raise WeightsUnavailable(
            f"could not download {what}: {str(e).rstrip('.')}. Without a network, download it where there is one "
            f"and {by_hand}; or set model.pretrained to a local weights file, or null to train from scratch"
        ) from e
    return path


def _fetch_zip(url: str, path: str) -> None:
    """Downloads the zip at `url`, extracts its one file to `path` if its SHA-1 is DEEPSTEM_SHA1."""
    part = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        download_url_to_file(url, part + ".zip")
        with zipfile.ZipFile(part + ".zip") as zf:  # reading a member checks its CRC-32
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise ValueError(f"the zip should hold one file, it holds {[m.filename for m in members]}")
            with zf.open(members[0]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        got = _digest(part, "sha1")
        if got != DEEPSTEM_SHA1:
            raise ValueError(f"the file in the zip has SHA-1 {got}, not the published {DEEPSTEM_SHA1}")
        os.replace(part, path)
    finally:
        _remove(part)
        _remove(part + ".zip")


def _hf_file(hf_hub_id: str, what: str) -> str:
    """The weights file of Hugging Face repo `hf_hub_id` ("repo" or "repo@revision") in the hub's
    cache: model.safetensors, else pytorch_model.bin (timm's order). The cache is read first, so a
    cached file needs no network (the hub client would otherwise retry a lost connection for about
    25 s before falling back to it). The hub names each cached LFS blob (weights files are) by its
    SHA-256 but checks only its size: checked here, a bad blob deleted."""
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    repo, _, revision = hf_hub_id.partition("@")
    revision = revision or None
    names = ("model.safetensors", "pytorch_model.bin")
    for filename in names:
        with contextlib.suppress(LocalEntryNotFoundError):
            path = hf_hub_download(repo, filename, revision=revision, local_files_only=True)
            if _hf_blob_valid(path):
                return path
            _hf_delete(path)
    error = None
    for filename in names:
        try:
            path = hf_hub_download(repo, filename, revision=revision)
        except LocalEntryNotFoundError as e:  # no network: the next name would wait as long
            error = e
            break
        except EntryNotFoundError as e:  # not in the repo: the next name may be
            error = e
            continue
        except Exception as e:  # HTTP errors, a short download
            error = e
            break
        if _hf_blob_valid(path):
            return path
        _hf_delete(path)
        error = ValueError(f"{path} failed its integrity check after a new download")
        break
    url = hf_hub_url(repo, "model.safetensors", revision=revision)
    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
    raise WeightsUnavailable(
        f"could not download {what} from {url}: {str(error).rstrip('.')}. Without a network, run "
        f"`hf download {repo} model.safetensors` where there is one and copy the folder it fills, {folder}, to the "
        f"same place here; or download {url} and set model.pretrained to that file, or null to train from scratch"
    ) from error


def _hf_delete(path: str) -> None:
    """The snapshot's link and the blob it points to (in the hub's cache, both)."""
    _remove(os.path.realpath(path))
    _delete_corrupt(path)


def _hf_blob_valid(path: str) -> bool:
    blob = os.path.realpath(path)
    if re.fullmatch(r"[0-9a-f]{64}", os.path.basename(blob)):  # an LFS file, named by its SHA-256
        return _digest(blob, "sha256") == os.path.basename(blob)
    return True  # a git-stored file, or a cache without symlinks: the hub checked the size only


def _delete_corrupt(path: str) -> None:
    _remove(path)
    print(f"deleted {path}: it failed its integrity check", file=sys.stderr)


def _digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
