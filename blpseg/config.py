"""YAML configs with `key.sub=value` overrides from the command line."""

from __future__ import annotations

import copy

import yaml

from .data.classes import CLASS_SETS


def load_config(path: str, overrides=()) -> dict:
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a YAML mapping")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides) -> dict:
    """`overrides` are "a.b.c=value" strings; the value is parsed as YAML (1e-4, null, [1, 2])."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override must be key=value, got {item!r}")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p, {}), dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[leaf] = _parse(value)
    return cfg


def _parse(value: str):
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def class_names(cfg: dict) -> tuple[str, ...]:
    name = cfg["data"]["dataset"]
    if name not in CLASS_SETS:
        raise ValueError(f"data.dataset must be one of {tuple(CLASS_SETS)}, got {name!r}")
    return CLASS_SETS[name]
