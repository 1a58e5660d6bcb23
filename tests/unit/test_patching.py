"""Unit tests for inference-time patching edits (tiny random models, seconds)."""

from __future__ import annotations

import functools

import pytest
import torch

from loudfacts.editing import EditRequest, HookEdit, get_editor
from loudfacts.editing.patching import (
    SubjectLocator,
    add_at_subject_hook,
    build_hooks,
    find_token_occurrences,
    subject_last_token_mask,
    subject_token_patterns,
    subject_variants,
)

REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")


# -- finding the subject on ids -------------------------------------------------------------------
def test_find_token_occurrences_several_and_absent():
    ids = [5, 1, 2, 3, 9, 1, 2, 3, 4]
    assert find_token_occurrences(ids, [[1, 2, 3]]) == [(1, 4), (5, 8)]
    assert find_token_occurrences(ids, [[7, 8]]) == []
    assert find_token_occurrences([], [[1]]) == []
    # a suffix pattern ending on the same token is reported once, with the longest span
    assert find_token_occurrences(ids, [[2, 3], [1, 2, 3]]) == [(1, 4), (5, 8)]


def test_mask_matches_list_version_and_padding():
    ids = torch.tensor([[5, 1, 2, 3, 9, 1, 2, 3, 0], [1, 2, 3, 0, 0, 0, 0, 0, 0]])
    mask = subject_last_token_mask(ids, [[1, 2, 3]])
    assert mask.shape == ids.shape
    assert mask[0].nonzero().flatten().tolist() == [3, 7]
    assert mask[1].nonzero().flatten().tolist() == [2]
    # pattern longer than the input: no match, no error
    assert not subject_last_token_mask(ids[:, :2], [[1, 2, 3]]).any()


@pytest.mark.parametrize("text", [
    "The Louvre is in Paris",          # subject at the start, no leading space
    "I saw The Louvre today",          # with a leading space
    "Paris has The Louvre. The Louvre is big",  # two occurrences
    "Where is the Louvre?",            # variant: lowercase article
])
def test_patterns_find_subject_in_text(tiny_llama, text):
    pats = subject_token_patterns(tiny_llama, "The Louvre")
    ids = tiny_llama.encode(text)
    found = find_token_occurrences(ids, pats)
    n_expected = text.count("The Louvre") + text.count("the Louvre")
    assert len(found) == n_expected
    for a, b in found:  # each span decodes to text ending in "Louvre"
        assert tiny_llama.decode(ids[a:b]).strip().endswith("Louvre")


def test_patterns_absent_and_multitoken(tiny_llama):
    pats = subject_token_patterns(tiny_llama, "Barack Obama")
    assert all(len(p) >= 2 for p in pats)  # multi-token in a 300-token vocabulary
    assert find_token_occurrences(tiny_llama.encode("The Colosseum is in Rome"), pats) == []
    assert len(find_token_occurrences(tiny_llama.encode("Barack Obama met Barack Obama"), pats)) == 2
    with pytest.raises(ValueError, match="empty"):
        subject_token_patterns(tiny_llama, "  ")


def test_subject_variants():
    assert set(subject_variants("The Louvre")) == {"the Louvre", "Louvre"}
    assert subject_variants("Barack Obama") == []


