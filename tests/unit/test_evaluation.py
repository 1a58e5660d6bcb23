"""Unit tests of loudfacts.evaluation on hand-built numbers and tiny random models."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from loudfacts.data import CounterFactRecord
from loudfacts.editing.base import Editor, HookEdit, WeightEdit
from loudfacts.evaluation import (
    IMPLICATION_FAMILIES,
    METRICS,
    bootstrap_ci,
    build_neighbourhoods,
    evaluate,
    harmonic_mean,
    kl_divergences,
    ladder_summary,
    implication_family,
    load_implications,
    loud_fact_ladder,
    merge,
    read_results,
    score_implications,
    shard_records,
    success_magnitude,
    summarize,
    verify_implications,
)
from loudfacts.scoring import target_probs
from loudfacts.tokens import target_ids

TIMING = ["edit_seconds", "eval_seconds"]


# -- hand-built numbers ------------------------------------------------------------------------
def test_success_magnitude_hand_built():
    s, m = success_magnitude([0.5, 0.1, 0.3], [0.2, 0.4, 0.3])
    assert s == pytest.approx(1 / 3)  # ties do not count as success
    assert m == pytest.approx((0.3 - 0.3 + 0.0) / 3)
    assert all(math.isnan(v) for v in success_magnitude([], []))


def test_kl_divergences_match_definitions():
    pre = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]).log()
    post = torch.tensor([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]).log()
    paper, code = kl_divergences(pre, post)
    want = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    want_rev = 0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25)
    assert paper[0].item() == pytest.approx(want, abs=1e-6)
    assert code[0].item() == pytest.approx(want_rev / 3, abs=1e-6)  # divided by vocab size
    assert paper[1].item() == pytest.approx(0, abs=1e-7) and code[1].item() == pytest.approx(0)
    # asymmetric: a different pair gives different paper and code*vocab values
    pre2 = torch.tensor([[0.9, 0.05, 0.05]]).log()
    post2 = torch.tensor([[0.3, 0.4, 0.3]]).log()
    p2, c2 = kl_divergences(pre2, post2)
    assert p2.item() != pytest.approx(c2.item() * 3, rel=1e-3)
    with pytest.raises(ValueError):
        kl_divergences(pre, post[:1])


def test_kl_rounding_noise_is_never_negative():
    # two runs of the same distribution whose log-probs differ by float rounding: the raw
    # sum p (log p - log q) is slightly negative here (-0.5e-6); a KL is clamped at 0
    pre = torch.tensor([[0.5, 0.25, 0.25]]).log()
    post = pre.clone()
    post[0, 0] += 1e-6
    a, b = pre.double(), post.double()
    assert float((a.exp() * (a - b)).sum()) < 0
    paper, code = kl_divergences(pre, post)
    assert paper.item() == 0.0 and code.item() >= 0.0


def test_harmonic_mean_and_bootstrap():
    assert harmonic_mean([1, 1, 1]) == 1
    assert harmonic_mean([1, 0.5, 1]) == pytest.approx(3 / 4)
    assert harmonic_mean([1, 0, 1]) == 0
    assert math.isnan(harmonic_mean([1, float("nan")]))
    x = np.random.default_rng(0).normal(size=200)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.5
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))


# -- tiny-model fixtures -----------------------------------------------------------------------
WORDS = ["cat", "dog", "red", "blue", "tree", "house", "sun", "moon", "Paris", "Rome"]
SUBJECTS = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel"]
TEMPLATE = "{} lives near the"


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def records(tiny):
    """Records whose true object the tiny model prefers over target_new on every prompt used
    (rewrite and neighbourhood), so they are 'known' and NS is 1 before editing."""
    prompts = [TEMPLATE.format(s) for s in SUBJECTS] + ["Zulu lives near the"]
    probs = torch.stack([target_probs(tiny, prompts, [w] * len(prompts)) for w in WORDS])
    margin = {(a, b): float((probs[a] - probs[b]).min())
              for a in range(len(WORDS)) for b in range(len(WORDS)) if a != b}
    (t, n), best = max(margin.items(), key=lambda kv: kv[1])
    assert best > 0, "no word pair ordered the same on every prompt"
    true, new = WORDS[t], WORDS[n]
    recs = []
    for i, s in enumerate(SUBJECTS):
        recs.append(CounterFactRecord(
            case_id=100 + i, subject=s, prompt=TEMPLATE, target_true=true, target_new=new,
            relation=TEMPLATE, paraphrase_prompts=[f"{s} lives near the"], neighborhood_prompts=["Zulu lives near the"],
            neighborhood_true=[true], layout="flat"))
    return recs


def boost_target_after_subject_hook(logits, hook, *, state, token_ids, scale):
    """Add `scale` to target tokens' logits at every position from the subject on."""
    mask = state["mask"].to(logits.device)
    bump = torch.zeros(logits.shape[-1], device=logits.device)
    bump[token_ids] = scale
    bump[token_ids[0]] += 1.0  # the first target token wins the greedy step
    return logits + mask[..., None] * bump


