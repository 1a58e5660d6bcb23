"""The one verdict rule, paired effects on hand-built numbers, and the claims table."""

import math

import pandas as pd
import pytest

from loudfacts import claims as cl


@pytest.mark.parametrize("lo, hi, direction, n, expected", [
    (-0.3, -0.1, "decrease", 20, "supported"),
    (-0.3, -0.1, "increase", 20, "contradicted"),
    (0.1, 0.3, "increase", 20, "supported"),
    (0.1, 0.3, "decrease", 20, "contradicted"),
    (-0.1, 0.2, "decrease", 20, "inconclusive"),
    (-0.3, -0.1, "decrease", cl.MIN_N - 1, "inconclusive"),  # too few units
    (math.nan, math.nan, "decrease", 20, "inconclusive"),
    (-0.2, 0.0, "decrease", 20, "inconclusive"),  # touching 0 does not exclude it
])
def test_verdict_rule(lo, hi, direction, n, expected):
    assert cl.verdict(lo, hi, direction, n) == expected


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError, match="direction"):
        cl.verdict(0.1, 0.2, "up", 20)
    with pytest.raises(ValueError, match="reversed"):
        cl.verdict(0.3, 0.1, "increase", 20)
    with pytest.raises(ValueError, match="n="):
        cl.verdict(0.1, 0.2, "increase", True)


def _results():
    rows = []
    for i in range(12):
        rows.append({"case_id": i, "editor": "unedited", "known": True, "NS": 0.8, "NS+": 0.6})
        rows.append({"case_id": i, "editor": "rome", "known": True, "NS": 0.8 - 0.01 * (i % 3),
                     "NS+": 0.3 + 0.02 * (i % 4)})
    rows.append({"case_id": 99, "editor": "rome", "known": False, "NS": None, "NS+": None})
    return pd.DataFrame(rows)


def test_paired_effect_is_edited_minus_unedited_on_the_same_records():
    r = cl.paired_effect(_results(), "rome", "NS+")
    expected = sum(0.3 + 0.02 * (i % 4) - 0.6 for i in range(12)) / 12
    assert r["n"] == 12 and r["effect"] == pytest.approx(expected)
    assert r["ci_low"] <= r["effect"] <= r["ci_high"] < 0
    assert r["unedited"] == pytest.approx(0.6)
    row = cl.claim("x", "NS+", "known", r, "decrease", "06_specificity_plus", "make report")
    assert row["verdict"] == "supported"


def test_records_only_one_editor_scored_are_not_paired():
    df = _results()
    df = df[~((df.editor == "unedited") & (df.case_id < 4))]
    assert cl.paired_effect(df, "rome", "NS")["n"] == 8


def test_repeated_records_are_refused():
    df = pd.concat([_results(), _results().iloc[:2]])
    with pytest.raises(ValueError, match="repeats case_id"):
        cl.paired_effect(df, "rome", "NS")


def test_unknown_editor_is_named():
    with pytest.raises(ValueError, match="'memit'"):
        cl.paired_effect(_results(), "memit", "NS")


def test_paired_effects_table_has_every_editor_and_n():
    t = cl.paired_effects_table(_results(), metrics=("NS", "NS+"))
    assert list(t.index) == ["rome"] and t.loc["rome", "n"] == 12
    assert t.loc["rome", "ΔNS+"].startswith("-0.2")


def test_paired_effects_table_states_a_metrics_own_n_when_it_differs():
    df = _results()
    df["PS_para"] = [0.5 if i < 6 else None for i in range(len(df) // 2) for _ in (0, 1)] + [None]
    t = cl.paired_effects_table(df, metrics=("NS", "PS_para", "NS+"))
    assert t.loc["rome", "n"] == 12
    assert t.loc["rome", "ΔPS_para"].endswith("(n=6)")
    assert "(n=" not in t.loc["rome", "ΔNS"] and "(n=" not in t.loc["rome", "ΔNS+"]


def test_wilson_interval():
    lo, hi = cl.wilson(0, 10)
    assert lo == 0 and 0.25 < hi < 0.32  # 0.278
    lo, hi = cl.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    with pytest.raises(ValueError):
        cl.wilson(11, 10)


def test_claims_reach_the_report_index(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    r = cl.paired_effect(_results(), "rome", "NS+")
    cl.save_claims("06", [cl.claim("NS+ collapses", "NS+", "known", r, "decrease",
                                   "06_specificity_plus", "make report")])
    from loudfacts.report import write_index

    out = tmp_path / "report"
    out.mkdir()
    write_index(out, [], {"commit": "abc"}, "../figures")
    md = (out / "index.md").read_text()
    assert "## Claims" in md and cl.VERDICT_RULE in md
    assert "NS+ collapses" in md and "**supported**" in md and "| 12 |" in md
    assert md.index("## Claims") < md.index("## Run card")
    assert "<strong>supported</strong>" in (out / "index.html").read_text()
