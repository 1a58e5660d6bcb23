"""Hostile inputs to the evaluation runner, the data loaders and the report runner.

Each case is an input that was once silently accepted (reused rows made under other settings,
a foreign file truncated in place, `--n -1` evaluating 3 of 4 records, an empty merge exiting
0, floats rounded by `--merge`, an unknown report parameter only warned about, an integer
subject crashing with AttributeError). Every one must now give a clear error that names the
input, or the correct behaviour. Tiny random models and tiny temp files only: seconds.
"""

from __future__ import annotations

import json

import pytest
import yaml

from loudfacts import evaluation as ev
from loudfacts.data import CounterFactRecord, RecordsFileError, load_counterfact, normalize_counterfact
from loudfacts.evaluation import ResultsFileError, evaluate, read_results, results_path

TEMPLATE = "{} lives near the"
SUBJECTS = ["Alpha", "Bravo", "Charlie", "Delta"]


def _records(**change):
    return [CounterFactRecord(**{
        "case_id": 10 + i, "subject": s, "prompt": TEMPLATE, "target_true": "cat",
        "target_new": "dog", "relation": TEMPLATE, "paraphrase_prompts": [f"Near {s} is the"],
        "neighborhood_prompts": ["Zulu lives near the"], "neighborhood_true": ["cat"],
        "layout": "flat", **change}) for i, s in enumerate(SUBJECTS)]


BASE = {"n_neighbours": 2, "generation": False, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The forwards here are tiny: on a busy 2-core machine one thread is ~10x faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama


@pytest.fixture
def results(tiny, tmp_path):
    """A results file of ours, with two of the four records done."""
    out = tmp_path / "run.jsonl"
    evaluate(tiny, "unedited", _records()[:2], out=out, **BASE)
    return out


# -- 1. resume trusts only rows made under the same settings ------------------------------------
@pytest.mark.parametrize(("change", "named"), [
    ({"n_neighbours": 3}, "n_neighbours"),
    ({"generation": True, "max_new_tokens": 2}, "generation"),
    ({"seed": 1}, "seed"),
])
def test_resume_under_other_settings_is_refused(tiny, results, change, named):
    before = results.read_bytes()
    with pytest.raises(ResultsFileError, match=named) as e:
        evaluate(tiny, "unedited", _records(), out=results, **{**BASE, **change})
    assert str(results) in str(e.value)
    assert results.read_bytes() == before


def test_resume_with_other_editor_hparams_is_refused(tiny, tmp_path):
    from loudfacts.editing import get_editor

    out = tmp_path / "ft.jsonl"
    evaluate(tiny, get_editor("ft", tiny, steps=1), _records()[:1], out=out, **BASE)
    with pytest.raises(ResultsFileError, match=r"hparams\.steps: file 1, this run 2"):
        evaluate(tiny, get_editor("ft", tiny, steps=2), _records()[:1], out=out, **BASE)


def test_resume_with_other_weights_of_the_same_model_name_is_refused(tiny, results):
    from loudfacts.models import tiny_model

    other = tiny_model("llama", seed=1)
    assert other.name == tiny.name
    with pytest.raises(ResultsFileError, match="weights"):
        evaluate(other, "unedited", _records(), out=results, **BASE)


def test_resume_with_other_editor_is_refused(tiny, results):
    from loudfacts.editing import get_editor

    with pytest.raises(ResultsFileError, match="one file per editor"):
        evaluate(tiny, get_editor("ft", tiny, steps=1), _records(), out=results, **BASE)


def test_resume_with_a_changed_record_is_refused(tiny, results):
    with open(results, "a") as f:
        f.write('{"case_id": 12')  # even a torn line of ours stays while the run is refused
    before = results.read_bytes()
    changed = _records(target_new="moon")
    with pytest.raises(ResultsFileError, match=r"case ids \[10, 11\]"):
        evaluate(tiny, "unedited", changed, out=results, **BASE)
    assert results.read_bytes() == before


def test_resume_with_a_different_pool_of_neighbours_is_refused(tiny, results):
    # another record to borrow from changes the neighbourhood prompts of the done rows
    echo = CounterFactRecord(case_id=99, subject="Echo", prompt=TEMPLATE, target_true="cat",
                             target_new="dog", relation=TEMPLATE)
    with pytest.raises(ResultsFileError, match="neighbourhood prompts"):
        evaluate(tiny, "unedited", _records()[:2], pool=[echo] + _records(), out=results,
                 **BASE)


def test_resume_of_own_file_reuses_rows_and_equals_a_fresh_run(tiny, results, tmp_path):
    resumed = evaluate(tiny, "unedited", _records(), out=results, **BASE)
    fresh = evaluate(tiny, "unedited", _records(), out=tmp_path / "fresh.jsonl", **BASE)
    cols = [c for c in fresh.columns if c not in ("edit_seconds", "eval_seconds")]
    assert resumed[cols].equals(fresh[cols])
    assert len(read_results(results)) == 4


def test_duplicate_case_id_in_a_file_is_an_error_naming_file_and_id(tiny, results):
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines + [lines[1]]) + "\n")
    before = results.read_bytes()
    for call in (lambda: read_results(results),
                 lambda: evaluate(tiny, "unedited", _records(), out=results, **BASE),
                 lambda: ev.merge([results])):
        with pytest.raises(ResultsFileError, match=r"case id 10 .*appears twice") as e:
            call()
        assert str(results) in str(e.value)
    assert results.read_bytes() == before