def find_subject_hook(ids, hook, *, state, variants):
    """Mark positions after the first full occurrence of the subject's tokens (any of its
    tokenisations, with or without a leading space); works on right-padded batches."""
    hit = torch.zeros(ids.shape, dtype=torch.float32)
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        starts = [i + len(v) for v in variants for i in range(len(row) - len(v) + 1)
                  if row[i:i + len(v)] == v]
        if starts:
            hit[b, min(starts) - 1:] = 1.0
    state["mask"] = hit
    return ids


class LoudEditor(Editor):
    """Test editor: whenever the edited subject appears in the input, every later position
    prefers target_new -- it writes the fact and leaks it into any prompt that mentions the
    subject (the CounterFact+ failure), but changes nothing without the subject."""

    name = "test-loud"

    def _compute(self, request):
        state = {}
        variants = [self.model.encode(request.subject), self.model.encode(" " + request.subject)]
        hooks = [("embed.hook_in", functools.partial(find_subject_hook, state=state,
                                                      variants=variants)),
                 ("unembed.hook_out", functools.partial(
                     boost_target_after_subject_hook, state=state,
                     token_ids=target_ids(self.model, request.target_new), scale=30.0))]
        return HookEdit(self.model, hooks, request, self.name)


class AddEditor(Editor):
    """Test editor: a small deterministic WeightEdit on lm_head (changes every prompt a bit)."""

    name = "test-add"
    calls = 0

    def _compute(self, request):
        AddEditor.calls += 1
        w = self.model.hf.lm_head.weight.detach().clone()
        g = torch.Generator().manual_seed(int(request.case_id))
        w += 0.05 * torch.randn(w.shape, generator=g)
        return WeightEdit(self.model, {"lm_head": w}, request, self.name)


class InterruptingEditor(AddEditor):
    fail_on = None

    def _compute(self, request):
        if request.case_id == self.fail_on:
            raise KeyboardInterrupt("simulated interruption")
        return super()._compute(request)


# -- neighbourhoods, shards --------------------------------------------------------------------
def test_neighbourhoods_borrow_same_relation_and_true(records):
    other = CounterFactRecord(case_id=999, subject="Kilo", prompt="{} works near the",
                              target_true=records[0].target_true, target_new="x",
                              relation="{} works near the")
    nb = build_neighbourhoods(records[:2], records + [other], n_neighbours=4)
    for rec in records[:2]:
        prompts = [p for p, _ in nb[rec.case_id]]
        assert prompts[0] == "Zulu lives near the"  # own prompt first
        assert len(prompts) == 4 and len(set(prompts)) == 4
        assert not any(rec.subject in p for p in prompts)
        assert not any("Kilo" in p for p in prompts)  # other relation never borrowed
        assert all(t == rec.target_true for _, t in nb[rec.case_id])


def test_shards_are_disjoint_and_cover(records):
    parts = [shard_records(records, f"{i}/3") for i in range(3)]
    ids = [r.case_id for p in parts for r in p]
    assert sorted(ids) == sorted(r.case_id for r in records)
    assert shard_records(list(reversed(records)), "1/3")[::-1] == parts[1]
    with pytest.raises(ValueError, match="shard"):
        shard_records(records, "3/3")


# -- metrics on a tiny model -------------------------------------------------------------------
def test_unedited_has_no_effect(tiny, records):
    df = evaluate(tiny, "unedited", records[:3], generation=False, progress=False)
    assert set(METRICS) <= set(df.columns)
    assert df["known"].all() and len(df) == 3
    assert (df["ES"] == 0).all() and (df["NS"] == 1).all()
    assert np.allclose(df["NKL"], 0, atol=1e-6) and np.allclose(df["NKL_code"], 0, atol=1e-9)
    assert (df["n_neighbours"] == 3).all()  # 1 own + the 2 other records' rewrite prompts
    wide = evaluate(tiny, "unedited", records[:1], pool=records, generation=False,
                    progress=False)
    assert wide["n_neighbours"].iloc[0] == 8  # 1 own + 7 borrowed from the pool


