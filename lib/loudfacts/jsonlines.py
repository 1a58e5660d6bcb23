"""Appending JSON lines to a file that several processes write together, under a lock."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None


@contextlib.contextmanager
def locked(fh):
    """An exclusive advisory lock on an open file, held for the `with` block (no lock where
    the platform has no flock: one writer per file there)."""
    if fcntl is None:
        yield fh
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    try:
        yield fh
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def append_line(path, obj) -> None:
    """Append `obj` as one JSON line to `path`, under the lock, synced to disk.

    A file whose last line is torn (a writer killed mid-line) gets a newline first, so the
    new line stays whole and readers skip only the torn one.
    """
    line = (json.dumps(obj, default=float) + "\n").encode()
    with open(Path(path), "ab") as f, locked(f):
        end = f.seek(0, os.SEEK_END)
        if end:
            with open(Path(path), "rb") as r:
                r.seek(end - 1)
                if r.read(1) != b"\n":
                    line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
