"""A training run's folder (out_dir): the files a run writes there, the lock that keeps a second
process out while it runs, and the refusal to start a run over another one's files
(docs/training.md, "Run folders")."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import socket
import time
from collections.abc import Iterator

from ..files import TEMPORARY

# What a run writes; any of them makes a folder "hold a run".
RUN_FILES = ("last.pt", "config.yaml", "data_summary.json", "train.csv", "val.csv", "val.json", "tensorboard")
# What `blpseg eval` writes beside a checkpoint by default: results of the model a new run replaces.
EVAL_FILES = ("eval.json", "eval_boundary_precision.png")
LOCK = "train.lock"


class RunFolderError(ValueError):
    pass


def run_files(folder: str) -> list[str]:
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]


def check_new_run(out_dir: str, resume: str | None, overwrite: bool) -> None:
    """Refuses a run that would write over the run in `out_dir`: only its continuation (`resume`, a
    checkpoint in that folder) or an explicit `overwrite` may write there."""
    held = run_files(out_dir)
    if not held or overwrite:
        return
    files = ", ".join(held)
    if resume is not None:
        if os.path.realpath(os.path.dirname(os.path.abspath(resume))) == os.path.realpath(out_dir):
            return
        raise RunFolderError(
            f"{out_dir} holds another run ({files}): resuming {resume} there would write over it; choose another "
            f"out_dir, or continue that folder's own run with --resume"
        )
    way = "continue it with --resume" if "last.pt" in held else "it has no checkpoint to continue"
    raise RunFolderError(
        f"{out_dir} holds a run ({files}): {way}, start anew there with --overwrite (deletes those files), "
        f"or choose another out_dir"
    )


def check_inputs(out_dir: str, inputs, resume: str | None) -> None:
    """Refuses a run whose own files would replace a file it is configured from (`inputs`: the
    config and its base files), e.g. `--config runs/x/config.yaml out_dir=runs/x --overwrite`.
    Only a resumed run rewrites its folder's config.yaml: with the config that runs, as always."""
    written = {os.path.realpath(os.path.join(out_dir, name)): name for name in RUN_FILES + EVAL_FILES}
    for path in inputs:
        name = written.get(os.path.realpath(path))
        if name is not None and not (resume is not None and name == "config.yaml"):
            raise RunFolderError(
                f"the config file {path} is read by this run, which would replace it in out_dir={out_dir}: copy it "
                "out of the run folder first, or choose another out_dir"
            )


def clear(out_dir: str) -> list[str]:
    """Deletes the previous run's files (RUN_FILES, EVAL_FILES and the temporaries of interrupted
    writes) from `out_dir`; other files stay. Returns the deleted paths."""
    removed = remove_stale_temporaries(out_dir)
    for name in RUN_FILES + EVAL_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


def remove_stale_temporaries(folder: str) -> list[str]:
    """Deletes the `<file>.tmp<pid>` temporaries of a run's files (checkpoints, metrics, config)
    that a process killed mid-write left in `folder`; the folder's lock guarantees that no live
    process is writing them. Returns the deleted paths."""
    ours = {*RUN_FILES, *EVAL_FILES}
    stale = [
        p
        for p in glob.glob(os.path.join(glob.escape(folder), "*.tmp*"))
        if TEMPORARY.search(p)
        and (TEMPORARY.sub("", os.path.basename(p)) in ours or TEMPORARY.sub("", p).endswith(".pt"))
    ]
    for p in stale:
        os.remove(p)
    return stale


@contextlib.contextmanager
def locked(out_dir: str) -> Iterator[str | None]:
    """Holds `out_dir`/train.lock (created, and flock'ed so that the lock ends with the process
    however it ends) while the block runs, and removes it after; yields what the file said of a
    holder that ended without removing it (killed), or None. Refuses a folder another live
    process holds, naming its pid and host. A folder made here and left empty is removed after."""
    made = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "a process that has not written its pid yet"
            os.close(fd)
            raise RunFolderError(
                f"{out_dir} is in use by another training run ({holder}; lock file {path}): two runs never write "
                f"one folder. Wait for it to end, or choose another out_dir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise RunFolderError(f"cannot lock {path} ({e.strerror}): the file system does not support flock") from e
        # the holder may have removed the file between our open and flock: lock the one at `path`
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        left = _read(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {time.ctime()}\n".encode(), 0)
        yield left
    finally:
        os.remove(path)  # before the unlock: a process that opened it meanwhile sees it gone and retries
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                os.rmdir(out_dir)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()
