"""Metrics to CSV files (one per stream) and TensorBoard, from the main process only."""

from __future__ import annotations

import csv
import os

from torch.utils.tensorboard import SummaryWriter

from ..files import WriteError, atomic_write, write_failure


class MetricLogger:
    def __init__(self, out_dir: str, enabled: bool = True, start: int = 0):
        """start: the iteration training starts from. From 0 the CSV files start anew; a run resumed
        from a checkpoint drops what the interrupted run logged after it (CSV rows and, through
        purge_step, TensorBoard events), so that every iteration is logged once."""
        self.out_dir, self.enabled = out_dir, enabled
        if enabled:
            for stream in ("train", "val"):
                _drop_rows_after(os.path.join(out_dir, f"{stream}.csv"), start)
        purge = start + 1 if start else None
        self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=purge) if enabled else None

    def log(self, stream: str, step: int, values: dict) -> None:
        """Appends a row to <out_dir>/<stream>.csv and the scalars to TensorBoard as <stream>/<key>."""
        if not self.enabled:
            return
        path = os.path.join(self.out_dir, f"{stream}.csv")
        row = {"iteration": step, **values}
        new = not os.path.exists(path)
        try:
            with open(path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as e:
            raise WriteError(write_failure(path, e), e.errno) from e
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(f"{stream}/{k}", v, step)
        self.tb.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """`text` (markdown) on TensorBoard's text tab under `tag`, at iteration `step`."""
        if self.enabled:
            self.tb.add_text(tag, text, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _drop_rows_after(path: str, iteration: int) -> None:
    """Keeps the rows of a metrics CSV up to `iteration` (none for 0); write then rename."""
    if not os.path.exists(path):
        return
    if iteration == 0:
        os.remove(path)
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, [r for r in reader if int(r["iteration"]) <= iteration]
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
