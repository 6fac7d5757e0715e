"""Files written whole or not at all: into a temporary beside the target (`<file>.tmp<pid>`), flushed
to disk, then renamed over it. A write that fails (disk full, quota, file-size limit) or is
interrupted (Ctrl-C) removes its temporary and leaves the target as it was; the error names the
file and what failed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from typing import IO

TEMPORARY = re.compile(r"\.tmp\d+$")  # what atomic_write names its temporaries: <file>.tmp<pid>


class WriteError(OSError):
    """A file could not be written; the message says which and why (no errno prefix), `errno` the
    system's code."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return self.args[0]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", what: str = "", sync: bool = True) -> Iterator[IO]:
    """Yields a file open (`mode`: "wb" or "w", UTF-8) on the temporary; when the block ends without
    error, it replaces `path`, after fsync (`sync`: the file survives a power cut whole, not only a
    killed process). An OSError in the block (also one a writer wraps, as torch.save wraps the
    file's in a RuntimeError) becomes a WriteError naming `what` (e.g. "checkpoint ") and `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())  # a full disk may say so only here; and the rename must not outrun the data
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        interrupt = _behind(e, lambda x: isinstance(x, KeyboardInterrupt))
        if interrupt is not None and interrupt is not e:
            raise interrupt from None  # Ctrl-C mid-write, which the writer reported as its own failure
        cause = _behind(e, lambda x: isinstance(x, OSError) and x.errno is not None)
        if cause is None or isinstance(e, WriteError):
            raise
        kept = f"; the previous {path} is unchanged" if os.path.exists(path) else ""
        raise WriteError(write_failure(path, cause, what) + kept, cause.errno) from e


def write_failure(path: str, e: OSError, what: str = "") -> str:
    """'could not write <what><path>: <why>', naming the folder where it is full."""
    folder = os.path.dirname(path) or "."
    why = {
        errno.ENOSPC: f"no space left in {folder}",
        errno.EDQUOT: f"disk quota exceeded in {folder}",
        errno.EFBIG: "the file would exceed the file-size limit of this process (ulimit -f)",
    }.get(e.errno, e.strerror or str(e))
    return f"could not write {what}{path}: {why}"


def _behind(e: BaseException | None, test) -> BaseException | None:
    """The first exception passing `test` among `e` and those it was raised from or while handling."""
    seen = set()
    while e is not None and id(e) not in seen:
        if test(e):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