def test_duplicate_case_ids_in_records_are_an_error(tiny):
    recs = _records()
    recs[1].case_id = recs[0].case_id
    with pytest.raises(ValueError, match="case id 10 more than once"):
        evaluate(tiny, "unedited", recs, **BASE)


FOREIGN = {
    "json lines": b'{"a": 1}\n{"b": 2}\n',
    "text, no final newline": b"hello\nworld",
    "empty": b"",
    "rows without header": b'{"case_id": 1, "editor": "unedited", "model": "tiny-llama"}\n',
}


@pytest.mark.parametrize("content", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_file_is_refused_and_never_modified(tiny, tmp_path, content):
    path = tmp_path / "notes.jsonl"
    path.write_bytes(content)
    for call in (lambda: read_results(path),
                 lambda: evaluate(tiny, "unedited", _records()[:1], out=path, **BASE)):
        with pytest.raises(ResultsFileError, match="not a results file") as e:
            call()
        assert str(path) in str(e.value)
        assert path.read_bytes() == content


def test_torn_last_line_of_our_run_is_dropped_on_resume(tiny, results):
    with open(results, "a") as f:
        f.write('{"case_id": 12, "edi')
    assert len(read_results(results)) == 2  # reading never cuts
    assert results.read_bytes().endswith(b'"edi')
    df = evaluate(tiny, "unedited", _records(), out=results, **BASE)
    assert len(df) == 4 and len(read_results(results)) == 4


def test_torn_last_line_after_a_foreign_line_leaves_the_file_alone(tiny, results):
    content = results.read_bytes() + b"not json\n" + b'{"case_id": 12'
    results.write_bytes(content)
    with pytest.raises(ResultsFileError, match="line 4 is not JSON"):
        evaluate(tiny, "unedited", _records(), out=results, **BASE)
    assert results.read_bytes() == content


@pytest.mark.parametrize("split", ["../x", "a/b", "/abs", "..", "a\\b", ""])
def test_results_path_refuses_a_split_that_is_a_path(tiny, split):
    with pytest.raises(ValueError, match="split"):
        results_path(tiny, "unedited", split=split, n=2, n_neighbours=2, generation=False)


def test_results_path_names_every_setting(tiny, tmp_path):
    from loudfacts.editing import get_editor

    kw = {"split": "edit-1k", "n": 2, "n_neighbours": 2, "generation": True, "root": tmp_path}
    base = results_path(tiny, "ft", **kw)
    assert base.parent == tmp_path
    others = [results_path(tiny, "ft", **kw, seed=1),
              results_path(tiny, "ft", **kw, n_generation=2),
              results_path(tiny, get_editor("ft", tiny, steps=1), **kw)]
    assert len({base, *others}) == 4
    assert results_path(tiny, "ft", **kw) == base
    records = tmp_path / "my records.json"
    records.write_text("[]")
    assert "/" not in ev.split_label(records) and ev.split_label("edit-1k") == "edit-1k"
    results_path(tiny, "ft", **{**kw, "split": ev.split_label(records)})


# -- 2. inputs quietly changed: --n, empty inputs, merge, report parameters ---------------------
def _cli(args, capsys):
    from loudfacts.evaluate import main

    try:
        rc = main(args)
    except SystemExit as e:  # argparse errors
        rc = e.code
    return rc, capsys.readouterr()


@pytest.mark.parametrize("n", ["-1", "0", "x", "1.5"])
def test_cli_n_must_be_positive(tmp_path, capsys, n):
    rc, io = _cli(["--editor", "unedited", "--model", "tiny-llama", "--n", n,
                   "--out", str(tmp_path / "o.jsonl")], capsys)
    assert rc == 2 and "--n" in io.err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("n", [-1, 0, True, 1.5, "3"])
def test_load_counterfact_n_must_be_positive_or_none(n):
    with pytest.raises(ValueError, match="n must be a positive"):
        load_counterfact("edit-1k", n=n)


EMPTY_RECORDS = {
    "empty list": "[]",
    "all records malformed": json.dumps([{"case_id": 1, "prompt": "x", "subject": "y",
                                          "target_new": "a", "ground_truth": "b"}]),
    "not JSON": "[{\"case_id\": 1,\n  oops}]",
    "empty file": "",
    "a JSON number": "3",
}


@pytest.mark.parametrize("text", EMPTY_RECORDS.values(), ids=EMPTY_RECORDS.keys())
def test_cli_unusable_records_file_exits_nonzero_naming_it(tmp_path, capsys, text):
    records = tmp_path / "records.json"
    records.write_text(text)
    out = tmp_path / "o.jsonl"
    rc, io = _cli(["--editor", "unedited", "--model", "tiny-llama", "--split", str(records),
                   "--out", str(out), "--no-generation"], capsys)
    assert rc == 2 and str(records) in io.err and "Traceback" not in io.err
    assert not out.exists()


def test_records_file_not_json_names_file_line_and_column(tmp_path):
    records = tmp_path / "records.json"
    records.write_text("[{\"case_id\": 1,\n  oops}]")
    with pytest.raises(RecordsFileError, match=r"records\.json: .*line 2, column 3"):
        load_counterfact(str(records))


def test_cli_merge_of_a_missing_file_exits_nonzero_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc, io = _cli(["--merge", str(missing), "--out", str(tmp_path / "m.jsonl")], capsys)
    assert rc == 2 and str(missing) in io.err


def test_cli_merge_of_files_without_rows_exits_nonzero_naming_them(tiny, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        evaluate(tiny, "unedited", [], out=p, **BASE)  # a header, no rows
    rc, io = _cli(["--merge", str(a), str(b), "--out", str(tmp_path / "m.jsonl")], capsys)
    assert rc == 2 and str(a) in io.err and str(b) in io.err
    assert not (tmp_path / "m.jsonl").exists()


def test_cli_merge_refuses_to_overwrite_a_foreign_out(tiny, results, tmp_path, capsys):
    out = tmp_path / "precious.txt"
    out.write_text("my notes\n")
    rc, io = _cli(["--merge", str(results), "--out", str(out)], capsys)
    assert rc == 2 and str(out) in io.err and out.read_text() == "my notes\n"


def test_merge_is_lossless(tiny, tmp_path, capsys):
    shards = []
    for i in range(2):
        p = tmp_path / f"s{i}.jsonl"
        evaluate(tiny, "unedited", _records(), shard=f"{i}/2", out=p, **BASE)
        shards.append(p)
    # values that a 10-decimal rounding would change: tiny, and with many digits
    tiny_values = [3e-11, 1e-300, 0.1 + 0.2, 1 / 3]
    want = []
    for p in shards:
        lines = p.read_text().splitlines()
        rows = [json.loads(x) for x in lines[1:]]
        for r, v in zip(rows, tiny_values):
            r["NKL"], r["NKL_code"], r["p_true_pre"] = v, v / 7, v * 3
        p.write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows]) + "\n")
        want += rows
    out = tmp_path / "merged.jsonl"
    rc, io = _cli(["--merge", *map(str, shards), "--out", str(out)], capsys)
    assert rc == 0, io.err
    got = read_results(out)
    key = lambda r: r["case_id"]
    assert sorted(got, key=key) == sorted(want, key=key)  # every value bit for bit
    assert any(r["NKL"] == 3e-11 for r in got)