def test_loud_edit_ns_high_nsplus_low(tiny, records):
    df = evaluate(tiny, LoudEditor(tiny), records[:3], generation=False, progress=False)
    assert (df["ES"] == 1).all() and (df["PS"] == 1).all()
    assert (df["NS"] == 1).all(), "neighbours without the subject must be untouched"
    assert (df["NS+"] == 0).all() and (df["NS+cool"] == 0).all()
    assert (df["NM+"] < 0).all() and (df["NKL"] > 0.1).all() and (df["NKL_code"] > 0).all()
    assert (df["Score"] == 1).all()
    s = summarize(df)
    assert set(s["metric"]) >= {"NS", "NS+", "Score"}
    assert ((s["ci_low"] <= s["mean"] + 1e-12) | s["ci_low"].isna()).all()


def test_unknown_records_are_excluded_and_counted(tiny, records, capsys):
    flipped = CounterFactRecord(**{**records[0].to_dict(), "case_id": 7,
                                   "target_true": records[0].target_new,
                                   "target_new": records[0].target_true})
    df = evaluate(tiny, "unedited", [flipped, records[1]], generation=False, progress=True)
    assert df.attrs["n_unknown"] == 1 and df.attrs["n_known"] == 1
    assert math.isnan(df.loc[df.case_id == 7, "ES"].iloc[0])
    assert "1 excluded as not known" in capsys.readouterr().out
    assert summarize(df)["n"].max() == 1


def test_generation_entropy_column(tiny, records):
    df = evaluate(tiny, "unedited", records[:1], generation=True, n_generation=1,
                  max_new_tokens=8, progress=False)
    assert df["GE"].iloc[0] >= 0 and df["n_generation"].iloc[0] == 1
    # the texts behind GE are kept, so the report can show them before and after an edit
    from loudfacts.fluency import ngram_entropy

    texts = df["generations"].iloc[0]
    assert len(texts) == 1 and len(texts[0]) > 0
    assert df["GE"].iloc[0] == pytest.approx(ngram_entropy(texts))


# -- runner: resume and shards -----------------------------------------------------------------
def test_resume_after_interruption(tiny, records, tmp_path):
    full = evaluate(tiny, AddEditor(tiny), records, generation=False, progress=False,
                    out=tmp_path / "full.jsonl")
    out = tmp_path / "run.jsonl"
    ed = InterruptingEditor(tiny)
    ed.name = "test-add"
    ed.fail_on = records[3].case_id
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, ed, records, generation=False, progress=False, out=out)
    assert len(read_results(out)) == 3
    with open(out, "a") as f:  # a write cut off mid-line
        f.write('{"case_id": 1')
    ed.fail_on = None
    AddEditor.calls = 0
    resumed = evaluate(tiny, ed, records, generation=False, progress=False, out=out)
    assert AddEditor.calls == len(records) - 3, "done records must not be edited again"
    assert len(read_results(out)) == len(records)
    cols = [c for c in full.columns if c not in TIMING]
    assert resumed[cols].equals(full[cols])



def test_batched_edits_are_computed_ahead_and_score_as_one_at_a_time(tiny, records,
                                                                   monkeypatch):
    """An editor that edits several requests together (`batches_edits`: FT) gets the known
    records' requests in one `edit_many` call per `EDIT_BATCH` records and never edits one
    alone; the rows score as one-at-a-time edits do, and `batched_edits(False)` restores that."""
    from loudfacts.editing import get_editor
    from loudfacts.runner import EDIT_BATCH, batched_edits

    ed = get_editor("ft", tiny, layer=0, steps=3, lr=1e-2, stop_prob=1.0)
    cls = type(ed)
    calls = {"many": [], "one": 0}
    real_many, real_compute = cls.edit_many, cls._compute

    def many(self, requests):
        calls["many"].append(len(requests))
        return real_many(self, requests)

    def one(self, request):
        calls["one"] += 1
        return real_compute(self, request)

    monkeypatch.setattr(cls, "edit_many", many)
    monkeypatch.setattr(cls, "_compute", one)
    assert len(records) <= EDIT_BATCH
    batched = evaluate(tiny, ed, records, generation=False, progress=False)
    assert calls == {"many": [int(batched["known"].sum())], "one": 0}
    assert (batched["edit_seconds"] > 0).all() and (batched["edit_steps"] == 3).all()
    with batched_edits(False):
        alone = evaluate(tiny, ed, records, generation=False, progress=False)
    assert calls == {"many": [int(batched["known"].sum())], "one": len(records)}
    for m in ("EM", "PM", "NM", "NM+", "NKL"):  # magnitudes: continuous in the edit
        np.testing.assert_allclose(batched[m].astype(float), alone[m].astype(float),
                                   rtol=1e-4, atol=1e-6)


