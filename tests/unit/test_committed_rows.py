"""Every committed study file under `results/` is whole and made under one setting.

`tests/integration/test_study_rows_smollm2.py` checks the files of the editors notebook 06 runs
against the report's parameters (it needs the model). This reads every committed file,
whatever the report reads today, without the model: rows a later report will take up (more
records, or an editor not yet in 06's table) are held to the same rules now, so a study round
that stopped mid-write or ran under other settings fails here, naming the file.
"""

import math

import pytest

from loudfacts import evaluation as ev
from loudfacts.paths import repo_path

# results/<model>/<split>/<editor>.jsonl; results/<model>/tracing/ holds notebook 01's
# per-fact trace records instead (checked below)
FILES = sorted(p for p in repo_path("results").glob("*/*/*.jsonl") if p.parent.name != "tracing")
TRACING = sorted(repo_path("results").glob("*/tracing/averages-*.jsonl"))
LADDER = sorted(repo_path("results").glob("*/*/ladder/*.jsonl"))


def test_there_are_committed_rows():
    assert FILES, "no committed study rows under results/"


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.parent.name}/{p.parent.name}/{p.stem}"
                                             for p in FILES])
def test_a_committed_file_is_whole_and_made_under_one_setting(path):
    f = ev.read_results_file(path)  # raises, naming the file, on a foreign line or a repeat
    assert f.torn_at is None, f"{path}: its last line is torn (an interrupted write)"
    assert len(f.runs) == 1, f"{path}: rows of {len(f.runs)} settings in one file"
    assert f.rows, f"{path}: a header and no rows"
    assert {r["editor"] for r in f.rows} == {path.stem}, f"{path}: rows of another editor"


def test_every_editor_agrees_on_which_records_are_known():
    """`known` (P(true) > P(new) before the edit) is a fact of the unedited model and the
    record, so every editor's row of a record must give the same answer, with the same
    pre-edit probabilities."""
    by_split = {}
    for path in FILES:
        by_split.setdefault(path.parent, []).append(path)
    checked = 0
    for folder, paths in by_split.items():
        seen = {}  # case id -> (editor, known, p_true_pre, p_new_pre)
        for path in paths:
            for r in ev.read_results(path):
                got = (r["known"], r["p_true_pre"], r["p_new_pre"])
                first = seen.setdefault(r["case_id"], (path.stem, *got))
                assert first[1] == got[0], (
                    f"{folder}: case {r['case_id']} is known={first[1]} for {first[0]} but "
                    f"known={got[0]} for {path.stem}")
                for a, b, what in zip(first[2:], got[1:], ("p_true_pre", "p_new_pre")):
                    assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9), (
                        f"{folder}: case {r['case_id']} {what} {a} ({first[0]}) vs {b} "
                        f"({path.stem})")
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("path", TRACING, ids=[p.name[:40] for p in TRACING])
def test_a_committed_tracing_file_is_whole_with_one_record_per_fact_and_kind(path):
    import json

    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path}: its last line is torn (an interrupted write)"
    seen = set()
    for i, line in enumerate(raw.decode().splitlines(), 1):
        rec = json.loads(line)  # a torn line in the middle fails here, naming nothing else
        assert {"key", "fact", "kind", "classes"} <= set(rec), f"{path}:{i}: not a trace record"
        assert rec["key"] not in seen, f"{path}:{i}: record {rec['key'][:12]} twice"
        seen.add(rec["key"])


@pytest.mark.parametrize("path", LADDER, ids=[f"{p.parents[2].name}/{p.parents[1].name}/{p.stem}"
                                              for p in LADDER])
def test_a_committed_ladder_file_is_whole_and_made_under_one_setting(path):
    f = ev.read_results_file(path)
    assert f.torn_at is None, f"{path}: its last line is torn (an interrupted write)"
    assert len(f.runs) == 1, f"{path}: rows of {len(f.runs)} settings in one file"
    assert {r["editor"] for r in f.rows} == {path.stem}, f"{path}: rows of another editor"
    for r in f.rows:
        assert (r.get("edit_error") is None) == bool(r.get("rungs")), (
            f"{path}: case {r['case_id']} has neither rungs nor an edit error")
