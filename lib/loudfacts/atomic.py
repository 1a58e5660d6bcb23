"""Atomic writes: every cache and results file of the package is written to a temporary file in
its own folder and moved into place with `os.replace`, so a reader sees the old file or the
whole new one, never half of one (an interrupted run leaves at most a stray `.tmp` file).

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)
    write_text(path, text)
    write_json(path, data, indent=1)

Appending to a JSON-lines file under a lock is `loudfacts.jsonlines`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _new_temp(folder: Path, stem: str, suffix: str) -> Path:
    """Create an empty file with a fresh random name in `folder`, mode 0666 less the process's
    umask (the kernel applies it, as for any new file; `tempfile.mkstemp` would make 0600)."""
    while True:
        tmp = folder / f".{stem}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside `path` for the caller to write; moved onto `path` when the
    block ends without an error, removed when it raises. Creates `path`'s folder.

    `suffix` is the temporary file's suffix: writers that add their own (numpy's `savez` adds
    ".npz" to a name without it) need it to end the same way. `fsync` flushes the file to disk
    before the move, for files that must survive a crash of the machine (results files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path.parent, path.name, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path, text: str, fsync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data, fsync: bool = False, **dumps_kwargs) -> None:
    """Write `json.dumps(data, **dumps_kwargs)` and a newline to `path` atomically."""
    write_text(path, json.dumps(data, **dumps_kwargs) + "\n", fsync=fsync)
