"""rome-scaled on a tiny random Llama: its update is delta_scale times ROME's, from ROME's own
(shared) components; at scale 1 it is ROME's edit; it restores the model alone and stacked; bad
scales are named."""

import math

import pytest
import torch

from loudfacts.editing import EditRequest, available_editors, compose, get_editor

FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 6,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3, "early_stop": 0.0,
        "clamp_norm_factor": 1000.0, "v_weight_decay": 0.0}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
REQ2 = EditRequest("{} plays the sport of", "Michael Jordan", "tennis", "basketball")

pytestmark = pytest.mark.usefixtures("scratch_cache")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.hf.named_parameters()}


def _same(model, w0):
    return all(torch.equal(p, w0[n]) for n, p in model.hf.named_parameters())


def _edited_weight(model, edit, path):
    with edit.applied():
        return model.module(path).weight.detach().to(torch.float64).clone()


def test_registered():
    assert "rome-scaled" in available_editors()


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_update_is_scale_times_romes_from_romes_components(tiny3, scale):
    rome = get_editor("rome", tiny3, **FAST)
    scaled = get_editor("rome-scaled", tiny3, delta_scale=scale, **FAST)
    a = rome.components(REQ)
    b = scaled.components(REQ)
    assert b["reused"]  # ROME's optimisation, not a second one
    assert torch.equal(a["delta"], b["delta"])
    torch.testing.assert_close(scaled.update_for(b), scale * rome.update_for(a), atol=0, rtol=0)

    path = tiny3.arch.mlp_out.format(rome.layer)
    w0 = tiny3.module(path).weight.detach().to(torch.float64).clone()
    dw_rome = _edited_weight(tiny3, rome.edit(REQ), path) - w0
    dw_scaled = _edited_weight(tiny3, scaled.edit(REQ), path) - w0
    assert dw_rome.abs().max() > 0
    # the weights are float32: the edited weights agree to float32 rounding of w0 + ΔW
    tol = 4 * torch.finfo(torch.float32).eps * float(w0.abs().max() + dw_rome.abs().max())
    assert float((dw_scaled - scale * dw_rome).abs().max()) <= tol


def test_layer_output_moves_by_scale_times_delta_at_the_bare_key(tiny3):
    """ROME maps the bare prompt's key to target_init + δ; the scaled edit to target_init + sδ."""
    s = 0.4
    rome = get_editor("rome", tiny3, **FAST)
    comps = rome.components(REQ)
    scaled = get_editor("rome-scaled", tiny3, delta_scale=s, **FAST)
    path = tiny3.arch.mlp_out.format(rome.layer)
    k = comps["k_bare"].to(torch.float32)
    before = tiny3.module(path)(k)
    with scaled.edit(REQ).applied():
        after = tiny3.module(path)(k)
    torch.testing.assert_close(after - before, s * comps["delta"].to(after.dtype),
                               atol=1e-4, rtol=1e-3)


def test_restores_the_model_alone_and_stacked(tiny3):
    w0 = _weights(tiny3)
    e1 = get_editor("rome-scaled", tiny3, delta_scale=0.5, **FAST).edit(REQ)
    with e1.applied():
        assert not _same(tiny3, w0)
    assert _same(tiny3, w0)
    e2 = get_editor("rome", tiny3, **FAST).edit(REQ2)
    with compose([e1, e2]).applied():
        assert not _same(tiny3, w0)
    assert _same(tiny3, w0)
    with pytest.raises(RuntimeError):
        with e1.applied():
            raise RuntimeError("inside")
    assert _same(tiny3, w0)


def test_deviations_name_the_scale(tiny3):
    ed = get_editor("rome-scaled", tiny3, delta_scale=0.25, **FAST)
    assert ed.deviations()["delta_scale"] == 0.25
    assert "delta_scale" not in ed.rome_editor().hparams


@pytest.mark.parametrize("bad", [-0.5, True, math.nan, math.inf, "half"])
def test_bad_scale_is_named(tiny3, bad):
    with pytest.raises(ValueError, match="delta_scale"):
        get_editor("rome-scaled", tiny3, delta_scale=bad, **FAST)
