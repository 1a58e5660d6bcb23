"""One definition of a content digest (`loudfacts.digests`), and stores written under the
earlier tracing keys carried over to the new ones without tracing anything again."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from loudfacts.digests import cache_file, canonical_json, digest, digest_file, digest_text

PROMPT, SUBJECT = "The Louvre is located in the city of", "Louvre"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "cache"))


def test_digest_is_sha256_of_canonical_json_whatever_the_order():
    a = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}}
    b = {"a": {"x": True, "y": "é"}, "b": [1, 2.5, None]}
    text = '{"a":{"x":true,"y":"é"},"b":[1,2.5,null]}'
    assert canonical_json(a) == canonical_json(b) == text.replace("é", "\\u00e9")
    assert digest(a) == digest(b) == hashlib.sha256(canonical_json(a).encode()).hexdigest()
    assert digest(a, 12) == digest(a)[:12]
    assert digest({**a, "c": 0}) != digest(a)
    assert canonical_json({"p": np.float32}) == '{"p":"' + str(np.float32) + '"}'  # str()
    for bad in (0, 65, True, 1.5):
        with pytest.raises(ValueError, match="n="):
            digest(a, bad)


def test_text_and_file_digests_hash_the_bytes(tmp_path):
    text = "Rome\nParis é"
    assert digest_text(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    path = tmp_path / "f.bin"
    path.write_bytes(text.encode("utf-8") * 1000)
    assert digest_file(path, chunk=7) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest_file(path, 16) == digest_file(path)[:16]
    with pytest.raises(TypeError, match="str"):
        digest_text(b"bytes")

    from loudfacts.data import file_digest

    assert file_digest(path) == digest_file(path, 16)  # the data files' short digest


def test_cache_file_is_named_by_the_digest_of_its_key(tmp_path):
    key = {"model": "m", "settings": [1, 2]}
    path = cache_file("things", "org/model", key, ".json")
    assert path.parent == tmp_path / "cache" / "things" and path.parent.is_dir()
    assert path.name == f"org_model-{digest(key, 24)}.json"
    assert cache_file("things", "org/model", {**key, "v": 2}, ".json") != path
    with pytest.raises(ValueError, match="suffix"):
        cache_file("things", "m", key, "json")


def test_results_rows_keep_their_keys():
    """The study's committed rows are keyed by `run_key` / `row_digest`, which were SHA-256
    of canonical JSON before `digests` existed and must stay so (no row goes stale)."""
    from loudfacts.runner import run_key

    settings = {"model": "m", "seed": 0, "hparams": {"layer": 5}}
    old = hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":"),
                                    default=str).encode()).hexdigest()
    assert run_key(settings) == old


def _legacy(payload):  # how tracing keyed its records before digests were unified
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def test_a_legacy_averages_store_is_rekeyed_not_retraced(tiny_llama, tmp_path, monkeypatch):
    import loudfacts.averages as averages

    kw = {"kinds": ("hidden",), "samples": 1, "noise": 0.5, "window": 2, "progress": False}
    facts = [{"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 1, "source": "t"},
             {"text": "The Colosseum is located in the city of", "subject": "Colosseum",
              "target_true": "Rome", "id": 2, "source": "t"}]
    fresh = averages.average_effects(tiny_llama, facts, **kw)
    [path] = (tmp_path / "cache" / "tracing").glob("averages-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # rewrite the store as the earlier code named it: legacy file key and record keys
    settings = averages.average_settings(tiny_llama, 1, 0.5, 2, 0, True, None)
    weights = tiny_llama.weights_fingerprint()
    assert path.name.endswith(f"-{averages.averages_file_key(settings, weights)}.jsonl")
    legacy_path = path.with_name(
        f"averages-{tiny_llama.name.replace('/', '_')}-"
        f"{_legacy({**settings, 'weights': weights, 'v': 2})}.jsonl")
    assert legacy_path != path
    legacy = [{**r, "key": _legacy({"fact": r["fact"], "kind": r["kind"], **settings,
                                     "weights": weights, "v": 2})} for r in records]
    legacy[1]["key"] = _legacy({"fact": legacy[1]["fact"], "kind": "mlp", **settings,
                                "weights": weights, "v": 2})  # made under other settings
    legacy_path.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    path.unlink()

    traced = []
    real_trace = averages.trace
    monkeypatch.setattr(averages, "trace", lambda *a, **k: traced.append(a) or real_trace(*a, **k))
    again = averages.average_effects(tiny_llama, facts, **kw)
    assert not legacy_path.exists() and path.exists()
    assert len(traced) == 1  # only the record whose legacy key did not match is traced again
    assert [r["key"] for r in again.per_fact] == [r["key"] for r in records]
    assert np.allclose(again.effects["hidden"], fresh.effects["hidden"], equal_nan=True)
    assert again.per_fact[0]["classes"] == records[0]["classes"]  # carried over as stored


def test_remembered_weight_digest_follows_every_write_to_the_weights():
    """`digests.weight_digest` hashes once while the weights are untouched, and hashes again
    after an in-place write (under no_grad), an optimiser step, a replaced parameter, and while
    an edit is applied (after it, see the next test)."""
    import torch

    from loudfacts import digests
    from loudfacts.editing import EditRequest, get_editor
    from loudfacts.models import tiny_model

    m = tiny_model("llama")
    calls = []
    real = type(m).weight_digest
    m.weight_digest = lambda: calls.append(1) or real(m)  # count the hashes
    d0 = digests.weight_digest(m)
    assert d0 == real(m) and digests.weights_fingerprint(m) == d0[:16]
    assert digests.weight_digest(m) == d0 and len(calls) == 1  # remembered
    w = m.hf.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w[0, 0] += 1.0
    d1 = digests.weight_digest(m)
    assert d1 != d0 and d1 == real(m) and len(calls) == 2
    with torch.no_grad():
        w.copy_(saved)
    assert digests.weight_digest(m) == d0 and len(calls) == 3
    opt = torch.optim.SGD([w], lr=0.1)
    w.grad = torch.ones_like(w)
    opt.step()
    assert digests.weight_digest(m) == real(m) != d0
    with torch.no_grad():
        w.copy_(saved)
    layer = m.hf.model.layers[1].mlp.up_proj
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 2)  # a new object
    assert digests.weight_digest(m) == real(m) != d0
    layer.weight = torch.nn.Parameter(layer.weight.detach() / 2)
    assert digests.weight_digest(m) == d0
    ed = get_editor("ft", m, steps=2)
    edit = ed.edit(EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"))
    with edit.applied():
        assert digests.weight_digest(m) == real(m) != d0
    assert digests.weight_digest(m) == d0


def test_an_edit_restored_bit_for_bit_keeps_the_remembered_digest():
    """A weight edit writes its saved bytes back on exit, so the digest remembered before it
    applied holds again without hashing: for one edit, for nested ones, and not when anything
    else was written meanwhile or nothing was remembered before."""
    import torch

    from loudfacts import digests
    from loudfacts.editing import EditRequest, get_editor
    from loudfacts.models import tiny_model

    m = tiny_model("llama")
    calls = []
    real = type(m).weight_digest
    m.weight_digest = lambda: calls.append(1) or real(m)
    ed = get_editor("ft", m, steps=2)
    a = ed.edit(EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"))
    b = ed.edit(EditRequest("{} plays the", "Miles Davis", "piano", "trumpet"))
    d0 = digests.weight_digest(m)
    n = len(calls)
    with a.applied():
        assert digests.weight_digest(m) == real(m) != d0
    assert digests.weight_digest(m) == d0 == real(m)
    assert len(calls) == n + 1  # the hash inside only (`real` is not counted)
    n = len(calls)
    with a.applied():
        d_a = digests.weight_digest(m)
        with b.applied():
            assert digests.weight_digest(m) not in (d0, d_a)
        assert digests.weight_digest(m) == d_a
    assert digests.weight_digest(m) == d0
    assert len(calls) == n + 2  # one hash per new state, none after either restore
    other = m.hf.model.layers[1].mlp.up_proj.weight
    kept = other.detach().clone()
    with a.applied():
        with torch.no_grad():
            other[0, 0] += 1.0  # written while the edit is applied: not carried over
    n = len(calls)
    assert digests.weight_digest(m) == real(m) != d0 and len(calls) == n + 1
    with torch.no_grad():
        other.copy_(kept)
    n = len(calls)
    with a.applied():  # nothing remembered for the weights it was applied to
        pass
    assert digests.weight_digest(m) == d0 and len(calls) == n + 1


def test_weight_digests_can_be_hashed_on_every_call():
    from loudfacts import digests
    from loudfacts.models import tiny_model

    m = tiny_model("llama")
    calls = []
    real = type(m).weight_digest
    m.weight_digest = lambda: calls.append(1) or real(m)
    with digests.remembering_weight_digests(False):
        digests.weight_digest(m)
        digests.weight_digest(m)
    assert len(calls) == 2
    digests.weight_digest(m)
    digests.weight_digest(m)
    assert len(calls) == 3