def test_merge_refuses_overlapping_shards_and_mixed_settings(tiny, tmp_path):
    a, b, c = (tmp_path / f"{x}.jsonl" for x in "abc")
    evaluate(tiny, "unedited", _records()[:2], out=a, **BASE)
    evaluate(tiny, "unedited", _records()[1:3], out=b, **BASE)
    with pytest.raises(ResultsFileError, match=r"case id 11 .*in both"):
        ev.merge([a, b])
    evaluate(tiny, "unedited", _records()[2:], out=c, **{**BASE, "n_neighbours": 1})
    with pytest.raises(ResultsFileError, match="n_neighbours"):
        ev.merge([a, c])


NB = '''# %% [markdown]
# # 00 · A section

# %% tags=["parameters"]
model_name = "tiny"
seed = 0
n_counterfact = 4
rate = 0.5
label = "x"
editors = ["unedited"]
maybe = None

# %%
print(n_counterfact)
'''

BAD_PARAMS = {
    "unknown key": ({"00_facts": {"n_counterfakt": 4}}, r"'n_counterfakt'.*00_facts"),
    "bool for int": ({"00": {"n_counterfact": True}}, r"'n_counterfact'.*00_facts.*bool"),
    "str for int": ({"00": {"n_counterfact": "4"}}, r"'n_counterfact'.*str"),
    "float for int": ({"00": {"n_counterfact": 4.5}}, r"'n_counterfact'.*float"),
    "int for str": ({"00": {"label": 3}}, r"'label'.*int"),
    "str for list": ({"00": {"editors": "rome"}}, r"'editors'.*str"),
    "bool for int via common": ({"common": {"seed": False}}, r"'seed'.*bool"),
    "unknown common key": ({"common": {"devise": "cpu"}}, r"common key 'devise'"),
    "unknown section": ({"07_missing": {"n": 1}}, r"section '07_missing'"),
}


