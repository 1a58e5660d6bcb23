"""FT and FT+L editors on tiny random models, and the fluency measures they are judged by."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loudfacts.editing import EditError, EditRequest, finetune, get_editor
from loudfacts import bricking
from loudfacts.fluency import ngram_entropy, ngram_entropy_of_text, perplexity

REQ = EditRequest(
    prompt="{} is located in the city of", subject="The Louvre", target_new="Rome",
    target_true="Paris",
)


def _params(model) -> dict[str, torch.Tensor]:
    """Every parameter by its HF path (the bridge's `_original_component` segments removed)."""
    out = {}
    for n, p in model.hf.named_parameters():
        out[n.replace("._original_component", "").replace("_original_component.", "")] = (
            p.detach().clone()
        )
    return out


def _nll(model, req=REQ) -> float:
    from loudfacts.scoring import target_nll

    return float(target_nll(model, [req.text], [req.target_new])[0])


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_editors_registered():
    from loudfacts.editing.base import available_editors

    assert {"ft", "ft-l"} <= set(available_editors())


@pytest.mark.parametrize("module", ["mlp_out", "mlp"])
def test_ft_l_eps_bound_holds_for_every_weight(tiny, module):
    eps = 1e-3
    # A large learning rate makes the bound bind: without projection steps would exceed eps.
    edit = get_editor("ft-l", tiny, layer=1, eps=eps, lr=0.05, steps=5, module=module,
                      stop_prob=1.0).edit(REQ)
    originals = _params(tiny)
    bound_hit = 0
    for path, w in edit.new_weights.items():
        w0 = originals[f"{path}.weight"]
        delta = (w.double() - w0.double()).abs()
        assert float(delta.max()) <= eps, path
        bound_hit += int((delta == eps).sum()) + int((delta > 0.999 * eps).sum())
    assert bound_hit > 0, "the constraint never became active; the test would not catch a bug"
    assert edit.info["max_abs_delta"] <= eps


def test_ft_unconstrained_moves_beyond_eps(tiny_llama):
    edit = get_editor("ft", tiny_llama, layer=1, lr=0.05, steps=5, stop_prob=1.0).edit(REQ)
    assert edit.info["max_abs_delta"] > 1e-3


def test_only_the_chosen_layer_changes(tiny):
    layer = 0
    edit = get_editor("ft", tiny, layer=layer, lr=1e-2, steps=5, stop_prob=1.0).edit(REQ)
    assert list(edit.new_weights) == [tiny.arch.mlp_out.format(layer)]
    before = _params(tiny)
    with edit.applied():
        after = _params(tiny)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == [f"{tiny.arch.mlp_out.format(layer)}.weight"]


def test_whole_mlp_option_trains_only_that_layers_mlp(tiny_llama):
    edit = get_editor("ft", tiny_llama, layer=1, module="mlp", lr=1e-2, steps=3,
                      stop_prob=1.0).edit(REQ)
    root = tiny_llama.arch.mlp.format(1)
    assert len(edit.new_weights) == 3 and all(p.startswith(root + ".") for p in edit.new_weights)


@pytest.mark.parametrize("name", ["ft", "ft-l"])
def test_model_unchanged_after_edit_and_restored_bit_exactly(tiny, name):
    d0 = tiny.weight_digest()
    edit = get_editor(name, tiny, layer=1, lr=1e-2, steps=4, stop_prob=1.0).edit(REQ)
    assert tiny.weight_digest() == d0, "edit() must not leave the model changed"
    assert not any(p.requires_grad for p in tiny.hf.parameters()), "requires_grad not restored"
    nll0 = _nll(tiny)
    with edit.applied():
        assert tiny.weight_digest() != d0
        assert _nll(tiny) < nll0
    assert tiny.weight_digest() == d0
    with pytest.raises(RuntimeError, match="boom"), edit.applied():
        raise RuntimeError("boom")
    assert tiny.weight_digest() == d0


def test_ft_raises_target_probability(tiny_llama):
    edit = get_editor("ft", tiny_llama, layer=1, lr=1e-2, steps=20, stop_prob=0.5).edit(REQ)
    info = edit.info
    assert info["loss_final"] < info["loss_first"]
    with edit.applied():
        assert math.isclose(_nll(tiny_llama), info["loss_final"], rel_tol=1e-4, abs_tol=1e-5)


def test_stop_prob_stops_early(tiny_llama):
    # A random tiny model moves slowly; a threshold a little above the start is reachable.
    threshold = 1.05 * math.exp(-_nll(tiny_llama))
    edit = get_editor("ft", tiny_llama, layer=1, lr=5e-2, steps=200, stop_prob=threshold).edit(REQ)
    assert edit.info["stopped_by"] == "stop_prob"
    assert 0 < edit.info["steps_run"] < 200
    assert edit.info["p_new_final"] >= threshold


def test_edit_is_deterministic(tiny_llama):
    e1 = get_editor("ft-l", tiny_llama, layer=0, lr=1e-2, eps=1e-2, steps=3).edit(REQ)
    e2 = get_editor("ft-l", tiny_llama, layer=0, lr=1e-2, eps=1e-2, steps=3).edit(REQ)
    for p in e1.new_weights:
        assert torch.equal(e1.new_weights[p], e2.new_weights[p])


class _SubjectDroppingRequest(EditRequest):
    """A request whose filled text leaves the subject out (as a broken template would)."""

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", "the museum")


@pytest.mark.parametrize("name", ["ft", "ft-l"])
def test_bad_request_raises_and_leaves_model_unchanged(tiny_llama, name):
    d0 = tiny_llama.weight_digest()
    editor = get_editor(name, tiny_llama)
    with pytest.raises(EditError, match="not found"):
        editor.edit(_SubjectDroppingRequest("{} is located in the city of", "The Louvre", "Rome"))
    with pytest.raises(EditError, match="expected an EditRequest"):
        editor.edit("The Louvre -> Rome")
    with pytest.raises(EditError, match="target_new"):
        EditRequest(prompt="{} is in", subject="The Louvre", target_new="  ")
    assert tiny_llama.weight_digest() == d0


def test_failure_during_training_restores_model(tiny_llama, monkeypatch):
    d0 = tiny_llama.weight_digest()
    calls = {"n": 0}
    real = finetune._target_nll

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # after two optimiser steps have changed the live weight
            raise RuntimeError("simulated failure")
        return real(*a, **k)

    monkeypatch.setattr(finetune, "_target_nll", flaky)
    with pytest.raises(RuntimeError, match="simulated failure"):
        get_editor("ft", tiny_llama, layer=1, lr=1e-2, steps=5, stop_prob=1.0).edit(REQ)
    assert tiny_llama.weight_digest() == d0
    assert not any(p.requires_grad for p in tiny_llama.hf.parameters())


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"layer": 99}, "layer"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"module": "attn"}, "module"),
        ({"stop_prob": 1.5}, "stop_prob"),
        ({"learning_rate": 0.1}, "unknown"),
        ({"layer": True}, r"ft: hyper-parameter layer=True"),  # was an AttributeError
        ({"layer": 1.0}, r"ft: hyper-parameter layer=1\.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"eps": float("inf")}, "eps=inf"),
    ],
)
def test_bad_hparams_raise(tiny_llama, hp, match):
    with pytest.raises(ValueError, match=match):
        get_editor("ft", tiny_llama, **hp)


