"""loudfacts.leak on a tiny random Llama: the predictor equals ROME's actual change, patching
every path back removes the whole leak, the check fails when it should, bad input is named."""

import math

import numpy as np
import pytest
import torch

from loudfacts import leak
from loudfacts.editing import EditRequest, get_editor
from loudfacts.scoring import next_token_logprobs

FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 5,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
PROMPTS = ["The Louvre is cool. Barack Obama is from",
           "The Louvre is located in the city of",
           "The capital of Japan is"]


pytestmark = pytest.mark.usefixtures("scratch_cache")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.hf.named_parameters()}


def _mlp_out(model, layer, prompt):
    store = {}
    name = leak.MLP_OUT.format(layer)

    def keep(act, hook):
        store["x"] = act.detach().clone()

    with model.bridge.hooks(fwd_hooks=[(name, keep)]):
        model.hf(torch.tensor([model.encode(prompt)]))
    return store["x"][0].double()


@pytest.mark.parametrize("editor_name", ["rome", "r-rome"])
def test_coefficient_times_residual_is_the_change_rome_makes(tiny3, editor_name):
    """c_t · r, from the unedited run alone, equals (edited − unedited) MLP-L output at every
    position of every prompt, to 1e-5; at the bare prompt's subject token ROME's c is 1."""
    editor = get_editor(editor_name, tiny3, **FAST)
    comps = editor.components(REQ)
    coeffs = leak.rome_coefficients(tiny3, editor, comps, PROMPTS)
    before = [_mlp_out(tiny3, 0, p) for p in PROMPTS]
    with editor.edit(REQ).applied():
        after = [_mlp_out(tiny3, 0, p) for p in PROMPTS]
    for co, b, a in zip(coeffs, before, after):
        assert co["write"].shape == b.shape
        torch.testing.assert_close(a - b, co["write"], atol=1e-5, rtol=0)
        assert np.abs(co["c"]).max() > 0
    if editor_name == "rome":
        from loudfacts.tokens import last_subject_token

        t = last_subject_token(tiny3, REQ.text, REQ.subject)
        assert coeffs[1]["c"][t] == pytest.approx(1.0, abs=1e-6)
    s = leak.coefficient_summary(coeffs[0]["c"])
    assert s["c_max"] == pytest.approx(coeffs[0]["c"].max())
    assert s["c_last"] == pytest.approx(coeffs[0]["c"][-1])


def test_patching_every_path_back_removes_the_whole_leak(tiny3):
    editor = get_editor("rome", tiny3, **FAST)
    edit = editor.edit(REQ)
    w0 = _weights(tiny3)
    out = leak.patch_paths(tiny3, edit, 0, PROMPTS[0])
    assert out["p_all"] == pytest.approx(out["p_pre"], abs=1e-6)
    assert abs(out["p_post"] - out["p_pre"]) > 1e-6  # there was something to remove
    assert out["p_heads"].shape == (3, tiny3.bridge.cfg.n_heads)
    assert np.all(out["p_heads"][0] == out["p_post"])  # layer 0 heads read nothing edited
    assert np.any(out["p_heads"][1:] != out["p_post"])
    assert out["subject_positions"]
    # p_pre and p_post agree with unbatched next-token probabilities
    tid = leak.first_target_id(tiny3, "Rome")
    pre = next_token_logprobs(tiny3, [PROMPTS[0]])[0, tid].exp().item()
    with edit.applied():
        post = next_token_logprobs(tiny3, [PROMPTS[0]])[0, tid].exp().item()
    assert out["p_pre"] == pytest.approx(pre, rel=1e-4)
    assert out["p_post"] == pytest.approx(post, rel=1e-4)
    for n, p in tiny3.hf.named_parameters():
        assert torch.equal(p, w0[n]), f"{n} not restored"
    assert not tiny3.active_hooks()


def test_subject_patch_does_nothing_without_the_subject(tiny3):
    editor = get_editor("rome", tiny3, **FAST)
    out = leak.patch_paths(tiny3, editor.edit(REQ), 0, PROMPTS[2], heads=False)
    assert out["subject_positions"] == []
    assert out["p_subject_mlp"] == pytest.approx(out["p_post"], abs=1e-7)
    assert out["p_heads"] is None
    assert out["p_all"] == pytest.approx(out["p_pre"], abs=1e-6)