@pytest.mark.parametrize(("data", "match"), BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_report_refuses_bad_parameters_before_running(tmp_path, capsys, data, match):
    from loudfacts.report import ParamsError, build, main

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "00_facts.py").write_text(NB)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=match):
        build(params, tmp_path / "out", notebooks_dir=nbs, log_output=False)
    rc = main(["--params", str(params), "--out", str(tmp_path / "out"), "--notebooks",
               str(nbs), "--quiet"])
    assert rc == 2 and str(params) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_report_accepts_good_parameters(tmp_path):
    from loudfacts.report import check_params

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "00_facts.py").write_text(NB)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"common": {"seed": 1}, "00": {
        "n_counterfact": 2, "rate": 1, "maybe": [1], "label": None, "editors": []}}))
    check_params(params, [nbs / "00_facts.py"])


@pytest.mark.parametrize("text", ["common:\n  seed: [0\n", "a: 1\n b: 2\n", "common: {x: 1\n"])
def test_broken_yaml_names_file_and_line(tmp_path, text):
    from loudfacts.report import ParamsError, load_params

    params = tmp_path / "p.yaml"
    params.write_text(text)
    with pytest.raises(ParamsError, match=r"p\.yaml is not valid YAML at line \d+, column \d+"):
        load_params(params, "00_facts")


