"""Metrics to CSV files (one per stream) and TensorBoard, from the main process only."""

from __future__ import annotations

import csv
import os

from torch.utils.tensorboard import SummaryWriter


class MetricLogger:
    def __init__(self, out_dir: str, enabled: bool = True, fresh: bool = True):
        """fresh: a run from iteration 0 starts new CSV files (a resumed run appends)."""
        self.out_dir, self.enabled = out_dir, enabled
        if enabled and fresh:
            for stream in ("train", "val"):
                if os.path.exists(os.path.join(out_dir, f"{stream}.csv")):
                    os.remove(os.path.join(out_dir, f"{stream}.csv"))
        self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard")) if enabled else None

    def log(self, stream: str, step: int, values: dict) -> None:
        """Appends a row to <out_dir>/<stream>.csv and the scalars to TensorBoard as <stream>/<key>."""
        if not self.enabled:
            return
        path = os.path.join(self.out_dir, f"{stream}.csv")
        row = {"iteration": step, **values}
        new = not os.path.exists(path)
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(f"{stream}/{k}", v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