# -- hooks ----------------------------------------------------------------------------------------
def _logits(m, texts):
    """Right-padded batch forward like loudfacts.scoring: (batch, pos, vocab), lengths."""
    enc = [m.encode(t) for t in texts]
    w = max(map(len, enc))
    ids = torch.zeros((len(enc), w), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    with torch.no_grad():
        return m.hf(ids, attention_mask=mask).logits, [len(e) for e in enc]


def _delta_edit(m, delta, layer=0):
    pats = subject_token_patterns(m, REQ.subject, [REQ.text])
    hooks = build_hooks(lambda: SubjectLocator(pats),
                        [(f"blocks.{layer}.hook_mlp_out", add_at_subject_hook, {"delta": delta})])
    return HookEdit(m, hooks, REQ, "test-delta"), hooks


def test_hooks_patch_only_subject_rows_and_restore_exactly(tiny_llama):
    m = tiny_llama
    texts = ["The Louvre is located in the city of", "Italy borders France",
             "Paris has The Louvre and The Louvre"]
    before, lens = _logits(m, texts)
    digest = m.weight_digest()
    edit, hooks = _delta_edit(m, torch.randn(m.d_model) * 5)
    with edit.applied():
        during, _ = _logits(m, texts)
        assert m.weight_digest() == digest
        assert hooks.last_locator.n_patched == 3  # 1 + 0 + 2 occurrences
    after, _ = _logits(m, texts)
    assert m.weight_digest() == digest
    assert torch.equal(before, after)  # hooks removed: bit-identical outputs
    # row without the subject: unchanged over its real tokens
    assert torch.allclose(during[1, : lens[1]], before[1, : lens[1]], atol=1e-6)
    # rows with the subject: changed after it
    assert not torch.allclose(during[0, lens[0] - 1], before[0, lens[0] - 1], atol=1e-4)
    assert not torch.allclose(during[2, lens[2] - 1], before[2, lens[2] - 1], atol=1e-4)
    # positions before the first occurrence are untouched (causality)
    first = find_token_occurrences(m.encode(texts[2]), subject_token_patterns(m, REQ.subject))[0]
    assert torch.allclose(during[2, : first[1] - 1], before[2, : first[1] - 1], atol=1e-6)


def test_hooks_removed_on_exception(tiny_llama):
    m = tiny_llama
    before, _ = _logits(m, [REQ.text])
    edit, _ = _delta_edit(m, torch.ones(m.d_model) * 3)
    with pytest.raises(RuntimeError, match="boom"), edit.applied():
        raise RuntimeError("boom")
    after, _ = _logits(m, [REQ.text])
    assert torch.equal(before, after)


def test_delta_hook_equals_rank_one_weight_edit_at_key(tiny_llama):
    """Adding delta at the key position gives exactly the MLP output of W' = W + delta k*^T/|k*|^2
    there (the weight edit ROME makes when k* is the key of this very prompt)."""
    m, layer = tiny_llama, 1
    ids = m.to_tensor(REQ.text)
    pos = len(m.encode(REQ.text)) - 1 - len(m.encode(" is located in the city of"))
    store = {}

    def save(act, hook, *, key):
        store[key] = act.detach().clone()
        return act

    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"]
    with m.bridge.hooks(fwd_hooks=[(n, functools.partial(save, key=n)) for n in names]):
        m.hf(ids)
    k = store[names[0]][0, pos]
    delta = torch.randn(m.d_model)
    edit, _ = _delta_edit(m, delta, layer)
    with edit.applied(), m.bridge.hooks(fwd_hooks=[(names[1], functools.partial(save, key="hooked"))]):
        m.hf(ids)
    w = m.mlp_out_weight(layer).detach()  # llama: (d_model, d_mlp)
    w_new = w + torch.outer(delta, k) / (k @ k)
    expected = w_new @ k  # bias-free down_proj
    assert torch.allclose(store["hooked"][0, pos], expected, atol=1e-4)


def test_generate_with_and_without_kv_cache(tiny_llama):
    """Cached decoding: later steps see only the new token; nothing crashes and the first step
    (the whole prompt) is patched. Uncached decoding (`model.generate`, which avoids the
    bridge's broken KV cache) equals greedy re-running of the whole sequence with the hooks."""
    m = tiny_llama
    ids = m.to_tensor(REQ.text)
    edit, hooks = _delta_edit(m, torch.randn(m.d_model) * 20, layer=0)  # layer 1 is the last: no attention after it
    plain_first = m.hf(ids).logits[0, -1]
    with edit.applied(), torch.no_grad():
        out = m.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                            do_sample=False, pad_token_id=0, output_scores=True,
                            return_dict_in_generate=True, use_cache=True)
        assert hooks.last_locator.n_patched >= 1
        assert not torch.allclose(out.scores[0][0], plain_first, atol=1e-3)
        text = m.generate(REQ.text, max_new_tokens=4)
        seq = ids
        for _ in range(4):  # greedy by full forwards, hooks patching every time
            nxt = m.hf(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        assert text == m.decode(seq[0, ids.shape[1]:].tolist())


def test_patch_donor_with_given_donor(tiny_llama):
    m = tiny_llama
    digest = m.weight_digest()
    ed = get_editor("patch-donor", m, donor="The Colosseum", site="resid_post", layers=[0])
    edit = ed.edit(REQ)
    assert edit.kind == "hooks" and edit.info["donor"] == "The Colosseum"
    before, _lens = _logits(m, [REQ.text])
    with edit.applied():
        during, _ = _logits(m, [REQ.text])
        assert m.weight_digest() == digest
    # the last subject token's residual is the donor's, so the next layer differs
    assert not torch.allclose(during[0, -1], before[0, -1])
    assert m.weight_digest() == digest
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        get_editor("patch-donor", m, layerz=[1])


def test_patch_context_builds_source(tiny_llama):
    ed = get_editor("patch-context", tiny_llama, layers=[0], repeats=2)
    src = ed.source_text(REQ)
    assert src.count("Rome") == 2 and src.endswith("The Louvre")
    edit = ed.edit(REQ)
    before, _ = _logits(tiny_llama, [REQ.text])
    with edit.applied():
        during, _ = _logits(tiny_llama, [REQ.text])
    assert not torch.allclose(during[0, -1], before[0, -1])


def test_bad_site_is_named(tiny_llama):
    with pytest.raises(ValueError, match="site"):
        get_editor("patch-donor", tiny_llama, donor="The Colosseum", site="nope").edit(REQ)


def test_editors_compared_on_an_implication_case(tiny_llama):
    from loudfacts.cases import Case, paired, score_edits
    from loudfacts.implications import implication_verdict, outcome_summary, probe_outcomes

    case = {"id": "c1", "kind": "transitive",
            "edit": {"prompt": "{} is located in the city of", "subject": "The Louvre",
                     "target_true": "Paris", "target_new": "Rome"},
            "probes": [{"prompt": "The Louvre is in the country of", "old": "France",
                        "new": "Italy", "phrasing": "shares template"}]}
    other = {"id": "c2", "kind": "transitive",
             "edit": {"prompt": "{} is located in the city of", "subject": "The Colosseum",
                      "target_true": "Seattle", "target_new": "Paris"}, "probes": []}
    c = Case.from_implication(case, paraphrases=True, neighbours_from=[case, other],
                              unrelated=["Barack Obama is from"])
    assert c.roles == ["rewrite", "paraphrase", "neighbourhood", "ladder", "implication"]
    assert c.of_role("ladder")[0].prompt.startswith("The Louvre is cool.")
    edit, _ = _delta_edit(tiny_llama, torch.randn(tiny_llama.d_model) * 10)
    df = probe_outcomes(paired(score_edits(tiny_llama, {"patch-donor": edit, "rome": edit},
                                           c.probes)).assign(case="c1"))
    assert len(df) == 2 * len(c.probes)
    assert df["p_new_post"].between(0, 1).all()
    s = outcome_summary(df)
    assert s["score"].between(0, 1).all()
    assert set(s["set"]) == {"rewrite", "paraphrase", "neighbourhood", "loud", "implication"}
    assert implication_verdict(df[df["set"] != "rewrite"])[0].startswith("not testable")
    df.loc[df["set"] == "rewrite", "success"] = True  # both "wrote" the fact
    verdict, _ = implication_verdict(df)
    assert verdict.startswith("not distinguished")  # the same edit under two names


def test_nested_hook_context_keeps_the_edit(tiny_llama):
    """Another `bridge.hooks(...)` block inside `applied()` (as tracing or ROME use) must not
    remove the edit's hooks when it exits."""
    m = tiny_llama
    ids = m.to_tensor(REQ.text)
    edit, _ = _delta_edit(m, torch.randn(m.d_model) * 20)
    with torch.no_grad():
        base = m.hf(ids).logits
        with edit.applied():
            a = m.hf(ids).logits
            with m.bridge.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: x)]):
                b = m.hf(ids).logits
            c = m.hf(ids).logits
        d = m.hf(ids).logits
    assert not torch.equal(a, base)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(base, d)


