"""Hostile inputs to the editing and model-loading entry points (issue 15): each bad input
fails with a clear error type and a message that names it; stacked edits give the right
weights. Tiny random models and fake cache folders; the whole sweep takes seconds."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from loudfacts.editing import (
    EditError,
    EditRequest,
    HookEdit,
    WeightEdit,
    compose,
    get_editor,
    validate_request,
)
from loudfacts.editing.base import MAX_TARGET_TOKENS

NAN, INF = float("nan"), float("inf")
OK = {"prompt": "{} is located in the city of", "subject": "The Louvre", "target_new": "Rome",
      "target_true": "Paris"}
REQ = EditRequest(**OK)


# -- EditRequest fields ---------------------------------------------------------------------------
REQUEST_CASES = [
    ("target_true-int", {"target_true": 5}, "target_true must be a str.*int: 5"),
    ("target_true-blank", {"target_true": "  "}, "target_true '  ' is empty"),
    ("target_true-same", {"target_true": " Rome"}, "equals target_true"),
    ("target_new-list", {"target_new": ["Rome"]}, r"target_new must be a str.*\['Rome'\]"),
    ("target_new-none", {"target_new": None}, "target_new must be a str.*None"),
    ("target_new-empty", {"target_new": ""}, "target_new '' is empty"),
    ("subject-int", {"subject": 3}, "subject must be a str.*int: 3"),
    ("subject-blank", {"subject": " "}, "subject ' ' is empty"),
    ("prompt-bytes", {"prompt": b"{} is in"}, "prompt must be a str.*bytes"),
    ("prompt-no-slot", {"prompt": "The Louvre is in"}, "'The Louvre is in' must contain exactly one"),
    ("prompt-two-slots", {"prompt": "{} and {} are in"}, "'{} and {} are in' must contain exactly one"),
    ("case_id-bool", {"case_id": True}, "case_id must be an int, a str or None.*True"),
    ("case_id-float", {"case_id": 1.5}, "case_id .*1.5"),
]


@pytest.mark.parametrize("fields, match", [c[1:] for c in REQUEST_CASES],
                         ids=[c[0] for c in REQUEST_CASES])
def test_bad_request_fields(fields, match):
    with pytest.raises(EditError, match=match):
        EditRequest(**{**OK, **fields})


# -- requests that do not fit the model -------------------------------------------------------------
def _long_prompt(model):
    return "word " * (model.n_ctx + 10) + "{} is located in the city of"


FIT_CASES = [
    ("prompt-too-long", lambda m: {"prompt": _long_prompt(m)},
     r"\(\d+ tokens\) plus target_new \(5 tokens\) is \d+ tokens, longer than tiny-llama's context "
     r"window of 128 tokens"),
    ("target-too-long", lambda m: {"target_new": "Rome " * 200},
     rf"target_new 'Rome Rome.* is \d+ tokens long; at most MAX_TARGET_TOKENS={MAX_TARGET_TOKENS}"),
    ("target-just-too-long",  # " France" is one token of the tiny vocabulary
     lambda m: {"target_new": " ".join(["France"] * (MAX_TARGET_TOKENS + 1))},
     rf"is {MAX_TARGET_TOKENS + 1} tokens long"),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in FIT_CASES], ids=[c[0] for c in FIT_CASES])
def test_requests_that_do_not_fit_fail_before_editing(tiny_llama, make, match):
    req = EditRequest(**{**OK, **make(tiny_llama)})
    digest = tiny_llama.weight_digest()
    with pytest.raises(EditError, match=match):
        validate_request(tiny_llama, req)
    with pytest.raises(EditError, match=match):  # the editor refuses it before training
        get_editor("ft", tiny_llama, layer=1, steps=1).edit(req)
    assert tiny_llama.weight_digest() == digest


def test_a_target_of_max_length_is_accepted(tiny_llama):
    req = EditRequest(**{**OK, "target_new": " ".join(["France"] * MAX_TARGET_TOKENS)})
    assert len(validate_request(tiny_llama, req)) == MAX_TARGET_TOKENS


# -- hyper-parameters ---------------------------------------------------------------------------------
L0 = {"layers": [0]}  # the patching defaults' layer 6 does not exist in a 2-layer model
HPARAM_CASES = [
    ("rome-layer-float", "rome", {"layer": 5.7}, r"rome: hyper-parameter layer=5\.7 .*an int"),
    ("rome-layer-str", "rome", {"layer": "1"}, r"rome: hyper-parameter layer='1'"),
    ("rome-lr-nan", "rome", {"layer": 0, "v_lr": NAN}, "rome: hyper-parameter v_lr=nan"),
    ("rome-mom2-int", "rome", {"layer": 0, "mom2_adjustment": 1}, "mom2_adjustment=1 .*bool"),
    ("rome-unknown", "rome", {"layr": 1}, r"unknown hyper-parameter\(s\) \['layr'\]"),
    ("ft-layer-bool", "ft", {"layer": True}, r"ft: hyper-parameter layer=True .*an int"),
    ("ft-steps-float", "ft", {"steps": 2.0}, "ft: hyper-parameter steps=2.0"),
    ("ft-lr-nan", "ft", {"lr": NAN}, "ft: hyper-parameter lr=nan"),
    ("ft-lr-inf", "ft", {"lr": INF}, "ft: lr=inf must be a finite number"),
    ("ft-lr-str", "ft", {"lr": "1e-3"}, "ft: hyper-parameter lr='1e-3'"),
    ("ft-wd-neg", "ft", {"weight_decay": -1.0}, "ft: weight_decay=-1.0"),
    ("ft-eps-inf", "ft", {"eps": INF}, "ft: eps=inf"),
    ("ft-l-eps-str", "ft-l", {"eps": "0.01"}, "ft-l: hyper-parameter eps='0.01'"),
    ("ft-l-eps-none", "ft-l", {"eps": None}, "ft-l: hyper-parameter eps=None"),
    ("ft-module", "ft", {"module": "attn"}, "module='attn'"),
    ("ft-unknown", "ft", {"learning_rate": 0.1}, r"unknown hyper-parameter\(s\) \['learning_rate'\]"),
    ("donor-min-p-nan", "patch-donor", {**L0, "min_donor_p": NAN}, "min_donor_p=nan"),
    ("donor-min-p-range", "patch-donor", {**L0, "min_donor_p": 1.5},
     r"patch-donor: min_donor_p=1\.5 must be a finite number in \[0\.0, 1\.0\]"),
    ("donor-min-p-inf", "patch-donor", {**L0, "min_donor_p": -INF}, "min_donor_p=-inf"),
    ("donor-candidates-0", "patch-donor", {**L0, "max_candidates": 0}, "max_candidates=0"),
    ("donor-candidates-float", "patch-donor", {**L0, "max_candidates": 2.5}, "max_candidates=2.5"),
    ("donor-layer-float", "patch-donor", {"layers": [0.5]}, r"layers=\[0\.5\]"),
    ("donor-layer-range", "patch-donor", {"layers": [0, 99]}, r"\[0, 99\] out of range"),
    ("donor-layers-empty", "patch-donor", {"layers": []}, "layers is empty"),
    ("donor-layers-default", "patch-donor", {}, r"\[6\] out of range for tiny-llama"),
    ("donor-site", "patch-donor", {**L0, "site": "nope"}, "site='nope' unknown"),
    ("donor-positions", "patch-donor", {**L0, "positions": "first"}, "positions='first'"),
    ("donor-donor-empty", "patch-donor", {**L0, "donor": " "}, "donor=' '"),
    ("context-repeats-0", "patch-context", {**L0, "repeats": 0}, "repeats=0"),
    ("context-repeats-nan", "patch-context", {**L0, "repeats": NAN}, "repeats=nan"),
    ("context-template", "patch-context", {**L0, "context_template": "{statement}"},
     "context_template='{statement}' has no {subject}"),
    ("context-template-key", "patch-context", {**L0, "context_template": "{fact} {subject}"},
     "context_template='{fact} {subject}'"),
    ("delta-scale-nan", "hook-delta", {"scale": NAN}, "hook-delta: hyper-parameter scale=nan"),
    ("delta-scale-inf", "hook-delta", {"scale": INF}, "hook-delta: scale=inf must be a finite"),
    ("delta-rome-list", "hook-delta", {"rome": [1]}, "hook-delta: hyper-parameter rome=.*dict"),
]


@pytest.mark.parametrize("editor, hp, match", [c[1:] for c in HPARAM_CASES],
                         ids=[c[0] for c in HPARAM_CASES])
def test_bad_hparams_fail_naming_editor_key_and_value(tiny_llama, editor, hp, match):
    with pytest.raises(ValueError, match=match):
        get_editor(editor, tiny_llama, **hp)


def test_good_hparams_of_every_kind_are_accepted(tiny_llama):
    """An int where the default is a float, a numpy int for an int, one layer for a list."""
    import numpy as np

    assert get_editor("ft", tiny_llama, lr=1, layer=np.int64(1)).hparams["lr"] == 1
    assert get_editor("patch-context", tiny_llama, layers=0).hparams["layers"] == 0
    assert get_editor("patch-donor", tiny_llama, layers=(0, 1), min_donor_p=0).hparams


FILE_CASES = [
    ("type", {"ft": {"layer": 1.5}}, r"layer=1\.5 \(from .*bad\.json\)"),
    ("unknown", {"ft": {"lerning_rate": 1}, "evidence": "x"},
     r"bad\.json: unknown hyper-parameter\(s\) \['lerning_rate'\]"),
    ("str", {"ft": {"lr": "0.1"}}, r"lr='0.1' \(from .*bad\.json\) has type str"),
    ("nan", {"ft": {"lr": NAN}}, r"lr=nan \(from .*bad\.json\) is NaN"),
    ("bool", {"ft": {"steps": True}}, r"steps=True \(from .*bad\.json\)"),
]


@pytest.mark.parametrize("doc, match", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_hparams_files_name_the_file(tiny_llama, tmp_path, monkeypatch, doc, match):
    from loudfacts.editing import base

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(base, "hparams_path", lambda method, name: path)
    with pytest.raises(ValueError, match=match):
        get_editor("ft", tiny_llama)


def test_documentation_keys_in_hparams_files_are_ignored(tiny_llama, tmp_path, monkeypatch):
    from loudfacts.editing import base

    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"ft": {"layer": 1}, "evidence": {"a": 1}, "notes": "n",
                                "source": "s"}))
    monkeypatch.setattr(base, "hparams_path", lambda method, name: path)
    assert get_editor("ft", tiny_llama).hparams["layer"] == 1


def test_shipped_hparams_files_pass_the_type_checks():
    """Every hparams/<method>/*.json against its editors' defaults (no model needed)."""
    from loudfacts.editing.base import (
        _NOT_HPARAMS,
        _REGISTRY,
        available_editors,
        check_hparam_type,
        load_hparams,
    )
    from loudfacts.paths import repo_path

    available_editors()
    checked = 0
    for cls in {c for c in _REGISTRY.values() if c.hparams_dir}:
        for f in sorted(repo_path("hparams", cls.hparams_dir).glob("*.json")):
            hp = load_hparams(cls.hparams_dir, f.stem, section=cls.name)
            assert set(hp) <= set(cls.defaults), (f, sorted(set(hp) - set(cls.defaults)))
            assert not set(hp) & set(_NOT_HPARAMS)
            for k, v in hp.items():
                check_hparam_type(cls.name, k, v, cls.defaults[k], str(f))
                checked += 1
    assert checked > 10


# -- model names --------------------------------------------------------------------------------------
NAME_CASES = [
    ("empty", "", ValueError, "model name ''"),
    ("blank", "  \t", ValueError, r"model name '  \\t'"),
    ("int", 5, TypeError, "model name 5 "),
    ("list", ["gpt2"], TypeError, r"model name \['gpt2'\]"),
    ("bytes", b"gpt2", TypeError, "model name b'gpt2'"),
    ("tiny-bert", "tiny-bert", ValueError, "tiny model family 'bert'"),
]


@pytest.mark.parametrize("name, err, match", [c[1:] for c in NAME_CASES],
                         ids=[c[0] for c in NAME_CASES])
def test_bad_model_names(name, err, match):
    from loudfacts.models import load_model

    with pytest.raises(err, match=match) as e:
        load_model(name)
    if name != "tiny-bert":
        assert "smollm2-135m" in str(e.value) and "tiny-llama" in str(e.value)


# -- corrupted cache folders ----------------------------------------------------------------------------
def _build(calls):
    def build(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text('{"model_type": "llama"}')
        (tmp / "model.safetensors").write_bytes(os.urandom(4096))
        (tmp / "tokenizer.json").write_text('{"version": "1.0"}')
    return build


def _same_size_flip(d):
    p = d / "model.safetensors"
    st, data = p.stat(), bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _manifest(d):
    from loudfacts.models import MANIFEST_NAME

    return d / MANIFEST_NAME


def _drop_from_manifest(d, name):
    doc = json.loads(_manifest(d).read_text())
    del doc["files"][name]
    _manifest(d).write_text(json.dumps(doc))


CACHE_CASES = [
    ("same-size-flip", _same_size_flip, r"model\.safetensors is corrupted"),
    ("truncated", lambda d: (d / "model.safetensors").write_bytes(b"\0" * 100),
     r"model\.safetensors has 100 bytes, the manifest says 4096 \(truncated\?\)"),
    ("empty-weights", lambda d: (d / "model.safetensors").write_bytes(b""),
     r"model\.safetensors has 0 bytes"),
    ("no-tokenizer", lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
    ("no-config", lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    ("no-manifest", lambda d: _manifest(d).unlink(), r"loudfacts-manifest\.json is missing"),
    ("garbage-manifest", lambda d: _manifest(d).write_text("{not json"),
     r"loudfacts-manifest\.json is unreadable"),
    ("manifest-list", lambda d: _manifest(d).write_text("[]"), "is unreadable"),
    ("manifest-without-tokenizer", lambda d: _drop_from_manifest(d, "tokenizer.json"),
     r"tokenizer\.json is not listed in .*loudfacts-manifest\.json"),
]


@pytest.mark.parametrize("damage, match", [c[1:] for c in CACHE_CASES],
                         ids=[c[0] for c in CACHE_CASES])
def test_corrupted_cache_is_named_and_rebuilt(tmp_path, damage, match):
    from loudfacts.models import (
        EMBEDDED_CACHE_FILES,
        CacheIntegrityWarning,
        ensure_cache_dir,
        verify_cache_dir,
    )

    target, calls = tmp_path / "m", []
    ensure_cache_dir(target, _build(calls), EMBEDDED_CACHE_FILES)
    damage(target)
    assert verify_cache_dir(target, EMBEDDED_CACHE_FILES) is not None
    with pytest.warns(CacheIntegrityWarning, match=match):
        ensure_cache_dir(target, _build(calls), EMBEDDED_CACHE_FILES)
    assert len(calls) == 2 and verify_cache_dir(target, EMBEDDED_CACHE_FILES) is None


def test_a_build_that_forgets_a_file_fails_naming_it(tmp_path):
    from loudfacts.models import EMBEDDED_CACHE_FILES, ensure_cache_dir

    def bad_build(tmp):
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"x")

    with pytest.raises(RuntimeError, match=r"did not write .*tokenizer\.json"):
        ensure_cache_dir(tmp_path / "m", bad_build, EMBEDDED_CACHE_FILES)
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".tmp-*"))  # no half-built folder left behind


# -- weight edits: bad input and stacking -----------------------------------------------------------------
def _path(m, layer=1):
    return m.arch.mlp_out.format(layer)


def _w(m, layer=1):
    return m.module(_path(m, layer)).weight


WEIGHT_EDIT_CASES = [
    ("shape", lambda m: {"new_weights": {_path(m): torch.zeros(3, 3)}}, r"has shape \(3, 3\)"),
    ("nan", lambda m: {"new_weights": {_path(m): torch.full_like(_w(m), NAN)}}, "non-finite"),
    ("path", lambda m: {"new_weights": {"model.nowhere": torch.zeros(1)}}, "'model.nowhere'"),
    ("not-tensor", lambda m: {"new_weights": {_path(m): [[0.0]]}}, "must be a tensor"),
    ("empty", lambda m: {"new_weights": {}}, "non-empty"),
    ("both", lambda m: {"new_weights": {_path(m): _w(m).detach()},
                        "deltas": {_path(m): torch.zeros_like(_w(m))}}, "exactly one"),
    ("delta-inf", lambda m: {"new_weights": None,
                             "deltas": {_path(m): torch.full_like(_w(m), INF)}}, "non-finite"),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in WEIGHT_EDIT_CASES],
                         ids=[c[0] for c in WEIGHT_EDIT_CASES])
def test_bad_weight_edits(tiny_llama, make, match):
    kw = make(tiny_llama)
    with pytest.raises(EditError, match=match):
        WeightEdit(tiny_llama, kw.pop("new_weights"), REQ, "test", **kw)


def test_tied_weights_are_refused(tiny_llama):
    emb = tiny_llama.module(tiny_llama.arch.embed).weight
    assert tiny_llama.module("lm_head").weight is emb  # tie_word_embeddings
    with pytest.raises(EditError, match="same parameter"):
        WeightEdit(tiny_llama, {tiny_llama.arch.embed: emb.detach(), "lm_head": emb.detach()},
                   REQ, "test")


def test_an_edit_that_overflows_the_dtype_is_not_applied(tiny_llama):
    digest = tiny_llama.weight_digest()
    big = WeightEdit.from_deltas(tiny_llama, {_path(tiny_llama): torch.full_like(
        _w(tiny_llama), 1e39, dtype=torch.float64)}, REQ, "test")
    with pytest.raises(EditError, match="non-finite torch.float32 weights"), big.applied():
        pass
    assert tiny_llama.weight_digest() == digest


def _delta_edit(m, seed, layer=1, scale=1e-2):
    g = torch.Generator().manual_seed(seed)
    d = scale * torch.randn(_w(m, layer).shape, generator=g, dtype=torch.float64)
    return WeightEdit.from_deltas(m, {_path(m, layer): d}, REQ, f"d{seed}"), d


STACK_CASES = ["nested", "compose", "compose-other-layer", "nested-raises", "three-deep",
               "with-hook-edit"]


@pytest.mark.parametrize("case", STACK_CASES)
def test_stacked_edits_keep_every_change(tiny_llama, case):
    m = tiny_llama
    digest = m.weight_digest()
    w0 = {layer: _w(m, layer).detach().clone() for layer in (0, 1)}
    a, da = _delta_edit(m, 1)
    b, db = _delta_edit(m, 2, layer=0 if case == "compose-other-layer" else 1)

    def expect(layer, *ds):
        torch.testing.assert_close(_w(m, layer).detach().double(),
                                   w0[layer].double() + sum(ds), rtol=0, atol=1e-6)

    if case == "nested":
        with a.applied(), b.applied():
            expect(1, da, db)
    elif case == "compose":
        with compose([a, b]).applied():
            expect(1, da, db)
    elif case == "compose-other-layer":
        with compose([a, b]).applied():
            expect(1, da)
            expect(0, db)
    elif case == "nested-raises":
        with pytest.raises(KeyError), a.applied():
            with b.applied():
                expect(1, da, db)
                raise KeyError("inner")
    elif case == "three-deep":
        c, dc = _delta_edit(m, 3)
        with a.applied(), compose([b, c]).applied():
            expect(1, da, db, dc)
        with pytest.raises(RuntimeError, match="does not nest"), a.applied(), a.applied():
            pass
    elif case == "with-hook-edit":
        ids = m.to_tensor(REQ.text)
        hook = HookEdit(m, [("blocks.1.hook_mlp_out", lambda act, hook: act + 1.0)], REQ, "h")
        with torch.no_grad():
            with a.applied():
                ref = m.hf(ids).logits + 0
            with compose([a, hook]).applied():
                expect(1, da)
                both = m.hf(ids).logits
        assert not torch.allclose(ref, both) and math.isfinite(float(both.sum()))
    assert m.weight_digest() == digest
    for layer in (0, 1):
        assert torch.equal(_w(m, layer), w0[layer])


# -- patching on a model whose weights went bad ------------------------------------------------------------
@pytest.mark.parametrize("editor", ["patch-donor", "patch-context"])
def test_patching_refuses_nan_activations(tiny_llama, editor):
    hp = {"layers": [1], "donor": "The Colosseum", "positions": "last"}
    if editor == "patch-context":
        hp = {"layers": [1]}
    ed = get_editor(editor, tiny_llama, **hp)
    w = _w(tiny_llama, 0)
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.fill_(NAN)
        with pytest.raises(EditError, match=r"blocks\.1\.hook_resid_post.*not finite"):
            ed.edit(REQ)
    finally:
        with torch.no_grad():
            w.copy_(saved)
