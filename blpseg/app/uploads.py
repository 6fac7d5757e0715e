"""The page's uploads, kept on the server until the page stops: an upload is copied here under a
random id and reopened in a new page (?upload=ID), as the data folder's photos are (?photo=NAME;
page.py says why). The store is a temporary folder outside the data folder (nothing reaches the
data folder before a save), bounded (the oldest uploads are dropped past MAX_UPLOADS files or
MAX_BYTES), and removed when the page stops (close, or the `with` block's end)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict

MAX_UPLOADS = 20  # a user scribbles on one photo at a time: a reload of a recent tab still finds its photo
MAX_BYTES = 1 << 30  # 1 GiB; the newest upload is kept whatever its size (read_image bounds its pixels)


class UploadStore:
    """{id: (path, the file's name as uploaded)}; ids are random (a URL's id names no file path)."""

    def __init__(self, max_uploads: int = MAX_UPLOADS, max_bytes: int = MAX_BYTES):
        self.dir = tempfile.mkdtemp(prefix="blpseg-app-uploads-")
        self.max_uploads, self.max_bytes = max_uploads, max_bytes
        self._files: OrderedDict[str, tuple[str, str, int]] = OrderedDict()
        self._lock = threading.Lock()  # the page's handlers run in several threads

    def add(self, path: str, name: str) -> str:
        """Copies the file `path` (uploaded as `name`) into the store; returns its id."""
        upload_id = secrets.token_urlsafe(12)  # letters, digits, '-', '_': the stored file's name
        kept = shutil.copyfile(path, os.path.join(self.dir, upload_id))  # PIL reads it by its content
        with self._lock:
            self._files[upload_id] = (kept, os.path.basename(name), os.path.getsize(kept))
            dropped = []
            while len(self._files) > 1 and (
                len(self._files) > self.max_uploads or sum(s for *_, s in self._files.values()) > self.max_bytes
            ):
                dropped.append(self._files.popitem(last=False)[0])
        for old in dropped:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.dir, old))
        return upload_id

    def get(self, upload_id: str) -> tuple[str, str] | None:
        """(path, name as uploaded) of an upload, or None: an unknown id, or one dropped since."""
        with self._lock:
            found = self._files.get(upload_id)
        return found[:2] if found else None

    def close(self) -> None:
        with self._lock:
            self._files.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