def test_offsets_and_aligned_patch(tiny_llama):
    from loudfacts.editing.patching import replace_aligned_at_subject_hook, subject_token_offsets

    ids = torch.tensor([[5, 1, 2, 3, 9, 2, 3, 0]])
    off = subject_token_offsets(ids, [[1, 2, 3], [2, 3]])
    assert off[0].tolist() == [-1, 2, 1, 0, -1, 1, 0, -1]
    loc = SubjectLocator([[1, 2, 3]])
    loc.read_ids_hook(ids, None)
    act = torch.zeros(1, 8, 4)
    vals = torch.tensor([[1.0] * 4, [2.0] * 4])  # two donor tokens onto a three-token subject
    out = replace_aligned_at_subject_hook(act, None, locator=loc, values=vals)
    assert out[0, :, 0].tolist() == [0, 0, 1, 2, 0, 0, 0, 0]
    ed = get_editor("patch-donor", tiny_llama, donor="The Colosseum", layers=[0])
    e = ed.edit(REQ)
    assert e.info["positions"] in ("last", "aligned") and set(e.info["positions_fit"]) == {"last", "aligned"}


@pytest.mark.parametrize("editor, hp, match", [
    ("patch-donor", {"min_donor_p": float("nan")}, "min_donor_p=nan"),
    ("patch-donor", {"max_candidates": -1}, "max_candidates=-1"),
    ("patch-donor", {"layers": [1.5]}, r"layers=\[1\.5\]"),
    ("patch-context", {"repeats": 0}, "repeats=0"),
    ("hook-delta", {"scale": float("inf")}, "scale=inf"),
])
def test_non_finite_or_out_of_range_hparams_are_refused(tiny_llama, editor, hp, match):
    """NaN mixing settings used to pass and give NaN probabilities; now get_editor refuses."""
    hp = {**({"layers": [0]} if editor != "hook-delta" else {}), **hp}
    with pytest.raises(ValueError, match=match):
        get_editor(editor, tiny_llama, **hp)


def test_nan_weights_are_not_patched_in(tiny_llama):
    w = tiny_llama.mlp_out_weight(0)
    saved = w.detach().clone()
    ed = get_editor("patch-context", tiny_llama, layers=[1])
    try:
        with torch.no_grad():
            w.fill_(float("nan"))
        with pytest.raises(ValueError, match="not finite"):
            ed.edit(REQ)
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_hook_delta_reusing_romes_optimisation_is_timed_as_a_fresh_one(tiny_llama):
    """hook-delta made through the edit contract right after ROME reuses ROME's components;
    its info says so and carries the seconds of the optimisation it borrowed."""
    fast = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 3,
            "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3}
    req = EditRequest("{} is located in the city of", "The Colosseum", "Oslo", "Rome")
    get_editor("rome", tiny_llama, **fast).edit(req)
    edit = get_editor("hook-delta", tiny_llama, rome=fast).edit(req)
    assert edit.info["reused"] is True
    t = edit.info["timings"]
    assert edit.info["reused_seconds"] == pytest.approx(t["k"] + t["v"]) and t["v"] > 0
