"""Evaluation on the embedded model: known facts, the implication file, a real edit."""

from __future__ import annotations

import pytest

from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.editing.base import EditRequest, available_editors, get_editor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records():
    return load_counterfact("edit-1k", n=6)


def test_unedited_counterfact_metrics(model, records):
    df = ev.evaluate(model, "unedited", records, n_neighbours=3, generation=False,
                     progress=False)
    known = df[df["known"]]
    assert 0 < len(known) <= len(records)
    assert (known["ES"] == 0).all(), "unedited model cannot prefer target_new on known records"
    assert known["NKL"].abs().max() < 1e-5
    assert df.attrs["n_unknown"] == len(df) - len(known)


def test_implication_cases_still_known(model):
    cases = ev.load_implications(known_only=True)
    assert len(cases) >= 40
    sample = [c for k in ev.IMPLICATION_KINDS for c in cases if c["kind"] == k][::8]
    checks = ev.verify_implications(model, sample)
    assert checks["known"].all(), checks[~checks["known"]]


def test_real_edit_loud_fact_ladder(model):
    # the cheapest real editor present (ROME's v* optimisation is slow on a loaded CPU)
    have = available_editors()
    name = next((e for e in ("patch-donor", "patch-context", "ft", "hook-delta", "rome") if e in have), None)
    if name is None:
        pytest.skip("no real editor present")
    req = EditRequest(prompt="{} is located in the city of", subject="The Eiffel Tower",
                      target_new="Rome", target_true="Paris")
    edit = get_editor(name, model).edit(req)
    lad = ev.loud_fact_ladder(model, edit, req, ev.UNRELATED_PROMPTS[:3])
    s = lad.groupby("step")[["p_new_pre", "p_new_post"]].mean()
    # the statement rung puts "Rome" in the context: it must raise P(Rome) on average
    assert s.loc["statement", "p_new_post"] > s.loc["none", "p_new_post"]
    assert lad["p_new_post"].between(0, 1).all()
