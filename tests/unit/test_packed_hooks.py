"""Hook edits on packed forwards: scoring keeps its prefix-tree route under patch-donor,
patch-context, hook-delta and hook-gated, and gives what separate padded rows give; a tree that
a hook cannot follow falls back to padded rows; an unmarked hook still forces padding."""

import pytest
import torch

from loudfacts import scoring
from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.base import HookEdit
from loudfacts.editing.patching import (
    SubjectLocator,
    add_at_subject_hook,
    build_hooks,
    replace_aligned_at_subject_hook,
)

ROME = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 4, "mom2_n_tokens": 512,
        "mom2_seq_len": 64, "mom2_ridge": 1e-3, "early_stop": 0.0, "clamp_norm_factor": 1000.0,
        "v_weight_decay": 0.0}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")

# CounterFact+-like probes: a statement naming the subject shared by several prompts, the
# subject alone, in the same sentence as another question, and prompts without it
STATEMENT = "The Louvre is located in the city of Rome. "
TEXTS = [STATEMENT + p for p in ("The Eiffel Tower is in", "Big Ben is in the city of",
                                 "The Louvre is in")] + [
    "The Louvre is located in the city of", "The Louvre is located in the country of",
    "The Louvre, like Big Ben, is in", "Hello there, the Louvre is", "Paris is the capital of"]

pytestmark = pytest.mark.usefixtures("scratch_cache")


def _probe(model, edit, texts=TEXTS):
    """(packed, padded) logits at every token of `texts` with `edit` applied, and whether the
    packed call really packed."""
    seqs = [model.encode(t) for t in texts]
    rows = [j for j, s in enumerate(seqs) for _ in s]
    positions = [q for s in seqs for q in range(len(s))]
    calls = []
    real = scoring.packed_logits_at
    with edit.applied():
        assert not scoring._any_hooks(model), "the edit's hooks should all be pack-aware"
        scoring.packed_logits_at = lambda *a: calls.append(1) or real(*a)
        try:
            packed = scoring.logits_at(model, seqs, rows, positions)
        finally:
            scoring.packed_logits_at = real
        with scoring.packing(False):
            padded = scoring.logits_at(model, seqs, rows, positions)
    return packed, padded, bool(calls)


@pytest.fixture(scope="module")
def hook_edits(tiny3):
    delta = get_editor("hook-delta", tiny3, rome=ROME)
    comp = delta.rome_editor().components(REQ)
    return {
        "hook-delta": delta.edit_from_components(REQ, comp),
        "hook-gated": get_editor("hook-gated", tiny3, rome=ROME).edit_from_components(REQ, comp),
        "hook-gated, open": get_editor("hook-gated", tiny3, rome=ROME, tau=-1.0
                                       ).edit_from_components(REQ, comp),
        "patch-donor, last": get_editor("patch-donor", tiny3, donor="The Colosseum",
                                        layers=[0], positions="last").edit(REQ),
        "patch-donor, aligned": get_editor("patch-donor", tiny3, donor="The Colosseum",
                                           layers=[0], positions="aligned").edit(REQ),
        "patch-context": get_editor("patch-context", tiny3, layers=[0]).edit(REQ),
    }


@pytest.mark.parametrize("name", ["hook-delta", "hook-gated", "hook-gated, open",
                                  "patch-donor, last", "patch-donor, aligned", "patch-context"])
def test_hook_edits_score_packed_as_padded_rows_do(tiny3, hook_edits, name):
    edit = hook_edits[name]
    before = scoring.logits_at(tiny3, [tiny3.encode(t) for t in TEXTS[:1]], [0], [0])
    refused = scoring._PACKING["refused"]
    packed, padded, did_pack = _probe(tiny3, edit)
    # Aligned patching writes every subject token, "The" included, and after the statement
    # "The" is shared by "The Eiffel Tower ..." and "The Louvre is in": a subject token on one
    # path only, so that call is redone padded. Every other edit packs these probes.
    aligned = name == "patch-donor, aligned"
    assert did_pack and scoring._PACKING["refused"] == refused + aligned
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    if aligned:  # without "The Louvre is in" after the statement, nothing is ambiguous
        refused = scoring._PACKING["refused"]
        packed2, padded2, _ = _probe(tiny3, edit, TEXTS[:2] + TEXTS[3:])
        assert scoring._PACKING["refused"] == refused
        torch.testing.assert_close(packed2, padded2, atol=1e-5, rtol=1e-5)
    # the edit does change what these prompts predict (so the comparison has teeth) ...
    with scoring.packing(False):
        seqs = [tiny3.encode(t) for t in TEXTS]
        plain = scoring.logits_at(tiny3, seqs, list(range(len(seqs))),
                                  [len(s) - 1 for s in seqs])
    last = torch.tensor([sum(len(tiny3.encode(t)) for t in TEXTS[:j + 1]) - 1
                         for j in range(len(TEXTS))])
    assert (padded[last] - plain).abs().max() > 1e-4
    # ... and is gone afterwards
    assert not scoring._any_hooks(tiny3)
    torch.testing.assert_close(
        scoring.logits_at(tiny3, [tiny3.encode(t) for t in TEXTS[:1]], [0], [0]), before)


