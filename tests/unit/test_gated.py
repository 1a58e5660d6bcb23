"""hook-gated on a tiny random Llama: where its gate is open the output is hook-delta's, where
it is closed the unedited model's, per position and per row of a padded batch; the gate itself
on hand-built masks; the edit restores the model; forwards it cannot gate are refused; bad
settings are named."""

import pytest
import torch

from loudfacts.editing import EditError, EditRequest, available_editors, get_editor
from loudfacts.editing.gated import gate_mask
from loudfacts.scoring import next_token_logprobs

ROME = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 4, "mom2_n_tokens": 512,
        "mom2_seq_len": 64, "mom2_ridge": 1e-3, "early_stop": 0.0, "clamp_norm_factor": 1000.0,
        "v_weight_decay": 0.0}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")

pytestmark = pytest.mark.usefixtures("scratch_cache")


def _b(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_registered():
    assert "hook-gated" in available_editors()


def test_gate_mask_by_hand():
    # positions:      0  1  2  3  4  5  6
    subject = _b([0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0])
    boundary = _b([0, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0])
    relation = _b([0, 0, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1])
    got = gate_mask(subject, boundary, relation)
    # row 0: opens at the first relation match after the subject (2), latched to the full stop
    # (4 closes it); matches after the stop do not count without a new mention.
    # row 1: the first mention is cut by the stop at 2; the second (5) opens at 6.
    # row 2: no subject, never open.
    want = _b([0, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0])
    assert torch.equal(got, want)


@pytest.fixture
def edits(tiny3):
    delta = get_editor("hook-delta", tiny3, rome=ROME)
    comp = delta.rome_editor().components(REQ)
    open_all = get_editor("hook-gated", tiny3, rome=ROME, tau=-1.0)
    closed = get_editor("hook-gated", tiny3, rome=ROME, tau=1.0)
    return (delta.edit_from_components(REQ, comp), open_all.edit_from_components(REQ, comp),
            closed.edit_from_components(REQ, comp))


def _logits(model, edit, texts):
    with edit.applied():
        return next_token_logprobs(model, texts)


def test_open_gate_is_hook_delta_and_closed_gate_is_unedited(tiny3, edits):
    hook_delta, open_all, closed = edits
    same_sentence = ["The Louvre is located in the city of", "The Louvre, like Big Ben, is in"]
    earlier_sentence = ["The Louvre is cool. The Eiffel Tower is in"]
    texts = same_sentence + earlier_sentence
    pre = next_token_logprobs(tiny3, texts)
    d = _logits(tiny3, hook_delta, texts)
    g = _logits(tiny3, open_all, texts)
    c = _logits(tiny3, closed, texts)
    assert (d - pre).abs().max() > 1e-3  # hook-delta moves every prompt that names the subject
    torch.testing.assert_close(g[:2], d[:2], atol=1e-5, rtol=0)  # open: hook-delta exactly
    torch.testing.assert_close(g[2], pre[2], atol=1e-5, rtol=0)  # earlier sentence: unedited
    # tau 1: open only where the query is the rewrite prompt's own (cos 1), so not on the others
    torch.testing.assert_close(c[1:], pre[1:], atol=1e-5, rtol=0)
    assert not (d[2] - pre[2]).abs().max() < 1e-4


def test_padded_batch_rows_are_gated_alone(tiny3, edits):
    _, open_all, _ = edits
    texts = ["The Louvre is cool. Paris is", "The Louvre is located in the city of",
             "Hello there, the Louvre is"]
    together = _logits(tiny3, open_all, texts)  # one right-padded batch
    alone = torch.cat([_logits(tiny3, open_all, [t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_gate_at_last_reports_the_gate(tiny3, edits):
    _, open_all, closed = edits
    prompts = ["The Louvre is located in the city of", "The Louvre is cool. Rome is",
               "Big Ben is in"]
    assert open_all.gate_at_last(prompts) == [True, False, False]
    assert closed.gate_at_last(prompts[1:]) == [False, False]


def test_restores_the_model_also_on_error(tiny3, edits):
    _, open_all, _ = edits
    base = tiny3.hf.base_model
    pre_hooks = len(base._forward_pre_hooks)
    texts = ["The Louvre is located in the city of"]
    before = next_token_logprobs(tiny3, texts)
    with pytest.raises(RuntimeError, match="boom"):
        with open_all.applied():
            raise RuntimeError("boom")
    assert len(base._forward_pre_hooks) == pre_hooks
    torch.testing.assert_close(next_token_logprobs(tiny3, texts), before, atol=0, rtol=0)


def test_refuses_forwards_it_cannot_gate(tiny3, edits):
    _, open_all, _ = edits
    ids = torch.tensor([tiny3.encode("The Louvre is located in the city of")])
    with open_all.applied():
        out = tiny3.hf(ids, use_cache=True)  # a whole sequence with a fresh cache: gated
        with pytest.raises(EditError, match="KV cache"):
            tiny3.hf(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
        with pytest.raises(EditError, match="base_model"):  # a partial forward: no gate
            tiny3.bridge.blocks[0](tiny3.hf.base_model.embed_tokens(ids))


def test_generate_runs_gated(tiny3, edits):
    _, open_all, _ = edits
    with open_all.applied():
        text = tiny3.generate("The Louvre is located in the city of", max_new_tokens=3)
    assert isinstance(text, str)


def test_gate_scores_give_the_gate_for_every_threshold(tiny3):
    """One call's threshold-free scores decide the gate of an edit at any tau, with and without
    the sentence rule; batched rows score as when run alone."""
    comp = get_editor("hook-delta", tiny3, rome=ROME).rome_editor().components(REQ)
    prompts = ["The Louvre is located in the city of", "The Louvre, like Big Ben, is in",
               "The Louvre is cool. The Eiffel Tower is in", "Big Ben is in",
               "I saw the Louvre and then the river", "The Louvre. Rome is the capital of"]
    ref = None
    for rule in (True, False):
        for tau in (-1.0, -0.2, 0.0, 0.3, 0.9):
            ed = get_editor("hook-gated", tiny3, rome=ROME, tau=tau, clause_rule=rule)
            got = ed.edit_from_components(REQ, comp).gate_scores(prompts, batch_size=4)
            if ref is None:
                ref = got
                alone = [ed.edit_from_components(REQ, comp).gate_scores([p])[0] for p in prompts]
                for a, b in zip(got, alone):
                    assert a["open"] == b["open"] and a["in_clause"] == b["in_clause"]
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5, nan_ok=True)
            for r, r0 in zip(got, ref):
                assert r["score"] == pytest.approx(r0["score"], abs=1e-6, nan_ok=True)
                allowed = r["in_clause"] if rule else r["subject_seen"]
                assert r["open"] == bool(allowed and r["score"] >= tau)
    seen = [r["subject_seen"] for r in ref]
    clause = [r["in_clause"] for r in ref]
    assert seen == [True, True, True, False, True, True]
    assert clause == [True, True, False, False, True, False]
    assert ref[0]["score"] == pytest.approx(1.0, abs=1e-5)  # the rewrite prompt is h* itself


def test_without_the_clause_rule_an_earlier_sentence_opens(tiny3, edits):
    hook_delta, _, _ = edits
    comp = get_editor("hook-delta", tiny3, rome=ROME).rome_editor().components(REQ)
    no_rule = get_editor("hook-gated", tiny3, rome=ROME, tau=-1.0, clause_rule=False)
    edit = no_rule.edit_from_components(REQ, comp)
    assert edit.info["clause_rule"] is False
    texts = ["The Louvre is cool. The Eiffel Tower is in", "Big Ben is in"]
    pre = next_token_logprobs(tiny3, texts)
    torch.testing.assert_close(_logits(tiny3, edit, texts)[0],
                               _logits(tiny3, hook_delta, texts)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(tiny3, edit, texts)[1], pre[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [{"tau": 1.5}, {"tau": "high"}, {"gate_layer": 99},
                                 {"gate_layer": -1}, {"gate_layer": 1.5},
                                 {"clause_rule": "yes"}])
def test_bad_settings_are_named(tiny3, bad):
    with pytest.raises((EditError, ValueError), match=next(iter(bad))):
        get_editor("hook-gated", tiny3, rome=ROME, **bad)


def test_stacked_gated_edits_keep_both_facts(tiny3, edits):
    """Two gated edits of different subjects applied together: each prompt gets what the edit
    of its own subject gives alone, and a prompt naming neither stays unedited."""
    from loudfacts.editing import compose

    _, louvre, _ = edits
    req2 = EditRequest("{} plays the sport of", "Michael Jordan", "tennis", "basketball")
    jordan = get_editor("hook-gated", tiny3, rome=ROME, tau=-1.0).edit(req2)
    texts = ["The Louvre is located in the city of", "Michael Jordan plays the sport of",
             "Big Ben is in"]
    pre = next_token_logprobs(tiny3, texts)
    a, b = _logits(tiny3, louvre, texts), _logits(tiny3, jordan, texts)
    both = _logits(tiny3, compose([louvre, jordan]), texts)
    assert (a[0] - pre[0]).abs().max() > 1e-3 and (b[1] - pre[1]).abs().max() > 1e-3
    torch.testing.assert_close(both[0], a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], b[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[2], pre[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(next_token_logprobs(tiny3, texts), pre, atol=0, rtol=0)
