"""bench/bench_study.py's arithmetic: per-machine rates and the CPU-hour projection."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_study():
    spec = importlib.util.spec_from_file_location("bench_study", ROOT / "bench" / "bench_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(edit, ev, ge=0, machine="A"):
    return {"known": True, "edit_seconds": edit, "eval_seconds": ev, "n_generation": ge,
            "machine": machine}


def test_rates_keep_evaluation_with_and_without_ge_apart(bench_study):
    got = bench_study._rates([_row(10, 2), _row(20, 4), _row(30, 30, ge=1)])
    assert got["known"] == 3
    assert got["edit_s_per_known_record"] == pytest.approx(20)
    assert got["eval_s_per_known_record_without_ge"] == pytest.approx(3)
    assert got["eval_s_per_known_record_with_ge"] == pytest.approx(30)
    assert got["records_with_ge"] == 1


def test_projection_counts_rome_seconds_once_for_an_editor_that_reuses_v_star(bench_study):
    def rate(edit, ev, reuses=False):
        return {"edit_s_per_known_record": edit, "eval_s_per_known_record_without_ge": ev,
                "reuses_rome_v_star": reuses}

    editors = {"rome": rate(30, 5), "hook-delta": rate(32, 3, reuses=True), "ft": rate(6, 3)}
    got = bench_study._projection(editors, share=0.5)
    per_record = ((30 + 5) + (2 + 3) + (6 + 3)) * 0.5  # hook-delta's own edit: 32 - 30
    assert got["edit-1k (1,000 records)"] == pytest.approx(per_record * 1000 / 3600)
    key = f"all of CounterFact ({bench_study.COUNTERFACT_RECORDS:,} records)"
    assert got[key] == pytest.approx(per_record * bench_study.COUNTERFACT_RECORDS / 3600)
    # an editor without a measured rate gives no projection rather than a silent zero
    editors["ft"] = rate(None, 3)
    assert bench_study._projection(editors, share=0.5) is None


def test_file_entry_counts_known_rows_per_machine(bench_study):
    rows = [_row(10, 2), _row(20, 4, machine="B"), {"known": False, "edit_seconds": None,
                                                    "eval_seconds": 1.0, "machine": "B"}]
    got = bench_study._file_entry(rows)
    assert (got["records"], got["known"]) == (3, 2)
    assert got["cpu_hours_of_these_rows"] == pytest.approx((12 + 24) / 3600)
    assert got["machines"] == ["A", "B"]
    assert got["by_machine"]["B"]["edit_s_per_known_record"] == pytest.approx(20)
    assert got["reuses_rome_v_star"] is False