def test_generation_only_for_the_first_records(tiny, records):
    df = evaluate(tiny, "unedited", records[:3], generation=True, n_generation=1,
                  max_new_tokens=4, generation_records=1, progress=False)
    assert df["GE"].notna().tolist() == [True, False, False]
    assert df["n_generation"].tolist() == [1, 0, 0]


def test_shard_merge_equals_unsharded(tiny, records, tmp_path):
    full = evaluate(tiny, AddEditor(tiny), records, generation=False, progress=False)
    paths = []
    for i in range(3):
        p = tmp_path / f"s{i}.jsonl"
        evaluate(tiny, AddEditor(tiny), records, shard=f"{i}/3", generation=False,
                 progress=False, out=p)
        paths.append(p)
    merged = merge(paths)
    cols = [c for c in full.columns if c not in TIMING]
    want = full.sort_values(["editor", "case_id"]).reset_index(drop=True)[cols]
    assert merged[cols].equals(want)
    assert merged.attrs["n_known"] == full.attrs["n_known"]


def test_results_file_of_other_editor_is_refused(tiny, records, tmp_path):
    out = tmp_path / "x.jsonl"
    evaluate(tiny, "unedited", records[:1], generation=False, progress=False, out=out)
    with pytest.raises(ValueError, match="one file per editor"):
        evaluate(tiny, AddEditor(tiny), records[:1], generation=False, progress=False, out=out)


def test_resume_refuses_rows_made_under_other_settings(tiny, records, tmp_path):
    from loudfacts.evaluation import ResultsFileError

    out = tmp_path / "r.jsonl"
    evaluate(tiny, "unedited", records[:2], n_neighbours=2, generation=False, progress=False,
             out=out)
    before = out.read_bytes()
    with pytest.raises(ResultsFileError, match=r"r\.jsonl .*n_neighbours: file 2, this run 3"):
        evaluate(tiny, "unedited", records[:2], n_neighbours=3, generation=False,
                 progress=False, out=out)
    assert out.read_bytes() == before
    rows = read_results(out)
    assert len({r["settings_digest"] for r in rows}) == 2  # one digest per record


def test_a_foreign_file_is_refused_and_left_alone(tiny, records, tmp_path):
    from loudfacts.evaluation import ResultsFileError

    out = tmp_path / "notes.jsonl"
    out.write_bytes(b'{"note": 1}\nhalf a line')
    with pytest.raises(ResultsFileError, match="not a results file"):
        evaluate(tiny, "unedited", records[:1], generation=False, progress=False, out=out)
    with pytest.raises(ResultsFileError, match="not a results file"):
        read_results(out)
    assert out.read_bytes() == b'{"note": 1}\nhalf a line'


def test_cli_merge_keeps_full_precision(tiny, records, tmp_path):
    from loudfacts.evaluate import main

    p = tmp_path / "s.jsonl"
    evaluate(tiny, "unedited", records[:2], generation=False, progress=False, out=p)
    head, *lines = p.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    rows[0]["NKL"], rows[1]["NKL"] = 4e-11, 1 / 3  # --merge once wrote 0.0 and 0.3333333333
    p.write_text("\n".join([head] + [json.dumps(r) for r in rows]) + "\n")
    assert main(["--merge", str(p), "--out", str(tmp_path / "m.jsonl")]) == 0
    assert read_results(tmp_path / "m.jsonl") == rows


# -- loud-fact ladder --------------------------------------------------------------------------
def test_ladder_leaks_only_with_subject(tiny, records):
    from loudfacts.editing.base import EditRequest

    req = EditRequest.from_record(records[0])
    edit = LoudEditor(tiny).edit(req)
    lad = loud_fact_ladder(tiny, edit, req, ["Zulu lives near the", "The sky is"])
    s = ladder_summary(lad.assign(editor="test-loud")).set_index("step")
    assert list(s.index) == ["none", "statement", "mention", "tangential", "unrelated"]
    for step in ("statement", "mention", "tangential"):
        assert s.loc[step, "top1_post"] == 1.0 and s.loc[step, "p_new_post"] > s.loc[step, "p_new_pre"]
    for step in ("none", "unrelated"):
        assert s.loc[step, "p_new_post"] == pytest.approx(s.loc[step, "p_new_pre"], rel=1e-5)


