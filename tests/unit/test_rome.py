"""ROME on tiny random models: the update's defining equation, restore, bad input, GPT-2."""

import pytest
import torch

from loudfacts.editing import EditError, EditRequest, get_editor
from loudfacts.editing.rome import RomeEditor

# Layer 0 of 2: an edit at the last layer could not reach later positions (no attention above).
FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 5,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3}


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))


REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")


def _mlp_out(model, layer, k):
    mod = model.mlp_out_module(layer)
    out = k @ mod.weight if model.arch.mlp_out_transposed else mod.weight @ k
    return out + mod.bias if getattr(mod, "bias", None) is not None else out


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize(("editor_name", "key"), [("rome", "k_bare"), ("r-rome", "k_star")])
def test_updated_weight_maps_its_key_to_v_star(fixture, editor_name, key, request):
    """ROME's update maps the bare prompt's key to v* = target_init + δ; r-ROME's maps k*."""
    model = request.getfixturevalue(fixture)
    editor = get_editor(editor_name, model, **FAST)
    assert isinstance(editor, RomeEditor)
    comps = editor.components(REQ)
    assert comps["k_star"].shape == comps["k_bare"].shape == (model.d_mlp,)
    assert comps["v_star"].shape == comps["delta"].shape == (model.d_model,)
    torch.testing.assert_close(comps["v_star"] - comps["target_init"], comps["delta"])
    torch.testing.assert_close(_mlp_out(model, 0, comps["k_star"]), comps["w_k"], rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(_mlp_out(model, 0, comps["k_bare"]), comps["target_init"],
                               rtol=1e-4, atol=1e-5)
    assert comps["delta"].norm() > 0
    edit = editor.edit(REQ)
    with edit.applied():
        got = _mlp_out(model, 0, comps[key])
    torch.testing.assert_close(got, comps["v_star"], rtol=1e-3, atol=1e-4)
    assert edit.info["timings"].keys() >= {"k", "v", "update"}


def test_update_leaves_other_keys_alone_in_the_c_metric(tiny_llama):
    """ΔW = δ uᵀ/(uᵀk*) with u = C⁻¹k*: ΔW k* = δ, and ΔW (C x) = 0 for every x ⟂ k*."""
    editor = get_editor("rome", tiny_llama, **FAST)
    k = torch.randn(tiny_llama.d_mlp)
    delta = torch.randn(tiny_llama.d_model)
    dw = editor.rank_one_update(k, delta)
    torch.testing.assert_close(dw @ k.double(), delta.double())
    c = editor.second_moment()
    c = c + FAST["mom2_ridge"] * torch.trace(c) / c.shape[0] * torch.eye(c.shape[0],
                                                                          dtype=c.dtype)
    x = torch.randn(tiny_llama.d_mlp, dtype=torch.float64)
    x = x - (x @ k.double()) / (k.double() @ k.double()) * k.double()  # x ⟂ k*
    assert (dw @ (c @ x)).abs().max() < 1e-6 * dw.abs().max() * (c @ x).abs().max() * 10


def test_restore_is_bit_exact_also_on_error(tiny_llama):
    digest = tiny_llama.weight_digest()
    edit = get_editor("rome", tiny_llama, **FAST).edit(REQ)
    assert tiny_llama.weight_digest() == digest  # computing an edit changes nothing
    with edit.applied():
        assert tiny_llama.weight_digest() != digest
    assert tiny_llama.weight_digest() == digest
    with pytest.raises(RuntimeError, match="boom"), edit.applied():
        raise RuntimeError("boom")
    assert tiny_llama.weight_digest() == digest


def test_bad_input_raises_and_leaves_model_unedited(tiny_llama, monkeypatch):
    digest = tiny_llama.weight_digest()
    editor = get_editor("rome", tiny_llama, **FAST)
    # A filled EditRequest always contains its subject as text; what can fail is finding it
    # among the tokens. Simulate that, and check both entry points refuse.
    monkeypatch.setattr("loudfacts.editing.base.find_subject_spans", lambda m, t, s: [])
    for call in (editor.edit, editor.components):
        with pytest.raises(EditError, match="not found"):
            call(REQ)
    monkeypatch.undo()
    monkeypatch.setattr("loudfacts.editing.base.target_ids",
                        lambda m, t: (_ for _ in ()).throw(ValueError("tokenises to nothing")))
    with pytest.raises(EditError, match="tokenises to nothing"):
        editor.edit(REQ)
    monkeypatch.undo()
    with pytest.raises(EditError, match="empty"):
        EditRequest("{} is in", "The Louvre", "   ")
    # A non-finite loss: an infinite KL weight times a zero KL is NaN at the first step.
    bad = get_editor("rome", tiny_llama, **{**FAST, "kl_factor": float("inf")})
    with pytest.raises(EditError, match="non-finite|not finite"):
        bad.edit(REQ)
    assert tiny_llama.weight_digest() == digest


def test_unknown_hparam_and_bad_layer(tiny_llama):
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        get_editor("rome", tiny_llama, layr=1)
    with pytest.raises(ValueError, match="out of range"):
        get_editor("rome", tiny_llama, layer=9)


def test_without_covariance_adjustment_direction_is_k_star(tiny_llama):
    editor = get_editor("rome", tiny_llama, **{**FAST, "mom2_adjustment": False})
    k = torch.randn(tiny_llama.d_mlp)
    dw = editor.rank_one_update(k, torch.ones(tiny_llama.d_model))
    torch.testing.assert_close(dw[0], k.double() / (k.double() @ k.double()))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_suffix_only_steps_give_the_same_delta(fixture, request):
    """v* steps that rerun only the subject's last token onwards (stored keys/values for the
    rest) optimise the same δ as steps over every position."""
    from loudfacts.editing.rome import clear_components_memo
    from loudfacts.forward import supports_kv_prefix

    model = request.getfixturevalue(fixture)
    assert supports_kv_prefix(model)
    clear_components_memo()
    fast = get_editor("rome", model, **FAST).components(REQ)
    full = get_editor("rome", model, **FAST, suffix_only=False).components(REQ)
    assert [h["nll"] for h in fast["v_history"]] == pytest.approx(
        [h["nll"] for h in full["v_history"]], rel=1e-4)
    torch.testing.assert_close(fast["delta"], full["delta"], rtol=1e-4, atol=1e-5)


def test_components_are_reused_only_for_the_same_weights_and_hooks(tiny_llama):
    from loudfacts.editing.rome import clear_components_memo

    clear_components_memo()
    editor = get_editor("rome", tiny_llama, **FAST)
    first = editor.components(REQ)
    again = editor.components(REQ)
    assert not first["reused"] and again["reused"]
    torch.testing.assert_close(first["delta"], again["delta"])
    other = EditRequest(REQ.prompt, REQ.subject, "Berlin", "Paris")
    assert not editor.components(other)["reused"]
    # with a different model (another edit in place) the remembered result is not used
    with editor.edit(other).applied():
        assert not editor.components(REQ)["reused"]
    # nor with a hook in place
    with tiny_llama.bridge.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: a * 1.0)]):
        assert not editor.components(REQ)["reused"]
    assert editor.components(REQ)["reused"]


