"""Generation rows (ROME's GE and texts) per editor and record, kept as data and reused."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

pytest.importorskip("nltk")

from loudfacts.data import CounterFactRecord  # noqa: E402
from loudfacts.editing.base import Editor, HookEdit  # noqa: E402
from loudfacts.fluency import rome_ngram_entropy_of_text, rome_texts  # noqa: E402
from loudfacts.generations import (  # noqa: E402
    generation_settings,
    generation_store_path,
    generations_for_editors,
)
from loudfacts.runner import ResultsFileError, read_results  # noqa: E402

RECORDS = [CounterFactRecord(case_id=i, subject=s, prompt="{} is located in", target_true="Paris",
                             target_new="Rome", relation="P131",
                             generation_prompts=[f"{s} is", f"People say {s}"])
           for i, s in enumerate(["The Louvre", "Big Ben", "The Colosseum"])]


@dataclass
class BrickEditor(Editor):
    """Test editor: one token wins every next-token choice (a bricked model)."""

    name = "test-brick"

    def _compute(self, request):
        token = self.model.encode(" Rome")[0]

        def bonus(act, hook):
            act[..., token] += 1e4
            return act

        return HookEdit(self.model, [("unembed.hook_out", bonus)], request, self.name, {})


KW = dict(n_prompts=None, seed=0, progress=False)


def test_rows_hold_romes_texts_and_ge_and_a_bricked_model_scores_low(tiny_llama, monkeypatch):
    import loudfacts.fluency as fluency

    monkeypatch.setitem(fluency.ROME_GE, "max_out_len", 40)  # short texts for a tiny model
    df = generations_for_editors(tiny_llama, ["unedited", BrickEditor(tiny_llama)], RECORDS[:2],
                                 **KW)
    assert list(df.editor) == ["unedited"] * 2 + ["test-brick"] * 2
    first = df.iloc[0]
    assert first.prompts == RECORDS[0].generation_prompts
    assert first.texts == rome_texts(tiny_llama, first.prompts, seed=0, max_out_len=40)
    assert first["GE"] == pytest.approx(sum(map(rome_ngram_entropy_of_text, first.texts)) / 2)
    bricked = df[df.editor == "test-brick"]
    token = tiny_llama.decode(tiny_llama.encode(" Rome")[:1])
    assert all(t.endswith(token * 5) for ts in bricked.texts for t in ts)  # one token, again
    from loudfacts.claims import paired_effect

    drop = paired_effect(df.assign(known=True), "test-brick", "GE")
    assert drop["n"] == 2 and drop["effect"] < 0 and drop["ci_high"] < 0
    by_case = df.pivot(index="case_id", columns="editor", values="GE")
    assert drop["effect"] == pytest.approx((by_case["test-brick"] - by_case["unedited"]).mean())


def test_rows_are_kept_reused_and_refused_under_other_settings(tiny_llama, tmp_path,
                                                               monkeypatch):
    import loudfacts.fluency as fluency

    monkeypatch.setitem(fluency.ROME_GE, "max_out_len", 12)
    kw = dict(KW, split="edit-1k", root=tmp_path, fresh=False)
    first = generations_for_editors(tiny_llama, ["unedited"], RECORDS, **kw)
    path = generation_store_path(tiny_llama, "unedited", "edit-1k", tmp_path)
    assert path.parent.name == "generation" and len(read_results(path)) == 3
    assert first.attrs["reused"] == 0
    again = generations_for_editors(tiny_llama, ["unedited"], RECORDS, **kw)
    assert again.attrs["reused"] == 3
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))
    with pytest.raises(ResultsFileError, match="other settings") as e:
        generations_for_editors(tiny_llama, ["unedited"], RECORDS, **{**kw, "seed": 1})
    assert str(path) in str(e.value)
    # the recipe is part of the settings: another length is another run
    monkeypatch.setitem(fluency.ROME_GE, "max_out_len", 13)
    s12 = generation_settings(tiny_llama, "unedited")
    assert s12["recipe"]["max_out_len"] == 13
    with pytest.raises(ResultsFileError, match="other settings"):
        generations_for_editors(tiny_llama, ["unedited"], RECORDS, **kw)


def test_bad_settings_are_refused_by_name(tiny_llama):
    with pytest.raises(ValueError, match="n_prompts"):
        generation_settings(tiny_llama, "unedited", n_prompts=0)
    with pytest.raises(ValueError, match="seed"):
        generation_settings(tiny_llama, "unedited", seed="0")