def test_the_statement_is_computed_once_under_a_hook_edit(tiny3, hook_edits):
    """The shared statement before three prompts stays one set of tree positions, and the
    subject inside it is patched there (once) for all three."""
    seqs = [tiny3.encode(t) for t in TEXTS[:3]]
    (pack, _members), = scoring.pack_sequences(seqs)
    shared = len(tiny3.encode(STATEMENT.strip()))
    assert len(pack) <= sum(map(len, seqs)) - 2 * (shared - 1)
    edit = hook_edits["hook-delta"]
    with edit.applied():
        loc = edit._hooks.last_locator
        scoring.logits_at(tiny3, seqs, [0, 1, 2], [len(s) - 1 for s in seqs])
        packed_patches = loc.n_patched
    assert packed_patches == 2  # "Louvre" in the statement once, and in the third prompt


def _locator_edit(model, patterns, hook, **kw):
    factory = lambda: SubjectLocator(patterns)  # noqa: E731
    return HookEdit(model, build_hooks(factory, [("blocks.0.hook_resid_post", hook, kw)]),
                    REQ, "test")


def test_a_tree_the_locator_cannot_follow_falls_back_to_padded_rows(tiny_llama):
    """Sequences a b c and a b d share positions a and b. With subject patterns (b) and (b c),
    b is a subject's last token on the path a b d but inside the longer match on a b c; with the
    pattern (b c) alone, b is a subject token (offset 1) only on a b c. The mask cannot be
    packed in the first case, the aligned offsets not in the second: both calls are redone
    padded and give the padded numbers."""
    m = tiny_llama
    a, b, c, d = 11, 12, 13, 14
    seqs = [[a, b, c], [a, b, d]]
    rows, positions = [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]
    delta = torch.randn(m.d_model)
    cases = [
        _locator_edit(m, [[b], [b, c]], add_at_subject_hook, delta=delta),
        _locator_edit(m, [[b, c]], replace_aligned_at_subject_hook,
                      values=torch.randn(2, m.d_model)),
    ]
    for edit in cases:
        with edit.applied():
            assert not scoring._any_hooks(m)
            refused = scoring._PACKING["refused"]
            got = scoring.logits_at(m, seqs, rows, positions)
            assert scoring._PACKING["refused"] == refused + 1
            with scoring.packing(False):
                want = scoring.logits_at(m, seqs, rows, positions)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # without the ambiguity (subject c only) the same edit packs
    edit = _locator_edit(m, [[c]], add_at_subject_hook, delta=delta)
    with edit.applied():
        refused = scoring._PACKING["refused"]
        got = scoring.logits_at(m, seqs, rows, positions)
        assert scoring._PACKING["refused"] == refused
        with scoring.packing(False):
            want = scoring.logits_at(m, seqs, rows, positions)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[2] - scoring.logits_at(m, seqs, [0], [2])[0]).abs().max() > 1e-4


def test_an_unmarked_hook_beside_a_hook_edit_still_forces_padding(tiny3, hook_edits):
    with hook_edits["hook-delta"].applied():
        assert not scoring._any_hooks(tiny3)
        with tiny3.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: a)]):
            assert scoring._any_hooks(tiny3)
        handle = tiny3.hf.base_model.register_forward_pre_hook(lambda *a: None)
        try:
            assert scoring._any_hooks(tiny3)
        finally:
            handle.remove()
        assert not scoring._any_hooks(tiny3)


def test_pack_aware_marks_functions_partials_and_methods():
    import functools

    def f(act, hook):
        return act

    assert not scoring._is_pack_aware(f)
    scoring.pack_aware(functools.partial(f, hook=None))
    assert scoring._is_pack_aware(f) and scoring._is_pack_aware(functools.partial(f))
    loc = SubjectLocator([[1]])
    assert scoring._is_pack_aware(loc.read_ids_hook)
    assert not scoring._is_pack_aware(lambda a, hook: a)


def test_layout_round_trip_and_disagreement():
    p = scoring.PrefixPack()
    p.add([1, 2, 3])
    p.add([1, 2, 4, 5])
    ids = torch.tensor([p.ids + [0]])  # one pad position
    layout = scoring.PackLayout(ids, [p])
    per = layout.per_sequence(ids, -1)
    assert per.tolist() == [[1, 2, 3, -1], [1, 2, 4, 5]]
    back, agree = layout.to_positions(per, -7)
    assert back.tolist() == [[1, 2, 3, 4, 5, -7]] and bool(agree.all())
    vals = torch.tensor([[0, 1, 0, 0], [0, 2, 0, 0]])  # the shared position 1 disagrees
    back, agree = layout.to_positions(vals, 0)
    assert agree.tolist() == [[True, False, True, True, True, True]]


def test_packing_without_hooks_keeps_hook_edits_padded(tiny3, hook_edits):
    with hook_edits["hook-delta"].applied():
        assert not scoring._any_hooks(tiny3)
        with scoring.packing(True, hooks=False):
            assert scoring._any_hooks(tiny3)
        assert not scoring._any_hooks(tiny3)
