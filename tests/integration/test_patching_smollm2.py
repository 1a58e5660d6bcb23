"""Patching edits on the embedded SmolLM2-135M (integration: ~30 s on one core)."""

from __future__ import annotations

import pytest
import torch

from loudfacts.editing import EditRequest, get_editor
from loudfacts.scoring import next_token_logprobs, target_probs

pytestmark = pytest.mark.integration

LOUVRE = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
PROBES = [
    "The Louvre is located in the city of",
    "The Louvre is cool. Barack Obama is from",
    "Italy borders",
    "Where is the Louvre? It is in the city of",
    "The Eiffel Tower is located in the city of",
]


@pytest.fixture(scope="module")
def donor_edit(model):
    return get_editor("patch-donor", model, donor="The Colosseum").edit(LOUVRE)


def test_patch_donor_flips_known_fact_and_leaves_weights(model, donor_edit):
    text = LOUVRE.text
    digest = model.weight_digest()
    before = next_token_logprobs(model, PROBES)
    p_before = target_probs(model, [text, text], ["Rome", "Paris"])
    assert p_before[1] > p_before[0]  # the model knows Paris
    with donor_edit.applied():
        assert model.weight_digest() == digest
        p_after = target_probs(model, [text, text], ["Rome", "Paris"])
        # batched (right-padded) scoring equals one-at-a-time scoring under the hooks
        batched = target_probs(model, PROBES, ["Rome"] * len(PROBES), batch_size=8)
        single = torch.stack([target_probs(model, [p], ["Rome"])[0] for p in PROBES])
        during = next_token_logprobs(model, PROBES)
    after = next_token_logprobs(model, PROBES)
    assert model.weight_digest() == digest
    assert torch.equal(before, after)  # hooks gone: bit-identical
    assert p_after[0] > p_after[1], (p_before, p_after)  # flipped: Rome over Paris
    assert p_after[0] > 10 * p_before[0]
    assert torch.allclose(batched, single, atol=1e-5)
    # prompts without the subject are untouched
    for i in (2, 4):
        assert torch.allclose(during[i], before[i], atol=1e-5)
    # the lowercase-article variant "the Louvre" is patched as well
    assert not torch.allclose(during[3], before[3], atol=1e-3)


def test_patch_donor_finds_a_donor(model):
    pytest.importorskip("loudfacts.data")
    ed = get_editor("patch-donor", model, max_candidates=8)
    try:
        donor, p, n = ed.choose_donor(LOUVRE)
    except Exception as e:  # noqa: BLE001 - data files may be absent on a bare checkout
        pytest.skip(f"no donor search here: {e}")
    assert donor != LOUVRE.subject and n >= 1 and 0 <= p <= 1


def test_hook_delta_matches_rome_weight_edit_at_the_key(model):
    """hook-delta adds δ at the subject's last token; ROME's weight edit adds δ·(uᵀk)/(uᵀk*)
    at every position. On the rewrite prompt the key k is close to k* (k* averages k over
    prefixed contexts), so the final next-token distributions agree within a tolerance; the
    exact equality at k = k* is tested on the tiny model in tests/unit."""
    pytest.importorskip("loudfacts.editing.rome")
    from loudfacts.editing.patching import rome_weight_edit_from_components

    req = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    hd = get_editor("hook-delta", model, rome={"mom2_adjustment": False, "prefix_recipe": [[5, 3]],
                                                 "v_num_grad_steps": 10})
    rome = hd.rome_editor()
    comp = rome.components(req)
    hook_edit = hd.edit_from_components(req, comp)
    weight_edit = rome_weight_edit_from_components(rome, req, comp)
    with hook_edit.applied():
        lp_hook = next_token_logprobs(model, [req.text])[0]
        p_hook = float(target_probs(model, [req.text], ["Rome"])[0])
    with weight_edit.applied():
        lp_rome = next_token_logprobs(model, [req.text])[0]
        p_rome = float(target_probs(model, [req.text], ["Rome"])[0])
    tv = 0.5 * float((lp_hook.exp() - lp_rome.exp()).abs().sum())
    assert p_rome > 0.5 and p_hook > 0.5, (p_hook, p_rome)
    assert abs(p_hook - p_rome) < 0.15, (p_hook, p_rome)
    assert tv < 0.2, tv