def test_ft_l_requires_eps(tiny_llama):
    with pytest.raises(ValueError, match="eps"):
        get_editor("ft-l", tiny_llama, eps=None)
    with pytest.raises(ValueError, match="eps"):
        get_editor("ft-l", tiny_llama, eps=0.0)


def test_hparams_json_sections(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"ft": {"layer": 3, "lr": 0.1}, "ft-l": {"eps": 0.01},
                                "evidence": {"x": 1}}))
    from loudfacts.editing import base

    monkeypatch.setattr(base, "hparams_path", lambda method, name: path)
    assert base.load_hparams("ft", "m", section="ft") == {"layer": 3, "lr": 0.1}
    assert base.load_hparams("ft", "m", section="ft-l") == {"eps": 0.01}
    path.write_text(json.dumps({"layer": 2, "evidence": {}}))
    assert base.load_hparams("ft", "m", section="ft") == {"layer": 2}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        base.load_hparams("ft", "m", section="ft")


def test_shipped_hparams_files_are_valid():
    from loudfacts.paths import repo_path

    files = sorted(repo_path("hparams", "ft").glob("*.json"))
    assert files, "hparams/ft/*.json missing"
    for f in files:
        data = json.loads(f.read_text())
        assert {"ft", "ft-l", "evidence"} <= set(data), f
        assert data["ft-l"]["eps"] > 0
        assert set(data["ft"]) | set(data["ft-l"]) <= set(finetune._FineTuneEditor.defaults), f


