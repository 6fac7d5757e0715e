"""The ablation tables' runner: every row of a table is a list of config overrides, trained once per
seed with the same budget, then summarised (mean and sample std over seeds) as CSV and markdown.

A run's folder is named by a hash of its config as the file and the overrides state it (seed
included; out_dir and data.root left out; defaults not filled in, so that a key added to the schema
later renames no run) and of the network's version (models.NETWORK_VERSION: runs of an older
network are not taken for finished ones), so
rows shared between tables (Table I's "+ LAM + BLP" is Table II's "BLP") train once, and a run whose
val.json exists is skipped: rerunning a table resumes it (an interrupted run continues from its
last.pt)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os

import numpy as np

from ..config import apply_overrides, load_config, resolve

DEFAULT_CONFIG = os.path.join("configs", "synthetic.yaml")


def run_dir(results: str, cfg: dict) -> str:
    from ..models import NETWORK_VERSION

    # Where the run and its data live is not what it is: results move with the folder.
    key = {k: v for k, v in cfg.items() if k != "out_dir"}
    key["data"] = {k: v for k, v in key["data"].items() if k != "root"}
    key["network_version"] = NETWORK_VERSION
    key = json.dumps(key, sort_keys=True)
    return os.path.join(results, "runs", hashlib.sha1(key.encode()).hexdigest()[:12])


def boundary_band_precision(result: dict) -> float:
    """Precision on the pixels nearest the boundary: the first band of relative distance."""
    return float(result["boundary_precision"][0])


def run_table(name: str, title: str, rows: dict[str, list[str]], argv=None) -> str:
    """Trains what is missing of `rows` (label -> overrides) and writes <results>/<name>/
    runs.csv, summary.csv and table.md; returns that folder."""
    from ..data.prepare import prepare_data
    from ..engine.distributed import Dist
    from ..engine.train import train

    p = argparse.ArgumentParser(prog=name, description=title)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--results", default=os.path.join("results", "ablations"), help="runs/ and the tables go here")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every row, e.g. train.epochs=4")
    args = p.parse_args(argv)
    base = load_config(args.config, args.overrides, resolved=False)
    runs = [
        (label, seed, apply_overrides(base, [*overrides, f"seed={seed}"]))
        for label, overrides in rows.items()
        for seed in args.seeds
    ]
    for _, _, cfg in runs:
        resolve(cfg)  # every row's mistakes before the first run trains
    # One data set for every seed: the seeds vary initialisation and sampling, not the data.
    prepare_data(resolve(apply_overrides(base, ["seed=0"])), Dist())
    records = []
    for label, seed, cfg in runs:
        cfg["out_dir"] = run_dir(args.results, cfg)
        done = os.path.join(cfg["out_dir"], "val.json")
        if not os.path.isfile(done):
            last = os.path.join(cfg["out_dir"], "last.pt")
            print(f"{name}: {label}, seed {seed} -> {cfg['out_dir']}", flush=True)
            # the folder is this config's: a run stopped before its first checkpoint starts anew there
            train(cfg, resume=last if os.path.isfile(last) else None, overwrite=not os.path.isfile(last))
        with open(done) as fh:
            result = json.load(fh)
        records.append(
            {
                "row": label,
                "seed": seed,
                "run": cfg["out_dir"],
                "miou": result["miou"],
                "boundary_precision": boundary_band_precision(result),
            }
        )
    return write_table(os.path.join(args.results, name), title, list(rows), records)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _cell(mean: float, std: float) -> str:
    return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def write_table(folder: str, title: str, labels: list[str], records: list[dict]) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "runs.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    summary = []
    for label in labels:
        mine = [r for r in records if r["row"] == label]
        m, s = _mean_std([100 * r["miou"] for r in mine])
        bm, bs = _mean_std([100 * r["boundary_precision"] for r in mine])
        summary.append({"row": label, "seeds": len(mine), "miou_mean": m, "miou_std": s, "bp_mean": bm, "bp_std": bs})
    with open(os.path.join(folder, "summary.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    lines = [f"### {title}", "", "| | seeds | mIoU (%) | boundary precision (%) |", "|---|---|---|---|"]
    lines += [
        f"| {s['row']} | {s['seeds']} | {_cell(s['miou_mean'], s['miou_std'])} | {_cell(s['bp_mean'], s['bp_std'])} |"
        for s in summary
    ]
    lines += [
        "",
        "Mean ± sample std over seeds on the synthetic val split; boundary precision: pixel",
        "precision within the first tenth of relative distance to the object boundary.",
    ]
    with open(os.path.join(folder, "table.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return folder
