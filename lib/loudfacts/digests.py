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
name and bytes, in name order); `weights_fingerprint` is its first 16 digits. Hashing
SmolLM2's 540 MB takes 0.5-0.7 s, and an evaluation asks for it several times per record (run
settings, the unedited scores' key), so `weight_digest(model)` here remembers the last digest
of each model while its parameters are untouched (see there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
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


_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hf -> (state, digest)
_REMEMBER = {"on": True}


@contextlib.contextmanager
def remembering_weight_digests(enabled: bool):
    """Inside the block, `weight_digest` remembers (True, the default) or hashes on every call
    (False, as before it remembered; for benchmarks)."""
    before, _REMEMBER["on"] = _REMEMBER["on"], bool(enabled)
    try:
        yield
    finally:
        _REMEMBER["on"] = before


def _weights_state(model) -> list:
    """Each parameter's name, the tensor itself, its version counter and data pointer."""
    return [(name, p, p._version, p.data_ptr()) for name, p in model.hf.named_parameters()]


def _same_state(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] is y[1] and x[2] == y[2] and x[3] == y[3] for x, y in zip(a, b))


def weight_digest(model) -> str:
    """`model.weight_digest()` (SHA-256 of every parameter's name and bytes), remembered per
    model until a parameter changes.

    "Changes" is read from torch's version counters: every in-place write to a parameter
    (`add_`, `copy_`, an optimiser step, `load_state_dict`), under `no_grad` or not, bumps
    its counter, and a parameter replaced by another object, or moved to new memory, is noticed
    too. A write through `.data` (`p.data.copy_(x)`) bypasses the counter and would not be
    noticed: nothing in this package writes weights that way. `model.weight_digest()` itself
    always hashes.
    """
    hf = getattr(model, "hf", None)
    if hf is None or not _REMEMBER["on"]:
        return model.weight_digest()
    state = _weights_state(model)
    got = _WEIGHT_DIGESTS.get(hf)
    if got is not None and _same_state(got[0], state):
        return got[1]
    value = model.weight_digest()
    _WEIGHT_DIGESTS[hf] = (state, value)
    return value


def remembered_digest(model) -> tuple[list, str] | None:
    """(weights state, digest) remembered for `model` if it still describes its weights (no
    parameter written since it was hashed), else None. For an edit to hand to
    `restored_weights` when it writes its saved weights back."""
    hf = getattr(model, "hf", None)
    got = _WEIGHT_DIGESTS.get(hf) if hf is not None else None
    if got is None or not _same_state(got[0], _weights_state(model)):
        return None
    return got


def restored_weights(model, before: tuple[list, str] | None, restored) -> bool:
    """After an edit wrote back, bit for bit, the bytes that the parameters `restored` held when
    `before` (`remembered_digest` at its apply) was current: remember `before`'s digest for
    the weights as they are now, instead of hashing them again at the next `weight_digest`.

    Only where nothing else moved: every other parameter still has the version counter, object
    and memory it had in `before` (so none was written in between), and each restored one the
    same object and memory. Returns whether the digest was carried over."""
    hf = getattr(model, "hf", None)
    if before is None or hf is None:
        return False
    ids = {id(p) for p in restored}
    now = _weights_state(model)
    old = before[0]
    if len(now) != len(old):
        return False
    for x, y in zip(old, now):
        if x[0] != y[0] or x[1] is not y[1] or x[3] != y[3]:
            return False
        if id(y[1]) not in ids and x[2] != y[2]:
            return False
    _WEIGHT_DIGESTS[hf] = (now, before[1])
    return True


def weights_fingerprint(model) -> str:
    """The first 16 hex digits of `weight_digest(model)` (`LoadedModel.weights_fingerprint`,
    remembered as `weight_digest` is)."""
    return weight_digest(model)[:16]
