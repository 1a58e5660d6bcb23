"""Content digests: the one definition behind every key, cache name and settings digest of the
package.

* `canonical_json(obj)`: sorted keys, no spaces, values JSON cannot hold (dtypes, paths) as
  their `str`. Equal content gives equal text, whatever the dict order.
* `digest(obj, n=None)`: SHA-256 (hex) of `canonical_json(obj)`, or its first `n` digits.
  Results rows (`run_key`, `settings_digest`), tracing records, ROME's components, FT's bricking
  table and the noise scale are all keyed by it.
* `digest_text(text)`, `digest_file(path)`: SHA-256 of a text's UTF-8 bytes and of a file's bytes.
* `cache_file(kind, name, key, suffix)`: the path `data/cache/<kind>/<name>-<digest(key)[:24]><suffix>`
  (`paths.cache_dir`). Write it with `loudfacts.atomic`; a reader checks the content it stored
  (the key itself, or the settings in it) before using it.

The weights have one digest too: `LoadedModel.weight_digest` (SHA-256 over every parameter's
name and bytes, in name order); `weights_fingerprint` is its first 16 digits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loudfacts.paths import cache_dir


def canonical_json(obj) -> str:
    """Canonical JSON: sorted keys, no spaces; non-JSON values (dtypes, paths) as str."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, n: int | None = None) -> str:
    """SHA-256 (hex) of `canonical_json(obj)`; the first `n` hex digits when `n` is given."""
    h = hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
    return h if n is None else h[:_check_n(n)]


def digest_text(text: str, n: int | None = None) -> str:
    """SHA-256 (hex) of `text`'s UTF-8 bytes (first `n` digits when given)."""
    if not isinstance(text, str):
        raise TypeError(f"digest_text() takes a str, got {type(text).__name__}")
    h = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return h if n is None else h[:_check_n(n)]


def digest_file(path, n: int | None = None, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of the bytes of the file at `path`, read in chunks (first `n` digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    h = h.hexdigest()
    return h if n is None else h[:_check_n(n)]


def cache_file(kind: str, name: str, key, suffix: str) -> Path:
    """`data/cache/<kind>/<name>-<digest(key)[:24]><suffix>`: a cache file named by the digest
    of everything that determines its content (`key`). `name` says what it holds for people
    listing the folder ("/" in a model name becomes "_")."""
    if not suffix.startswith("."):
        raise ValueError(f"suffix={suffix!r} must start with '.'")
    return cache_dir(kind) / f"{str(name).replace('/', '_')}-{digest(key, 24)}{suffix}"


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
        raise ValueError(f"n={n!r} must be an int from 1 to 64 (hex digits of SHA-256)")
    return n