# -- 3. fields of the wrong type name the record and the field ----------------------------------
ROME = {"case_id": 5, "requested_rewrite": {
    "prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle",
    "target_new": {"str": "English"}, "target_true": {"str": "French"}},
    "paraphrase_prompts": ["Danielle spoke"], "neighborhood_prompts": ["Léon speaks"],
    "generation_prompts": ["Danielle's tongue is"]}
FLAT = {"case_id": 7, "prompt": "Apple A5 was created by", "target_new": "Google",
        "subject": "Apple A5", "ground_truth": "Apple", "rephrase_prompt": "A5 made by",
        "locality_prompt": "Calendar was created by", "locality_ground_truth": "Apple"}


def _rw(**kw):
    return {**ROME, "requested_rewrite": {**ROME["requested_rewrite"], **kw}}


WRONG_TYPES = {
    "rome int subject": (_rw(subject=42), "requested_rewrite.subject"),
    "rome int target_new.str": (_rw(target_new={"str": 1}), "requested_rewrite.target_new.str"),
    "rome target_true not an object": (_rw(target_true="French"), "requested_rewrite.target_true"),
    "rome list prompt": (_rw(prompt=["{} is"]), "requested_rewrite.prompt"),
    "rome int relation_id": (_rw(relation_id=103), "requested_rewrite.relation_id"),
    "rome int in paraphrases": ({**ROME, "paraphrase_prompts": ["ok", 3]},
                                r"paraphrase_prompts\[1\]"),
    "rome string as prompt list": ({**ROME, "generation_prompts": "Danielle is"},
                                   "generation_prompts"),
    "flat int subject": ({**FLAT, "subject": 42}, "subject"),
    "flat int ground_truth": ({**FLAT, "ground_truth": 1}, "ground_truth"),
    "flat list target_new": ({**FLAT, "target_new": ["Google"]}, "target_new"),
    "flat int locality_prompt": ({**FLAT, "locality_prompt": 0}, "locality_prompt"),
}


@pytest.mark.parametrize(("raw", "field"), WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_field_of_the_wrong_type_names_case_and_field(tmp_path, raw, field):
    cid = raw["case_id"]
    with pytest.raises(ValueError, match=rf"case_id {cid}: field '{field}"):
        normalize_counterfact([raw])
    path = tmp_path / "records.json"
    path.write_text(json.dumps([FLAT if cid != 7 else ROME, raw]))
    with pytest.raises(RecordsFileError, match=rf"records\.json: record case_id {cid}"):
        load_counterfact(str(path))


@pytest.mark.parametrize("case_id", ["abc", 1.5, None, True])
def test_a_case_id_that_is_not_an_integer_is_named(case_id):
    with pytest.raises(ValueError, match="'case_id' must be an integer"):
        normalize_counterfact([{**FLAT, "case_id": case_id}])


def test_records_with_a_repeated_case_id_are_refused(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([FLAT, FLAT]))
    with pytest.raises(RecordsFileError, match="case_id 7 appears more than once"):
        load_counterfact(str(path))


def test_valid_records_of_both_layouts_still_load(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([ROME, FLAT, {**FLAT, "case_id": 8, "locality_prompt": None}]))
    recs = load_counterfact(str(path))
    assert [r.case_id for r in recs] == [5, 7, 8] and recs[2].neighborhood_prompts == []


@pytest.mark.parametrize("n", [True, 0, -1, 1.0])
def test_worker_count_must_be_a_positive_int(n):
    from loudfacts.workers import run_workers

    with pytest.raises(ValueError, match="workers must be a positive int"):
        run_workers("loudfacts.evaluate", [], n)