def test_ladder_single_pass_equals_separate_scorers(tiny, records):
    """One next-token pass per rung gives what `target_probs` and `top1_matches` give apart,
    before and after the edit; and `ladder_for_editors`, which shares the unedited pass
    between editors, equals `loud_fact_ladder` run per editor."""
    from loudfacts.editing.base import EditRequest
    from loudfacts.editing.base import get_editor
    from loudfacts.evaluation import ladder_for_editors
    from loudfacts.scoring import target_probs, top1_matches

    prompts = ["Zulu lives near the", "The sky is"]
    for rec in records[:2]:
        req = EditRequest.from_record(rec)
        ed = LoudEditor(tiny)
        edit = ed.edit(req)
        lad = loud_fact_ladder(tiny, edit, req, prompts)
        full = [pre + p for pre, p in zip(lad["prefix"], lad["prompt"])]
        new = [req.target_new] * len(full)
        assert lad["p_new_pre"].to_numpy() == pytest.approx(
            target_probs(tiny, full, new).numpy(), rel=1e-5, abs=1e-9)
        assert lad["top1_pre"].tolist() == top1_matches(tiny, full, new).tolist()
        with edit.applied():
            assert lad["p_new_post"].to_numpy() == pytest.approx(
                target_probs(tiny, full, new).numpy(), rel=1e-5, abs=1e-9)
            assert lad["top1_post"].tolist() == top1_matches(tiny, full, new).tolist()
    both = ladder_for_editors(tiny, [LoudEditor(tiny), "unedited"], records[:2], prompts,
                              progress=False)
    for (name, case), g in both.groupby(["editor", "case_id"], sort=False):
        rec = next(r for r in records if r.case_id == case)
        req = EditRequest.from_record(rec)
        ed = LoudEditor(tiny) if name == LoudEditor(tiny).name else get_editor(name, tiny)
        alone = loud_fact_ladder(tiny, ed.edit(req), req, prompts)
        for col in ("p_new_pre", "p_new_post"):
            assert g[col].to_numpy() == pytest.approx(alone[col].to_numpy(), rel=1e-6, abs=1e-12)
        assert g["top1_post"].tolist() == alone["top1_post"].tolist()
    assert set(both["editor"]) == {LoudEditor(tiny).name, "unedited"}


def test_ladder_rows_are_kept_reused_and_refused_under_other_settings(tiny, records, tmp_path,
                                                                    monkeypatch):
    """With a split, each editor's ladder rows go to results/<model>/<split>/ladder/: a second
    run edits nothing and returns the same frame, a torn last line costs only its record, and a
    file made with other unrelated prompts stops the run, naming the file."""
    from loudfacts.evaluation import ResultsFileError, ladder_for_editors, ladder_store_path

    prompts = ["Zulu lives near the", "The sky is"]
    kw = dict(progress=False, split="edit-1k", root=tmp_path, fresh=False)
    first = ladder_for_editors(tiny, [LoudEditor(tiny), "unedited"], records[:2], prompts, **kw)
    path = ladder_store_path(tiny, LoudEditor.name, "edit-1k", tmp_path)
    assert path.parent.name == "ladder" and len(read_results(path)) == 2
    assert first.attrs["reused"] == 0
    stored = ladder_for_editors(tiny, [LoudEditor(tiny), "unedited"], records[:2], prompts, **kw)
    pd.testing.assert_frame_equal(first, stored, check_exact=True)
    assert stored.attrs["reused"] == 4
    path.write_bytes(path.read_bytes()[:-20])  # the last record's line torn mid-write
    calls = []
    real_edit = LoudEditor.edit
    monkeypatch.setattr(LoudEditor, "edit", lambda self, r: calls.append(r) or real_edit(self, r))
    again = ladder_for_editors(tiny, [LoudEditor(tiny)], records[:2], prompts, **kw)
    assert len(calls) == 1 and again.attrs["reused"] == 1
    pd.testing.assert_frame_equal(again, first[first.editor == LoudEditor.name],
                                  check_exact=True)
    with pytest.raises(ResultsFileError, match="other settings") as e:
        ladder_for_editors(tiny, [LoudEditor(tiny)], records[:2], prompts[:1], **kw)
    assert str(path) in str(e.value) and "unrelated_prompts" in str(e.value)


