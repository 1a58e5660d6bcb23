"""loudfacts.leak on the embedded model (GQA heads): the Louvre -> Rome leak after a tangential
mention, traced back to the edited MLP's write and removed in full by the patching check."""

import numpy as np
import pytest
import torch

from loudfacts import leak
from loudfacts.editing import EditRequest, get_editor

pytestmark = pytest.mark.integration

# The same quick statistics and prefixes as test_rome_smollm2 (cached after its first run).
QUICK = {"mom2_n_tokens": 20_480, "prefix_recipe": [[5, 2], [10, 2]]}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
LOUD = "The Louvre is cool. Barack Obama is from"


def test_tangential_leak_is_the_subject_write_and_patching_removes_it(model):
    editor = get_editor("rome", model, **QUICK)
    edit = editor.edit(REQ)
    digest = model.weight_digest()
    out = leak.patch_paths(model, edit, editor.layer, LOUD)
    assert model.weight_digest() == digest and not model.active_hooks()
    assert out["p_post"] > 2 * out["p_pre"], out  # the loud fact: Rome leaks into Obama
    assert out["p_all"] == pytest.approx(out["p_pre"], abs=1e-6)
    assert leak.removed(out["p_post"], out["p_subject_mlp"], out["p_pre"]) > 0.5
    assert out["p_heads"].shape == (model.n_layers, model.bridge.cfg.n_heads)
    heads = leak.removed(out["p_post"], out["p_heads"][editor.layer + 1:], out["p_pre"])
    assert np.isfinite(heads).all() and heads.max() > 0.01

    comps = editor.components(REQ)
    co = leak.rome_coefficients(model, editor, comps, [LOUD, "Barack Obama is from"])
    subj = out["subject_positions"]
    # the subject's last token gets a write like the rewrite prompt's (c near 1); a prompt
    # without the subject gets far less
    assert co[0]["c"][subj[-1]] > 0.3
    assert np.abs(co[1]["c"]).max() < co[0]["c"][subj[-1]]
    torch.testing.assert_close(co[0]["write"][subj[-1]],
                               co[0]["c"][subj[-1]] * comps["delta"].double().cpu())
