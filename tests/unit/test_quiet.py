"""rome-quiet on a tiny random Llama: with no quiet term it is ROME, its term does what it says,
its edit restores the model (alone and stacked), its cache entries are its own, bad input is
named; and its training prompts are none of the prompts anything evaluates."""

import json

import pytest
import torch

from loudfacts.editing import EditRequest, available_editors, compose, get_editor
from loudfacts.editing.quiet import QUIET_TEMPLATES, QUIET_TRAIN_PROMPTS
from loudfacts.scoring import next_token_logprobs

FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 6,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3, "early_stop": 0.0,
        # a random tiny model's MLP outputs are small: let δ move far enough to matter
        "clamp_norm_factor": 1000.0, "v_weight_decay": 0.0}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
REQ2 = EditRequest("{} plays the sport of", "Michael Jordan", "tennis", "basketball")


pytestmark = pytest.mark.usefixtures("scratch_cache")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.hf.named_parameters()}


def _same(model, w0):
    return all(torch.equal(p, w0[n]) for n, p in model.hf.named_parameters())


def test_registered():
    assert "rome-quiet" in available_editors()


def test_without_the_quiet_term_it_is_rome(tiny3):
    """quiet_factor 0: the same δ and ΔW as ROME computing v* on full rows (suffix_only off)."""
    rome = get_editor("rome", tiny3, suffix_only=False, **FAST)
    quiet = get_editor("rome-quiet", tiny3, quiet_factor=0.0, **FAST)
    a, b = rome.components(REQ), quiet.components(REQ)
    assert not b["reused"]  # its own cache entry, not ROME's
    assert len(a["v_history"]) == len(b["v_history"]) == FAST["v_num_grad_steps"]
    torch.testing.assert_close(b["delta"], a["delta"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(quiet.update_for(b), rome.update_for(a), atol=1e-6, rtol=1e-5)
    assert all(h["quiet"] == 0.0 for h in b["v_history"])


def _quiet_kl(model, editor, edit):
    texts = editor.quiet_texts(REQ.subject)
    lp0 = next_token_logprobs(model, texts)
    with edit.applied():
        lp1 = next_token_logprobs(model, texts)
    return float((lp1.exp() * (lp1 - lp0)).sum(-1).mean())


@pytest.mark.parametrize("update_key", ["bare", "k_star"])
def test_quiet_term_is_the_edited_models_own_kl(tiny3, update_key):
    """The last step's quiet term (δ as returned) equals quiet_factor × the mean KL that the
    edited model, run for real, has on the quiet prompts."""
    ed = get_editor("rome-quiet", tiny3, quiet_factor=2.0, update_key=update_key, **FAST)
    edit = ed.edit(REQ)
    last = ed.components(REQ)["v_history"][-1]["quiet"]
    assert last / 2.0 == pytest.approx(_quiet_kl(tiny3, ed, edit), rel=1e-3, abs=1e-6)
    assert last > 1e-6


def test_quiet_term_lowers_the_kl_it_penalises(tiny3):
    """A strong quiet term leaves the next token after "{subject} is cool. {prompt}" closer to
    the unedited model's than ROME's loss does (whether it still writes the fact is measured on
    the embedded model, notebook 07: a random tiny model barely learns any target)."""
    loud = get_editor("rome-quiet", tiny3, quiet_factor=0.0, **FAST)
    quiet = get_editor("rome-quiet", tiny3, quiet_factor=50.0, **FAST)
    e_loud, e_quiet = loud.edit(REQ), quiet.edit(REQ)
    kl_loud, kl_quiet = _quiet_kl(tiny3, loud, e_loud), _quiet_kl(tiny3, quiet, e_quiet)
    assert kl_loud > 1e-4
    assert kl_quiet < 0.8 * kl_loud
    hist = quiet.components(REQ)["v_history"]
    assert hist[0]["quiet"] == pytest.approx(0.0, abs=1e-7)  # δ = 0: no change yet


def test_quiet_edit_restores_the_model_alone_and_stacked(tiny3):
    w0 = _weights(tiny3)
    quiet = get_editor("rome-quiet", tiny3, quiet_factor=2.0, **FAST)
    e1 = quiet.edit(REQ)
    with e1.applied():
        assert not _same(tiny3, w0)
    assert _same(tiny3, w0)
    e2 = get_editor("rome", tiny3, **FAST).edit(REQ2)
    both = compose([e1, e2])
    with both.applied():
        assert not _same(tiny3, w0)
    assert _same(tiny3, w0)
    with pytest.raises(RuntimeError):
        with e1.applied():
            raise RuntimeError("inside")
    assert _same(tiny3, w0)


def test_cache_is_keyed_by_quiet_settings(tiny3):
    a = get_editor("rome-quiet", tiny3, quiet_factor=1.0, **FAST).components(REQ)
    b = get_editor("rome-quiet", tiny3, quiet_factor=1.0, **FAST).components(REQ)
    c = get_editor("rome-quiet", tiny3, quiet_factor=3.0, **FAST).components(REQ)
    assert b["reused"] and not c["reused"]
    assert not torch.equal(a["delta"], c["delta"])
    ed = get_editor("rome-quiet", tiny3, quiet_code="forged", **FAST)
    assert ed.hparams["quiet_code"] != "forged"


@pytest.mark.parametrize("bad", [{"quiet_factor": -1.0}, {"quiet_factor": True},
                                 {"quiet_prompts": "Barack Obama is from"},
                                 {"quiet_prompts": []},
                                 {"quiet_templates": ["{prompt} {subject}"]},
                                 {"quiet_templates": ["{subject} only"]}])
def test_bad_settings_are_named(tiny3, bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        get_editor("rome-quiet", tiny3, **FAST, **bad)


def _evaluation_prompts() -> list[str]:
    """Every prompt text the repo scores: CounterFact (both 10k splits and edit-1k: rewrite,
    paraphrase, neighbourhood, generation, attribute prompts), known_1000, the implication
    probes, and the unrelated prompts and sentences of the evaluation, the ladder and 07."""
    from loudfacts import evaluation, leak
    from loudfacts.data import load_counterfact, load_known_facts, neighbour_pool

    out = list(evaluation.UNRELATED_PROMPTS) + [evaluation.UNRELATED_SENTENCE]
    out += list(getattr(leak, "UNRELATED_PROMPTS", []))
    for rec in list(neighbour_pool()) + list(load_counterfact("edit-1k", verbose=False)):
        out.append(rec.prompt.replace("{}", rec.subject))
        out += rec.paraphrase_prompts + rec.neighborhood_prompts
        out += list(rec.generation_prompts) + list(rec.attribute_prompts)
    out += [f.text for f in load_known_facts()]
    with open(evaluation.implications_path()) as fh:
        for line in fh:
            case = json.loads(line)
            out += [p["prompt"] for p in case.get("probes", [])]
            out += [c["prompt"] for c in case.get("checks", [])]
    return out


def test_training_prompts_are_disjoint_from_every_evaluation_prompt():
    prompts = [p.strip().lower() for p in _evaluation_prompts()]
    assert len(prompts) > 20000  # the data was read
    for q in QUIET_TRAIN_PROMPTS:
        q = q.strip().lower()
        hits = [p for p in prompts if q in p or (len(p) > 12 and p in q)]
        assert not hits, f"quiet training prompt {q!r} overlaps evaluation prompts {hits[:3]}"
    assert all("{subject}" in t and "{prompt}" in t for t in QUIET_TEMPLATES)