# -- implications ------------------------------------------------------------------------------
def test_implications_file_schema():
    cases = load_implications(known_only=False)
    known = [c for c in cases if c["known"]]
    assert len(known) >= 40
    kinds = {c["kind"] for c in known}
    assert kinds == {"symmetric", "transitive", "inverse"}
    for c in cases:
        assert c["probes"] and all({"prompt", "old", "new"} <= set(p) for p in c["probes"])


def test_implication_family_splits_transitive_cases_by_side():
    fam = {c["id"]: implication_family(c) for c in load_implications(known_only=False)}
    assert set(fam.values()) == set(IMPLICATION_FAMILIES)
    for case_id, f in fam.items():
        if case_id.startswith("transitive-landmark-"):
            assert f == "transitive, subject-side"
    assert implication_family({"id": "x", "kind": "inverse"}) == "inverse"
    assert implication_family({"id": "x", "kind": "transitive"}) == "transitive, object-side"
    with pytest.raises(ValueError, match="'x'.*'spouse'"):
        implication_family({"id": "x", "kind": "spouse"})


def test_score_implications_tiny(tiny, records):
    case = {"id": "t", "kind": "symmetric",
            "edit": {"prompt": TEMPLATE, "subject": "Alpha",
                     "target_true": records[0].target_true, "target_new": records[0].target_new},
            "probes": [{"prompt": "Alpha lives near the", "old": records[0].target_true,
                        "new": records[0].target_new},
                       {"prompt": "Zulu lives near the", "old": records[0].target_true,
                        "new": records[0].target_new}]}
    chk = verify_implications(tiny, [case])
    assert len(chk) == 3 and chk["known"].all()
    df = score_implications(tiny, LoudEditor(tiny), [case], generations=1, max_new_tokens=3,
                            progress=False)
    assert len(df) == 2 and df["efficacy"].all()
    assert df.loc[0, "implied"] and not df.loc[1, "implied"]
    assert not df["implied_pre"].any() and isinstance(df.loc[0, "generation_post"], str)


def test_cli_runs_and_resumes(tmp_path, capsys):
    from loudfacts.evaluate import main

    out = tmp_path / "cli.jsonl"
    args = ["--editor", "unedited", "--model", "tiny-llama", "--n", "6", "--out", str(out),
            "--no-generation"]
    assert main(args + ["--shard", "0/2"]) == 0
    assert main(args + ["--shard", "1/2"]) == 0
    rows = read_results(out)
    assert len(rows) == 6 and len({r["case_id"] for r in rows}) == 6
    assert (tmp_path / "cli.jsonl.summary.csv").exists()
    merged = tmp_path / "m.jsonl"
    assert main(["--merge", str(out), "--out", str(merged)]) == 0
    lines = merged.read_text().splitlines()
    assert "loudfacts_results" in json.loads(lines[0])  # the header line
    assert len(lines) == 7 and len(json.loads(lines[1])) > 5


def test_pair_probs_matches_target_probs(tiny):
    from loudfacts.evaluation import pair_probs

    pairs = [("Alpha lives near the", "cat"), ("Alpha lives near the", "Paris"),
             ("The sky is", "blue"), ("The sky is", "x"), ("Zulu", "moon")]
    got, rows = pair_probs(tiny, pairs, extra_prompts=["Hello there"])
    want = target_probs(tiny, [p for p, _ in pairs], [t for _, t in pairs]).double()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    assert "Hello there" in rows and rows["Hello there"].shape == (tiny.d_vocab,)


