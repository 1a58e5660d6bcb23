"""The default ROME editor against numbers that kmeng01/rome's own code produced on the embedded
model (tests/data/rome_reference_smollm2.json).

How the file was made: the reference repository's `rome/` and `util/` packages, unmodified but
for "cuda" -> "cpu" and `n_embd` -> `hidden_size`, ran `execute_rome` on SmolLM2 with module
templates `model.layers.{}.mlp.down_proj` etc., ROME's GPT-2 XL hparams at layer 5, the context
templates recorded in the file (ROME's own are unseeded), and our C from all the shipped text;
the per-step losses were read from its printout at full precision. P(new) is exp(-mean NLL)
of " target" after the rewrite prompt, for the reference's weight change and for ours.
"""

import json
from pathlib import Path

import pytest

from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.rome import clear_components_memo

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data" / "rome_reference_smollm2.json"


def test_v_star_steps_match_the_reference_code_on_three_facts(model):
    ref = json.loads(DATA.read_text())
    editor = get_editor("rome", model)
    editor.use_context_templates(ref["templates"])
    assert editor.deviations() == {"prefix_starts": ["The", "Therefore", "Because", "I", "You"]}
    for fact in ref["facts"]:
        clear_components_memo()
        req = EditRequest(fact["prompt_template"], fact["subject"], fact["target_new"],
                          fact["target_true"])
        hist = editor.components(req)["v_history"]
        got = [[h["loss"], h["nll"], h["kl"], h["wd"]] for h in hist]
        want = fact["reference_losses"]
        assert len(got) == len(want), (req.text, len(got), len(want))
        for step, (g, w) in enumerate(zip(got, want)):
            for name, a, b, rel in zip(("loss", "nll", "kl", "wd"), g, w, (1e-4, 1e-4, 1e-2, 1e-4)):
                assert a == pytest.approx(b, rel=rel, abs=1e-6), (req.text, step, name, a, b)