def test_mixed_precision_v_star_is_close_and_leaves_the_model_as_it_was(tiny_llama):
    """bfloat16 autocast for v*: δ close to the float32 one (cosine), the weights untouched and
    every parameter's requires_grad flag restored -- also when the loss turns non-finite."""
    from loudfacts.editing.rome import clear_components_memo

    clear_components_memo()
    digest = tiny_llama.weight_digest()
    flags = [p.requires_grad for p in tiny_llama.hf.parameters()]
    fp32 = get_editor("rome", tiny_llama, **FAST).components(REQ)
    bf16 = get_editor("rome", tiny_llama, **FAST, v_autocast="bfloat16").components(REQ)
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == flags
    assert tiny_llama.weight_digest() == digest
    assert not torch.equal(fp32["delta"], bf16["delta"])  # it did run in another precision
    cos = torch.nn.functional.cosine_similarity(fp32["delta"], bf16["delta"], dim=0)
    assert cos > 0.98, f"bf16 δ is not close to the fp32 one (cos {float(cos):.3f})"
    torch.testing.assert_close(fp32["k_star"], bf16["k_star"])  # k* is never mixed precision
    bad = get_editor("rome", tiny_llama, **{**FAST, "kl_factor": float("inf"),
                                             "v_autocast": "bfloat16"})
    with pytest.raises(EditError, match="non-finite|not finite"):
        bad.edit(REQ)
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == flags
    assert tiny_llama.weight_digest() == digest
    with pytest.raises(ValueError, match="v_autocast"):
        get_editor("rome", tiny_llama, layer=0, v_autocast="int8")