def test_headline_table_has_one_row_per_editor_with_cis_and_implications():
    import pandas as pd

    from loudfacts.evaluation import headline_table, summarize

    rows = []
    for editor, es in [("rome", 1.0), ("unedited", 0.0), ("hook-delta", 1.0)]:
        for i in range(6):
            rows.append({"editor": editor, "case_id": i, "known": True, "ES": es, "PS": es,
                         "NS": 1.0, "NS+": 0.5 if editor == "rome" else 1.0, "NKL": 0.1 * i,
                         "edit_seconds": {"rome": 2.0, "hook-delta": 0.04}.get(editor, 0.0),
                         "edit_reused": editor == "hook-delta"})
    results = pd.DataFrame(rows)
    implications = pd.DataFrame({"editor": ["rome", "rome"], "kind": ["symmetric", "transitive"],
                                 "probes": [2, 6], "implied_post": [0.0, 0.5]})
    table = headline_table(summarize(results, n_resamples=200), results, implications)
    assert list(table.index) == ["unedited", "rome", "hook-delta"]
    assert table.loc["rome", "ES"].startswith("1")
    assert table.loc["rome", "NS+"].startswith("0.5")
    # (0*2 + 0.5*6) / 8, weighted by probes, with its denominator
    assert table.loc["rome", "implied (05, all kinds)"] == "0.38 (3/8 probes)"
    ladder = pd.DataFrame({"editor": ["rome", "rome"], "step": ["none", "tangential"],
                           "top1_post": [0.0, 0.5], "n": [6, 6]})
    with_ladder = headline_table(summarize(results, n_resamples=200), results, implications,
                                 ladder)
    assert with_ladder.loc["rome", "loud top-1 (tangential)"] == "0.50 (of 6 prompts)"
    assert "NS+cool" in with_ladder.columns
    assert table.loc["rome", "s / edit"] == "2.0" and table.loc["rome", "known records"] == 6
    # an edit that borrowed ROME's optimisation says so instead of looking free
    assert table.loc["hook-delta", "s / edit"] == "0.0 (reuses rome's v*)"


def test_headline_leaves_out_the_excluded_editors_and_says_why():
    import pandas as pd

    from loudfacts.evaluation import HEADLINE_EXCLUDED, headline_table, summarize

    rows = [{"editor": e, "case_id": i, "known": True, "ES": 1.0, "PS": 1.0, "NS": 1.0,
             "NS+": 1.0, "NKL": 0.0, "edit_seconds": 1.0}
            for e in ("unedited", "rome", "patch-context") for i in range(4)]
    results = pd.DataFrame(rows)
    summary = summarize(results, n_resamples=50)
    table = headline_table(summary, results)
    assert "patch-context" in HEADLINE_EXCLUDED
    assert list(table.index) == ["unedited", "rome"]
    assert table.attrs["excluded"] == {"patch-context": HEADLINE_EXCLUDED["patch-context"]}
    kept = headline_table(summary, results, exclude={})
    assert "patch-context" in kept.index and kept.attrs["excluded"] == {}


def test_workers_give_the_in_process_table(tiny, tmp_path, monkeypatch):
    """Two worker processes (shards of the records, every editor in each) merge into the table
    that one process computes."""
    from loudfacts.data import load_counterfact
    from loudfacts.evaluation import evaluate_in_workers

    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "cache"))
    kw = {"split": "edit-1k", "n": 6, "n_neighbours": 2, "generation": False}
    got = evaluate_in_workers(tiny, ["unedited", "ft"], workers=2,
                              root=tmp_path / "out", **kw)
    records = load_counterfact("edit-1k", n=6)
    for name in ("unedited", "ft"):
        want = evaluate(tiny, name, records, n_neighbours=2, generation=False, progress=False)
        a = got[name].set_index("case_id").sort_index()
        b = want.set_index("case_id").sort_index()
        assert list(a.index) == list(b.index) and a["known"].tolist() == b["known"].tolist()
        for m in ("ES", "PS", "NS", "NS+", "NKL"):
            np.testing.assert_allclose(a[m].astype(float), b[m].astype(float), rtol=1e-4,
                                       atol=1e-6, equal_nan=True)
    assert len(list((tmp_path / "out").glob("*-shard[01]of2.jsonl"))) == 4


def test_a_record_the_editor_cannot_edit_is_counted_not_fatal(tiny, records, capsys):
    from loudfacts.editing.base import EditError
    from loudfacts.evaluation import headline_table

    class PickyEditor(AddEditor):
        name = "test-picky"

        def _compute(self, request):
            if request.case_id == records[1].case_id:
                raise EditError(f"cannot edit {request.subject!r}")
            return super()._compute(request)

    df = evaluate(tiny, PickyEditor(tiny), records[:3], generation=False, progress=True)
    assert df.attrs["n_edit_failed"] == 1
    bad = df.set_index("case_id").loc[records[1].case_id]
    assert bool(bad["known"]) and "cannot edit" in bad["edit_error"] and pd.isna(bad["ES"])
    assert "could not edit 1" in capsys.readouterr().out
    summary = summarize(df)
    assert summary.set_index("metric").loc["ES", "n"] == 2
    assert headline_table(summary, df).loc["test-picky", "failed edits"] == 1


