"""CounterFact normalisation (both layouts), known facts, corpora, data lookup."""

import json

import pytest

from loudfacts import data
from loudfacts.data import (
    DataNotFoundError,
    data_path,
    load_counterfact,
    load_known_facts,
    load_text,
    normalize_counterfact,
    strip_wiki_markup,
)

ROME_LAYOUT = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this. Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "Michel Rocard is a native speaker of"],
    "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}
FLAT_LAYOUT = {
    "case_id": 7,
    "prompt": "Apple A5 was created by",
    "target_new": "Google",
    "subject": "Apple A5",
    "ground_truth": "Apple",
    "rephrase_prompt": "Apple A5 is my favorite product out of everything created by",
    "locality_prompt": "Calendar and Contacts Server was created by",
    "locality_ground_truth": "Apple",
}


def test_both_layouts_normalise_to_one_record_type():
    rome, flat = normalize_counterfact([ROME_LAYOUT, FLAT_LAYOUT])
    assert rome.layout == "rome" and flat.layout == "flat"
    assert rome.prompt == "The mother tongue of {} is" and rome.relation == "P103"
    assert rome.target_true == "French" and rome.target_new == "English"
    assert rome.neighborhood_true == ["French", "French"]
    assert rome.generation_prompts and rome.attribute_prompts
    assert flat.prompt == "{} was created by" and flat.text == "Apple A5 was created by"
    assert flat.relation == "{} was created by"
    assert flat.neighborhood_prompts == ["Calendar and Contacts Server was created by"]
    assert flat.neighborhood_true == ["Apple"]


def test_malformed_records_are_dropped_and_counted(capsys):
    bad_subject = dict(FLAT_LAYOUT, subject="Banana")
    empty_target = dict(FLAT_LAYOUT, target_new=" ")
    missing = {"case_id": 3}
    out = normalize_counterfact([FLAT_LAYOUT, bad_subject, empty_target, missing])
    assert len(out) == 1
    assert sum(normalize_counterfact.last_dropped.values()) == 3
    assert "dropped 3 of 4" in capsys.readouterr().out


def test_shared_counterfact_and_known_facts_load():
    recs = load_counterfact("edit-1k")
    assert len(recs) == 1000 and all("{}" in r.prompt for r in recs)
    assert all(r.subject in r.text for r in recs)
    facts = load_known_facts()
    assert len(facts) > 1000
    assert all(f.prompt.replace("{}", f.subject) == f.text for f in facts)


def test_unknown_split_and_missing_file_have_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="split 'nope'"):
        load_counterfact("nope")
    monkeypatch.setattr(data, "SHARED_DATA", tmp_path / "none")
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path)
    monkeypatch.delenv("LOUDFACTS_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="known_1000.json.*searched.*rome.baulab.info"):
        data_path("known/known_1000.json")


def test_loudfacts_data_env_takes_precedence(monkeypatch, tmp_path):
    (tmp_path / "counterfact").mkdir()
    (tmp_path / "counterfact" / "counterfact-edit-1k.json").write_text(json.dumps([FLAT_LAYOUT]))
    monkeypatch.setenv("LOUDFACTS_DATA", str(tmp_path))
    recs = load_counterfact("edit-1k")
    assert [r.case_id for r in recs] == [7]


@pytest.mark.parametrize("name", ["wikitext", "wiki-xml", "lee"])
def test_text_corpora_load_as_prose(name):
    text = load_text(name)
    assert len(text) > 100_000
    assert "{{" not in text and "[[" not in text and "<ref" not in text


def test_wiki_markup_is_stripped():
    raw = "'''Paris''' is the [[capital city|capital]] of [[France]].{{cite|x={{y}}}}<ref>a</ref>"
    assert strip_wiki_markup(raw) == "Paris is the capital of France."


def test_a_field_of_the_wrong_type_names_the_record_and_field(tmp_path):
    from loudfacts.data import RecordsFileError

    rome = {**ROME_LAYOUT, "requested_rewrite": {**ROME_LAYOUT["requested_rewrite"],
                                                 "subject": 1234}}
    with pytest.raises(ValueError, match=r"case_id 0: field 'requested_rewrite.subject'"):
        normalize_counterfact([rome])
    with pytest.raises(ValueError, match=r"case_id 7: field 'subject'"):
        normalize_counterfact([dict(FLAT_LAYOUT, subject=5)])
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([FLAT_LAYOUT, rome]))
    with pytest.raises(RecordsFileError, match=r"cf\.json: record case_id 0"):
        load_counterfact(str(path))


def test_unusable_records_files_and_counts_are_errors_naming_the_file(tmp_path):
    from loudfacts.data import RecordsFileError

    bad = tmp_path / "bad.json"
    bad.write_text('[{"case_id": 1,}]')
    with pytest.raises(RecordsFileError, match=r"bad\.json: .*line 1, column 16"):
        load_counterfact(str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(RecordsFileError, match=r"empty\.json: no usable"):
        load_counterfact(str(empty))
    with pytest.raises(ValueError, match="positive"):
        load_counterfact("edit-1k", n=-1)  # was: the first 999 records


@pytest.mark.parametrize("prompt, subject, want", [
    # CounterFact paraphrase prompts: unrelated text, then the relation rephrased
    ("The studio has 145 employees. Mel Powell, who plays", "Mel Powell", True),
    ("References \n\nCategory:Populated places in Chenaran County Ferrari 458, created by",
     "Ferrari 458", True),
    ("The event is held in the Palazzo. The official language of Northwest Territories is",
     "Northwest Territories", True),
    ('He said "no!" Big Pig performs', "Big Pig", True),
    # its generation prompts, which the flattened layout mixes in
    ("David Robinson's greatest weakness is", "David Robinson", False),
    ("Where Shree Pundalik is from, people speak the language of", "Shree Pundalik", False),
    ("The headquarters of The Weather Channel is surrounded by", "The Weather Channel", False),
    ("Edward J. King writes in", "Edward J. King", False),  # a full stop inside the subject
    ("Nothing about the subject here.", "Mel Powell", False),
])
def test_true_paraphrases_are_told_from_generation_style_prompts(prompt, subject, want):
    assert data.is_true_paraphrase(prompt, subject) is want


def test_record_true_paraphrases_by_layout():
    flat = normalize_counterfact([FLAT_LAYOUT])[0]
    assert flat.paraphrase_prompts and flat.true_paraphrase_prompts == []
    noisy = dict(FLAT_LAYOUT, rephrase_prompt="Yarur is a surname. Apple A5, created by")
    assert normalize_counterfact([noisy])[0].true_paraphrase_prompts == [
        "Yarur is a surname. Apple A5, created by"]
    rome = normalize_counterfact([ROME_LAYOUT])[0]  # ROME's layout keeps them apart already
    assert rome.true_paraphrase_prompts == rome.paraphrase_prompts


def test_about_a_fifth_of_the_flattened_rephrase_prompts_are_true_paraphrases():
    recs = load_counterfact("edit-1k", verbose=False)
    n = sum(bool(r.true_paraphrase_prompts) for r in recs)
    assert 120 <= n <= 260, n  # 179 of 1,000 by this rule