# -- fluency -----------------------------------------------------------------------------------
def test_ngram_entropy_values():
    assert ngram_entropy("Rome Rome Rome Rome Rome Rome") == 0.0
    # 4 distinct bigrams and 3 distinct trigrams, all once: (2/3*2 + 4/3*log2(3)) / 2
    expected = (2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2
    assert math.isclose(ngram_entropy_of_text("a b c d e"), expected)
    assert math.isclose(ngram_entropy(["a b c d e", "x x x x"]), expected / 2)
    assert ngram_entropy("one") == 0.0
    with pytest.raises(ValueError):
        ngram_entropy([])
    with pytest.raises(ValueError):
        ngram_entropy("a b", ns=(2, 3), weights=(1.0,))


def test_perplexity(tiny_llama):
    text = "The Louvre is located in the city of Paris. The Colosseum is located in Rome."
    ppl = perplexity(tiny_llama, text, max_tokens=64)
    assert 1.0 <= ppl < 10 * tiny_llama.d_vocab
    # Windows: scoring in two windows differs only by the unpredicted first tokens.
    assert perplexity(tiny_llama, text, max_tokens=64, window=8) > 1.0
    with pytest.raises(ValueError):
        perplexity(tiny_llama, "", max_tokens=64)


# -- notebook helpers ----------------------------------------------------------------------------
def test_bricking_table_and_cache(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    eds = {"ft-l": get_editor("ft-l", tiny_llama, layer=1, lr=1e-2, eps=1e-2, steps=2)}
    args = (tiny_llama, eds, REQ, ["Rome", "Berlin"], ["The Louvre is"], "The Louvre is in Paris.")
    d0 = tiny_llama.weight_digest()
    df = bricking.bricking_table(*args, max_new_tokens=4, max_tokens=16)
    assert tiny_llama.weight_digest() == d0
    assert list(zip(df.editor, df.target)) == [("unedited", ""), ("ft-l", "Rome"), ("ft-l", "Berlin")]
    assert (df["ppl"] >= 1).all() and (df["ge"] >= 0).all()
    cached = list((tmp_path / "bricking").glob("*.csv"))
    assert len(cached) == 1
    again = bricking.bricking_table(*args, max_new_tokens=4, max_tokens=16)
    assert again[["ge", "ppl"]].round(6).equals(df[["ge", "ppl"]].round(6))
    cached[0].write_text("not,a\ncsv,file,at all\n")  # corrupt -> recomputed
    third = bricking.bricking_table(*args, max_new_tokens=4, max_tokens=16)
    assert len(third) == 3
    with pytest.raises(ValueError, match="true object"):
        bricking.bricking_table(tiny_llama, eds, REQ, ["Paris"], ["x"], "The Louvre is in Paris.")


def test_bricking_table_cache_keeps_dtypes(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    eds = {"ft": get_editor("ft", tiny_llama, layer=1, lr=1e-2, steps=1)}
    args = (tiny_llama, eds, REQ, ["Rome"], ["The Louvre is"], "The Louvre is in Paris.")
    fresh = bricking.bricking_table(*args, max_new_tokens=3, max_tokens=16)
    cached = bricking.bricking_table(*args, max_new_tokens=3, max_tokens=16)
    assert cached["p_new"].dtype.kind == "f" and math.isnan(cached["p_new"].iloc[0])
    assert cached["target"].tolist() == fresh["target"].tolist() == ["", "Rome"]