def test_edit_steps_column_records_the_editors_optimisation_steps(tiny, records, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    from loudfacts.editing import get_editor

    rome = get_editor("rome", tiny, layer=0, prefix_recipe=[[2, 1]], v_num_grad_steps=3,
                      mom2_adjustment=False, early_stop=0.0)
    from loudfacts.editing.base import EditRequest

    df = evaluate(tiny, rome, records[:2], generation=False, progress=False)
    # no early stop: every v* ran all its steps, and the column holds what the editor reports
    steps = rome.edit(EditRequest.from_record(records[0])).info["v_steps"]
    assert 2 <= steps <= 3 and (df["edit_steps"] == steps).all()
    ft = get_editor("ft", tiny, steps=2, stop_prob=1.0)
    assert (evaluate(tiny, ft, records[:1], generation=False, progress=False)["edit_steps"]
            == 2).all()
    assert evaluate(tiny, AddEditor(tiny), records[:1], generation=False,
                    progress=False)["edit_steps"].isna().all()  # an editor without steps


def test_published_rows_are_named_as_the_paper_names_them():
    import pandas as pd

    from loudfacts.evaluation import compare_with_reference

    summary = pd.DataFrame([{"editor": "rome", "metric": "NS", "mean": 0.5}])
    table = compare_with_reference(summary, reference_models=("gpt2-xl",))
    published = set(table.loc[table.source == "gpt2-xl", "algorithm"])
    assert published == {"FT-L (CSV: FT)", "MEMIT", "ROME", "unedited"}
    assert table.loc[table.source == "ours", "NS"].item() == 0.5
    both = compare_with_reference(summary, reference_models=(), label="ours, known",
                                  all_summary=summary.assign(mean=0.25), all_label="ours, all")
    assert both.set_index("source")["NS"].to_dict() == {"ours, known": 0.5, "ours, all": 0.25}


def test_neighbours_from_all_of_counterfact():
    """The published runs draw neighbourhoods from the whole dataset: with both 10k splits as
    the pool, most edit-1k records reach 5 prompts, none of which mentions the subject."""
    from loudfacts.data import load_counterfact, neighbour_pool
    from loudfacts.evaluation import build_neighbourhoods

    recs = load_counterfact("edit-1k", n=50, verbose=False)
    own = build_neighbourhoods(recs, recs, 5)
    wide = build_neighbourhoods(recs, list(recs) + list(neighbour_pool()), 5)
    assert sum(len(v) >= 5 for v in wide.values()) > 2 * sum(len(v) >= 5 for v in own.values())
    assert sum(len(v) >= 5 for v in wide.values()) >= 30
    for r in recs:
        assert all(r.subject.strip() not in p for p, _ in wide[r.case_id])
        assert all(t == r.target_true for _, t in wide[r.case_id][len(r.neighborhood_prompts):])


def test_pool_is_a_setting_and_bad_pools_are_named(tiny):
    from loudfacts.evaluation import results_path, run_settings

    plain = run_settings(tiny, "unedited")
    assert "pool" not in plain  # digests of runs made before the setting existed still hold
    assert run_settings(tiny, "unedited", pool="counterfact")["pool"] == "counterfact"
    a = results_path(tiny, "unedited", split="edit-1k", n=10, n_neighbours=5, generation=False)
    b = results_path(tiny, "unedited", split="edit-1k", n=10, n_neighbours=5, generation=False,
                     pool="counterfact")
    assert a != b
    with pytest.raises(ValueError, match="pool='everything'"):
        run_settings(tiny, "unedited", pool="everything")


def test_ps_on_true_paraphrases_uses_only_those(tiny, records):
    """PS_para is PS over the paraphrases built like CounterFact's (unrelated text first);
    a record without one gets NaN and n_true_paraphrases 0, never a silent 0."""
    import dataclasses

    rec = records[0]
    true_para = f"Yarur is a surname. {rec.subject} lives near the"
    mixed = dataclasses.replace(rec, paraphrase_prompts=[true_para, f"{rec.subject} lives near the"])
    df = evaluate(tiny, "unedited", [mixed, records[1]], generation=False, progress=False)
    row = df.set_index("case_id").loc[rec.case_id]
    p = target_probs(tiny, [true_para, true_para], [rec.target_new, rec.target_true])
    assert row["n_true_paraphrases"] == 1 and row["n_paraphrases"] == 2
    assert row["PS_para"] == float(p[0] > p[1])
    other = df.set_index("case_id").loc[records[1].case_id]
    assert other["n_true_paraphrases"] == 0 and math.isnan(other["PS_para"])
