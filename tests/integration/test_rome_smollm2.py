"""ROME on the embedded model: one edit flips a known fact and spares an unrelated one."""

import pytest
import torch

from loudfacts.editing import EditRequest, get_editor
from loudfacts.scoring import next_token_logprobs, target_probs

pytestmark = pytest.mark.integration

# Few statistics tokens (cached after the first run) and prefixes keep this test quick.
QUICK = {"mom2_n_tokens": 20_480, "prefix_recipe": [[5, 2], [10, 2]]}


def test_edit_flips_fact_spares_unrelated_and_restores(model):
    req = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    unrelated = ["The capital of Japan is", "Miles Davis played the"]
    digest = model.weight_digest()
    before = target_probs(model, [req.text] * 2, ["Rome", "Paris"])
    assert before[1] > before[0], "the model should hold the true fact before the edit"
    lp_before = next_token_logprobs(model, unrelated)

    editor = get_editor("rome", model, **QUICK)
    edit = editor.edit(req)
    comps = edit.info["components"]
    assert model.weight_digest() == digest
    with edit.applied():
        after = target_probs(model, [req.text] * 2, ["Rome", "Paris"])
        para = target_probs(model, ["Where is the Eiffel Tower? It is in the city of"], ["Rome"])
        lp_after = next_token_logprobs(model, unrelated)
        w = model.mlp_out_weight(editor.layer)
        got = w.detach() @ comps["k_bare"]  # ROME's update maps the bare prompt's key to v*
    assert model.weight_digest() == digest  # bit-exact restore

    assert after[0] > 0.5 and after[0] > after[1], (before, after)
    assert para[0] > before[0], "a paraphrase should move towards the new city too"
    kl = torch.sum(lp_before.exp() * (lp_before - lp_after), dim=-1)
    assert (kl < 0.05).all(), kl  # unrelated next-token distributions barely move
    torch.testing.assert_close(got, comps["v_star"], rtol=1e-3, atol=1e-3)
    assert 0 < edit.info["dw_rel_norm"] < 0.5