def test_check_fails_when_the_edit_is_not_at_the_patched_layer(tiny3):
    """Telling patch_paths the edit sits at layer 1 when it is at layer 0: restoring layer 1's
    paths cannot give the unedited probability back, and it says so."""
    editor = get_editor("rome", tiny3, **FAST)
    with pytest.raises(leak.LeakError, match="changes more than the output of MLP 2"):
        leak.patch_paths(tiny3, editor.edit(REQ), 2, PROMPTS[0], check_tol=1e-9)


def test_bad_input_is_named(tiny3):
    editor = get_editor("rome", tiny3, **FAST)
    edit = editor.edit(REQ)
    with pytest.raises(leak.LeakError, match="empty"):
        leak.patch_paths(tiny3, edit, 0, "  ")
    with pytest.raises(leak.LeakError, match="layer 7"):
        leak.patch_paths(tiny3, edit, 7, PROMPTS[0])
    with pytest.raises(leak.LeakError, match="family 'loud'"):
        leak.measure_leak(tiny3, edit, [("loud", PROMPTS[0])])
    with pytest.raises(leak.LeakError, match="no probe"):
        leak.measure_leak(tiny3, edit, [])
    with pytest.raises(leak.LeakError, match="lack 'delta'"):
        leak.rome_coefficients(tiny3, editor, {"k_star": 1, "k_bare": 1}, PROMPTS)
    with pytest.raises(leak.LeakError, match="probe prompt"):
        leak.leak_probes(REQ, ["ok", ""])


def test_measure_leak_rows_and_restore(tiny3):
    editor = get_editor("rome", tiny3, **FAST)
    edit = editor.edit(REQ)
    probes = leak.leak_probes(REQ, [("The Colosseum is in", "Rome"), "Big Ben is in"],
                              ["The capital of Japan is"])
    fams = [f for f, _ in probes]
    assert fams == ["neighbourhood"] * 2 + ["counterfact+"] * 2 + ["tangential"] * 3 + [
        "unrelated"]
    assert probes[2][1] == REQ.statement + " The Colosseum is in"
    assert probes[4][1] == "The Louvre is cool. The Colosseum is in"
    w0 = _weights(tiny3)
    df = leak.measure_leak(tiny3, edit, probes)
    assert len(df) == len(probes)
    np.testing.assert_allclose(df["dp"], df["p_new_post"] - df["p_new_pre"], atol=1e-12)
    assert (df["kl"] >= 0).all() and (df["kl"] > 0).any()
    tid = leak.first_target_id(tiny3, "Rome")
    pre = next_token_logprobs(tiny3, df["prompt"].tolist())[:, tid].exp().numpy()
    np.testing.assert_allclose(df["p_new_pre"], pre, rtol=1e-5)
    for n, p in tiny3.hf.named_parameters():
        assert torch.equal(p, w0[n])


def test_removed_on_hand_numbers():
    assert leak.removed(0.5, 0.1, 0.1) == pytest.approx(1.0)
    assert leak.removed(0.5, 0.5, 0.1) == pytest.approx(0.0)
    assert leak.removed(0.5, 0.3, 0.1) == pytest.approx(0.5)
    assert math.isnan(leak.removed(0.1, 0.05, 0.1))  # no leak: nothing to remove
    got = leak.removed(0.5, np.array([[0.1, 0.3]]), 0.1)
    np.testing.assert_allclose(got, [[1.0, 0.5]])


def test_spearman_ci_and_groups():
    x = np.arange(20.0)
    r = leak.spearman_ci(x, x ** 3, n_resamples=200)
    assert r["rho"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0)
    assert r["n"] == 20
    r = leak.spearman_ci(x, -x, groups=np.repeat(np.arange(5), 4), n_resamples=200)
    assert r["rho"] == pytest.approx(-1.0) and r["n"] == 5
    rng = np.random.default_rng(0)
    noisy = leak.spearman_ci(rng.normal(size=200), rng.normal(size=200), n_resamples=300)
    assert noisy["ci_low"] < 0 < noisy["ci_high"]
    assert math.isnan(leak.spearman_ci(np.ones(5), x[:5])["rho"])
    with pytest.raises(leak.LeakError, match="groups"):
        leak.spearman_ci(x, x, groups=[1, 2])
    with pytest.raises(leak.LeakError, match="non-empty"):
        leak.coefficient_summary([])
