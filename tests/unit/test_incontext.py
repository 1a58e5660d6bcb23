"""The patch-context sweep (`loudfacts.incontext`) and donor coverage, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from loudfacts import incontext
from loudfacts.editing import EditError, EditRequest
from loudfacts.editing.patching import donor_coverage
from loudfacts.scoring import target_probs

REQS = [EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris", case_id=1),
        EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French",
                    case_id=2)]


@pytest.fixture(scope="module")
def swept(tiny_llama):
    return incontext.sweep(tiny_llama, REQS, layers=[0, 1], windows=[(0, 2)],
                           delta_layers=[0], scales=(1.0, 3.0), other_repeats=(1,))


def test_unpatched_rows_are_the_plain_probabilities(tiny_llama, swept):
    for req in REQS:
        once = swept[(swept.case_id == req.case_id) & (swept.repeats == 1)].set_index("variant")
        assert set(once.index) == {incontext.IN_CONTEXT, incontext.WINDOW}  # other_repeats=(1,)
        one = incontext.context_text(req, 1)
        want = target_probs(tiny_llama, [one], [req.target_new])
        assert abs(once.loc[incontext.IN_CONTEXT, "p_new"] - float(want[0])) < 1e-6
        rows = swept[(swept.case_id == req.case_id) & (swept.repeats == 2)].set_index("variant")
        for variant, text in [(incontext.BARE, req.text),
                              (incontext.IN_CONTEXT, incontext.context_text(req, 2))]:
            want = target_probs(tiny_llama, [text, text], [req.target_new, req.target_true])
            got = torch.tensor([rows.loc[variant, "p_new"], rows.loc[variant, "p_true"]],
                               dtype=torch.float32)
            assert torch.allclose(got, want.float(), rtol=1e-5, atol=1e-7)
        assert bool(rows.loc[incontext.BARE, "success"]) == bool(
            rows.loc[incontext.BARE, "p_new"] > rows.loc[incontext.BARE, "p_true"])


def test_the_tail_patch_reproduces_the_context_run(swept):
    """Every position from the subject on, at every layer, from the context run: the bare
    prompt's next-token distribution is the context run's."""
    for cid in (1, 2):
        rows = swept[(swept.case_id == cid) & (swept.repeats == 2)].set_index("variant")
        assert rows.loc[incontext.CONTROL, "control_gap"] < 1e-5
        assert abs(rows.loc[incontext.IN_CONTEXT, "p_new"]
                   - rows.loc[incontext.BARE, "p_new"]) > 1e-6  # the context does something


def test_a_unit_mix_equals_the_plain_subject_patch_and_a_window_of_one(tiny_llama):
    """scale 1 of the context direction is the context state itself; a window [L, L+1) is the
    single-layer patch at L."""
    df = incontext.sweep(tiny_llama, REQS[:1], layers=[0], windows=[(0, 1)],
                         delta_layers=[0], scales=(1.0,), other_repeats=())
    by = df.set_index("variant")["p_new"]
    assert abs(by[incontext.DELTA] - by[incontext.SUBJECT]) < 1e-6
    assert abs(by[incontext.WINDOW] - by[incontext.SUBJECT]) < 1e-7
    assert abs(by[incontext.SUBJECT] - by[incontext.BARE]) > 1e-7  # the patch does something


def test_summary_rates_and_intervals(swept):
    s = incontext.summarize(swept)
    assert len(s[s.variant == incontext.IN_CONTEXT]) == 2  # stated once and twice
    bare = s[s.variant == incontext.BARE].iloc[0]
    assert bare["n"] == 2 and 0 <= bare["success_low"] <= bare["success"] <= bare["success_high"]
    assert len(s[s.variant == incontext.SUBJECT]) == 2  # layers 0 and 1


def test_bad_input_is_named(tiny_llama):
    with pytest.raises(EditError, match="target_true"):
        incontext.sweep(tiny_llama, [EditRequest("{} is in", "The Louvre", "Rome")])
    with pytest.raises(EditError, match="layer 99"):
        incontext.sweep(tiny_llama, REQS[:1], layers=[99])
    with pytest.raises(EditError, match="repeats"):
        incontext.context_text(REQS[0], 0)


def test_donor_coverage_counts_same_and_any_template():
    from loudfacts.data import CounterFactRecord

    def rec(cid, subject, prompt, true, new):
        return CounterFactRecord(case_id=cid, subject=subject, prompt=prompt, target_true=true,
                                 target_new=new, relation=prompt)

    city = "{} is located in the city of"
    records = [rec(1, "The Louvre", city, "Paris", "Rome"),       # Colosseum: same template
               rec(2, "Big Ben", city, "London", "Berlin"),       # Berlin only elsewhere
               rec(3, "The Kremlin", city, "Moscow", "Oslo")]     # no donor
    pool = records + [rec(4, "The Colosseum", city, "Rome", "Paris"),
                      rec(5, "Angela Merkel", "{} was born in", "Berlin", "Paris"),
                      rec(6, "The Kremlin", "{} is in", "Oslo", "Rome")]  # its own subject
    assert donor_coverage(records, pool) == {"records": 3, "same_template": 1,
                                             "any_template": 2}