def test_v_star_can_average_over_fewer_prefixes_than_k_star(tiny_llama):
    """`v_n_prefixes`: v*'s NLL over the bare prompt and an evenly spaced subset of k*'s
    prefixes; k* keeps averaging over all of them."""
    from loudfacts.editing.rome import clear_components_memo

    clear_components_memo()
    hp = {**FAST, "prefix_recipe": [[3, 4]]}
    full = get_editor("rome", tiny_llama, **hp)
    half = get_editor("rome", tiny_llama, **hp, v_n_prefixes=2)
    tpls = full.context_templates()
    assert len(tpls) == 5 and full.v_context_templates() == tpls
    assert half.v_context_templates() == [tpls[0], tpls[1], tpls[3]]
    assert get_editor("rome", tiny_llama, **hp, v_n_prefixes=0).v_context_templates() == ["{}"]
    assert get_editor("rome", tiny_llama, **hp, v_n_prefixes=9).v_context_templates() == tpls
    a, b = full.components(REQ), half.components(REQ)
    assert (a["n_contexts"], a["n_v_contexts"]) == (5, 5)
    assert (b["n_contexts"], b["n_v_contexts"]) == (5, 3)
    torch.testing.assert_close(a["k_star"], b["k_star"])  # k* is the same
    assert a["v_history"] != b["v_history"]  # v* saw other prompts
    edit = half.edit(REQ)
    with edit.applied():  # the update still maps k_bare to v* = target_init + δ
        torch.testing.assert_close(_mlp_out(tiny_llama, 0, b["k_bare"]), b["v_star"],
                                   rtol=1e-3, atol=1e-4)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="v_n_prefixes"):
            get_editor("rome", tiny_llama, **hp, v_n_prefixes=bad)


def test_components_hash_the_weights_once_while_they_are_unchanged(monkeypatch):
    """ROME's components key and its context prefixes take the weight digest remembered by
    `digests.weight_digest`: one full hash while no parameter changes, another after a change,
    none after an edit is undone."""
    from loudfacts.editing.rome import clear_components_memo
    from loudfacts.models import tiny_model

    fresh = tiny_model("llama", seed=11)  # nothing remembered for it yet
    calls = []
    real = type(fresh).weight_digest
    monkeypatch.setattr(type(fresh), "weight_digest",
                        lambda self: calls.append(1) or real(self))
    clear_components_memo()
    editor = get_editor("rome", fresh, **FAST)
    first = editor.components(REQ)
    editor.components(EditRequest(REQ.prompt, REQ.subject, "Berlin", "Paris"))
    assert len(calls) == 1 and not first["reused"]
    with editor.edit(REQ).applied():  # the weights change: hashed again, nothing reused
        assert not editor.components(REQ)["reused"]
        assert len(calls) == 2
    # restored bit for bit: the digest remembered before the edit holds again, no new hash
    # (`digests.restored_weights`)
    assert editor.components(REQ)["reused"] and len(calls) == 2
