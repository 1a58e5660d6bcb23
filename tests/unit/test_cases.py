"""`loudfacts.cases`: one Case type built three ways, and `score`, the one probe scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loudfacts.cases import (
    ROLES,
    TEMPLATE_PARAPHRASES,
    Case,
    CaseError,
    Probe,
    ladder_probes,
    paired,
    score,
    score_edits,
)
from loudfacts.data import CounterFactRecord
from loudfacts.editing.base import EditRequest, WeightEdit
from loudfacts.implications import implication_family, implications_path
from loudfacts.probes import UNRELATED_PROMPTS, ladder_prefixes
from loudfacts.scoring import target_probs

RECORD = CounterFactRecord(
    case_id=7, subject="The Louvre", prompt="{} is located in the city of", target_true="Paris",
    target_new="Rome", relation="{} is located in the city of",
    paraphrase_prompts=["The Louvre, a museum, is in the city of"],
    neighborhood_prompts=["The Eiffel Tower is located in the city of"],
    neighborhood_true=["Paris"])


def test_from_counterfact_holds_every_role_with_its_objects():
    neighbours = [("The Eiffel Tower is located in the city of", "Paris"),
                  ("Notre-Dame is located in the city of", "Paris")]
    case = Case.from_counterfact(RECORD, neighbours=neighbours)
    assert case.id == 7 and case.request.text == "The Louvre is located in the city of"
    assert case.roles == ["rewrite", "paraphrase", "neighbourhood", "counterfact+",
                          "tangential", "ladder"]
    assert [p.prompt for p in case.of_role("neighbourhood")] == [p for p, _ in neighbours]
    plus = case.of_role("counterfact+")
    assert plus[0].prompt == ("The Louvre is located in the city of Rome. "
                              "The Eiffel Tower is located in the city of")
    assert case.of_role("tangential")[1].prompt == (
        "The Louvre is cool. Notre-Dame is located in the city of")
    assert all(p.new == "Rome" and p.true == "Paris" for p in case.probes if p.role != "ladder")
    # the ladder: every rung before every unrelated prompt not already answered by "Rome"
    ladder = case.of_role("ladder")
    assert len(ladder) == len(ladder_prefixes(case.request)) * len(UNRELATED_PROMPTS)
    assert all(p.true is None for p in ladder)
    assert {p.kind for p in ladder} == set(ladder_prefixes(case.request))


def test_from_counterfact_falls_back_to_the_records_own_neighbours():
    case = Case.from_counterfact(RECORD, ladder=False)
    assert [(p.prompt, p.true) for p in case.of_role("neighbourhood")] == [
        ("The Eiffel Tower is located in the city of", "Paris")]
    assert "ladder" not in case.roles


def test_ladder_leaves_out_prompts_the_new_object_already_answers():
    req = EditRequest("{} is located in the city of", "The Louvre", "Japan", "Paris")
    prompts = {p.prompt.split(". ")[-1] for p in ladder_probes(req)}
    assert "The capital of Japan is" not in prompts and "Apple was founded by" in prompts


def test_from_implication_reads_a_line_of_the_probe_file():
    lines = [json.loads(x) for x in implications_path().read_text().splitlines() if x.strip()]
    for line in lines[:3] + lines[-3:]:
        case = Case.from_implication(line)
        impl = case.of_role("implication")
        assert len(impl) == len(line["probes"])
        assert {p.family for p in impl} == {implication_family(line)}
        assert [(p.new, p.true) for p in impl] == [(q["new"], q["old"]) for q in line["probes"]]
        assert case.of_role("rewrite")[0].new == line["edit"]["target_new"]


def test_from_dict_fills_the_subject_and_takes_other_true_objects():
    case = Case.from_dict({
        "prompt": "{} is located in the city of", "subject": "The Louvre",
        "target_new": "Rome", "target_true": "Paris", "id": "louvre",
        "probes": {"paraphrase": ["{} can be visited in the city of"],
                   "neighbourhood": [("Big Ben is located in the city of", "London")],
                   "ladder": ["Apple was founded by"]}})
    assert case.of_role("paraphrase")[0].prompt == "The Louvre can be visited in the city of"
    assert case.of_role("neighbourhood")[0].true == "London"
    assert len(case.of_role("ladder")) == len(ladder_prefixes(case.request))


@pytest.mark.parametrize("bad, words", [
    ({"prompt": "{} is in", "subject": "X", "target_new": "a"}, ["target_true"]),
    ({"prompt": "{} is in", "subject": "X", "target_new": "a", "target_true": "b",
      "probes": {"paraphrase": "X is found in"}}, ["paraphrase", "list"]),
    ({"prompt": "{} is in", "subject": "X", "target_new": "a", "target_true": "b",
      "probes": {"gossip": ["X is"]}}, ["gossip", "role"]),
])
def test_bad_hand_written_cases_are_refused_with_the_input_named(bad, words):
    with pytest.raises(CaseError) as err:
        Case.from_dict(bad)
    assert all(w in str(err.value) for w in words)


def test_probe_refuses_an_unknown_role_or_an_empty_object():
    with pytest.raises(CaseError, match="role='loud'"):
        Probe("X is", "loud", "a")
    with pytest.raises(CaseError, match="new=''"):
        Probe("X is", "rewrite", "")
    assert "implication" in ROLES


def test_score_equals_teacher_forced_probabilities(tiny_llama):
    probes = [Probe("Alpha lives near the", "rewrite", "cat", "Paris"),
              Probe("The sky is", "neighbourhood", "blue", "x"),
              Probe("Zulu", "ladder", "moon", None, kind="none")]
    df = score(tiny_llama, probes)
    want_new = target_probs(tiny_llama, [p.prompt for p in probes], [p.new for p in probes])
    want_true = target_probs(tiny_llama, [p.prompt for p in probes[:2]],
                             [p.true for p in probes[:2]])
    assert np.allclose(df["p_new"], want_new.double().numpy(), rtol=1e-4, atol=1e-7)
    assert np.allclose(df["p_true"][:2], want_true.double().numpy(), rtol=1e-4, atol=1e-7)
    assert np.isnan(df["p_true"][2]) and df["new_wins"][2] is None
    assert df["new_wins"][0] == bool(df["p_new"][0] > df["p_true"][0])
    assert list(df["role"]) == ["rewrite", "neighbourhood", "ladder"]
    with pytest.raises(CaseError, match="Probe objects"):
        score(tiny_llama, [("Alpha", "cat")])


def test_score_edits_scores_each_edit_and_restores_the_model(tiny_llama):
    req = EditRequest("{} lives near the", "Alpha", "cat", "Paris")
    w = tiny_llama.hf.lm_head.weight
    edit = WeightEdit(tiny_llama, {"lm_head": w.detach() + 0.05 * torch.randn_like(w)}, req,
                      "test-add")
    case = Case.from_dict({"prompt": req.prompt, "subject": req.subject,
                           "target_new": req.target_new, "target_true": req.target_true,
                           "probes": {"paraphrase": ["Alpha is found near the"]}})
    digest = tiny_llama.weight_digest()
    df = score_edits(tiny_llama, {"test-add": edit}, case.probes)
    assert tiny_llama.weight_digest() == digest
    assert list(df["editor"]) == ["unedited"] * 2 + ["test-add"] * 2
    base = score(tiny_llama, case.probes)
    assert np.allclose(df["p_new"][:2], base["p_new"])
    assert not np.allclose(df["p_new"][2:], base["p_new"])


def test_record_metrics_from_hand_built_scores():
    import math

    import pandas as pd

    from loudfacts.metrics import record_metrics

    rows = [("rewrite", None, 0.6, 0.3), ("paraphrase", "true paraphrase", 0.2, 0.4),
            ("paraphrase", "generation-style", 0.5, 0.1),
            ("neighbourhood", None, 0.1, 0.7), ("neighbourhood", None, 0.6, 0.2),
            ("counterfact+", None, 0.5, 0.4), ("counterfact+", None, 0.9, 0.05),
            ("tangential", None, 0.3, 0.6), ("ladder", "none", 0.9, math.nan)]
    scores = pd.DataFrame(rows, columns=["role", "kind", "p_new", "p_true"])
    pre = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]), -1)
    post = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), -1)
    m = record_metrics(scores, pre, post)
    assert m["ES"] == 1.0 and m["EM"] == pytest.approx(0.3)
    assert m["PS"] == 0.5 and m["PM"] == pytest.approx(0.1)  # (-0.2 + 0.4) / 2
    assert m["PS_para"] == 0.0  # the one true paraphrase: 0.2 < 0.4
    assert m["NS"] == 0.5 and m["NM"] == pytest.approx(0.1)  # (0.6 - 0.4) / 2
    assert m["NS+"] == 0.0 and m["NM+"] == pytest.approx(-0.475)
    assert m["NS+cool"] == 1.0
    kl0 = float((pre[0].exp() * (pre[0] - post[0])).sum())
    assert m["NKL"] == pytest.approx(kl0 / 2, rel=1e-5)  # the second row did not move
    assert m["Score"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / 0.5))
    # no neighbours, no counterfact+ prompts: NaN, and Score is taken over ES and PS
    bare = record_metrics(scores[scores["role"].isin(["rewrite", "paraphrase"])])
    assert math.isnan(bare["NS"]) and math.isnan(bare["NKL"])
    assert bare["Score"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / 1.0))


def test_from_counterfact_marks_true_paraphrases():
    rec = CounterFactRecord(
        case_id=1, subject="Danielle Darrieux", prompt="The mother tongue of {} is",
        target_true="French", target_new="English", relation="P103",
        paraphrase_prompts=["Danielle Darrieux's greatest weakness is",
                            "Where she lived. Danielle Darrieux, a native"])
    kinds = {p.prompt: p.kind for p in Case.from_counterfact(rec, ladder=False).of_role(
        "paraphrase")}
    want = set(rec.true_paraphrase_prompts)
    assert {p for p, k in kinds.items() if k == "true paraphrase"} == want


def test_from_implication_adds_paraphrases_neighbours_and_the_tangential_rung():
    line = {"id": "transitive-landmark-a", "kind": "transitive",
            "edit": {"prompt": "{} is located in the city of", "subject": "The Louvre",
                     "target_true": "Paris", "target_new": "Rome"},
            "probes": [{"prompt": "The Louvre is in", "old": "France", "new": "Italy",
                        "phrasing": "short"}]}
    same = dict(line, id="b", edit=dict(line["edit"], subject="Big Ben", target_true="London"))
    answers_new = dict(line, id="c", edit=dict(line["edit"], subject="The Forum",
                                               target_true="Rome"))
    other_template = dict(line, id="d", edit=dict(line["edit"], prompt="{} was built in"))
    bare = Case.from_implication(line)
    assert bare.roles == ["rewrite", "implication"]  # what score_implications reads
    c = Case.from_implication(line, paraphrases=True, unrelated=["Rome is", "Obama is from"],
                              neighbours_from=[line, same, answers_new, other_template])
    para = c.of_role("paraphrase")
    assert [p.phrasing for p in para] == TEMPLATE_PARAPHRASES[line["edit"]["prompt"]]
    assert para[0].prompt == "The Louvre can be found in the city of"
    (nb,) = c.of_role("neighbourhood")  # itself, a true object = Rome, another template: out
    assert (nb.prompt, nb.true, nb.new) == ("Big Ben is located in the city of", "London", "Rome")
    (loud,) = c.of_role("ladder")  # "Rome is" already names the new object
    assert (loud.prompt, loud.kind, loud.true) == ("The Louvre is cool. Obama is from",
                                                   "tangential", None)
    (imp,) = c.of_role("implication")
    assert (imp.phrasing, imp.family, imp.true) == ("short", "transitive, subject-side", "France")
    with pytest.raises(CaseError, match="neighbours_from"):
        Case.from_implication(line, neighbours_from=[{"id": "x"}])


def test_paired_puts_each_edit_beside_the_unedited_probe():
    import pandas as pd

    table = pd.DataFrame({
        "editor": ["unedited", "unedited", "rome", "rome", "ft", "ft"],
        "probe": [0, 1, 0, 1, 0, 1], "role": ["rewrite", "ladder"] * 3,
        "kind": [None, "tangential"] * 3, "prompt": ["p", "q"] * 3,
        "p_new": [0.1, 0.01, 0.8, 0.2, 0.3, 0.02],
        "p_true": [0.7, np.nan, 0.1, np.nan, 0.4, np.nan], "new_wins": [False, None] * 3})
    out = paired(table)
    assert list(out["editor"]) == ["rome", "rome", "ft", "ft"]
    assert out["p_new_pre"].tolist() == [0.1, 0.01, 0.1, 0.01]
    assert out["p_new_post"].tolist() == [0.8, 0.2, 0.3, 0.02]
    assert out["p_true_pre"].iloc[0] == 0.7 and out["p_true_post"].iloc[2] == 0.4
    from loudfacts.implications import outcome_summary, probe_outcomes

    o = probe_outcomes(out)
    # rewrite: new beats true after (rome yes, ft no); loud: P(new) rose by > 0.05 (rome only)
    assert o["success"].tolist() == [True, True, False, False]
    s = outcome_summary(o).set_index(["editor", "set"])["score"]
    assert s[("rome", "loud")] == 1.0 and s[("ft", "rewrite")] == 0.0
    with pytest.raises(CaseError, match="unedited"):
        paired(table[table.editor != "unedited"])
