"""FT and FT+L on the embedded SmolLM2-135M: a known fact flips, the model is restored."""

from __future__ import annotations

import pytest
import torch

from loudfacts.editing import EditError, EditRequest, get_editor
from loudfacts.scoring import target_probs

pytestmark = pytest.mark.integration

LOUVRE = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")


def _p(model, req=LOUVRE):
    return target_probs(model, [req.text, req.text], [req.target_new, req.target_true]).tolist()


def test_ft_flips_a_known_fact_and_restores(model):
    d0 = model.weight_digest()
    p_new0, p_true0 = _p(model)
    assert p_true0 > 0.5 > p_new0, "the embedded model should know the Louvre is in Paris"
    edit = get_editor("ft", model).edit(LOUVRE)  # the shipped hparams/ft/smollm2-135m.json
    assert model.weight_digest() == d0
    assert not any(p.requires_grad for p in model.hf.parameters())
    with edit.applied():
        p_new, p_true = _p(model)
        assert p_new > p_true, f"FT did not flip the fact: P(Rome) {p_new:.3f}, P(Paris) {p_true:.3f}"
        # Something unrelated keeps its answer.
        other = target_probs(model, ["The Colosseum is located in the city of"], ["Rome"])
        assert float(other[0]) > 0.3
    assert model.weight_digest() == d0


def test_ft_l_bound_and_restore_on_the_embedded_model(model):
    d0 = model.weight_digest()
    editor = get_editor("ft-l", model, steps=8)
    eps = editor.hparams["eps"]
    path = model.arch.mlp_out.format(editor.hparams["layer"])
    w0 = model.module(path).weight.detach().clone()
    edit = editor.edit(LOUVRE)
    assert list(edit.new_weights) == [path]
    delta = (edit.new_weights[path].double() - w0.double()).abs()
    assert float(delta.max()) <= eps
    assert float(delta.max()) > 0.5 * eps, "the bound never became active"
    p_new0, _ = _p(model)
    with edit.applied():
        assert _p(model)[0] > p_new0
    assert model.weight_digest() == d0
    assert torch.equal(model.module(path).weight, w0)


def test_bad_request_on_the_embedded_model(model):
    d0 = model.weight_digest()
    with pytest.raises(EditError):
        get_editor("ft", model).edit({"prompt": "{} is in", "subject": "X", "target_new": "Y"})
    assert model.weight_digest() == d0
