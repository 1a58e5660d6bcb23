"""The study's committed rows (`loudfacts.evaluation.study`, `store_path`) and neighbourhoods
topped up to a minimum (`build_neighbourhoods(top_up=...)`), on the tiny model."""

from __future__ import annotations

import json
import multiprocessing as mp
import shlex
from pathlib import Path

import numpy as np
import pytest

from loudfacts.data import CounterFactRecord, load_counterfact
from loudfacts.runner import (
    ResultsFileError,
    _append,
    _create_new,
    plan_run,
    build_neighbourhoods,
    evaluate,
    read_results,
    store_path,
    study,
)

KW = {"split": "edit-1k", "n_neighbours": 3, "generation": False}


def _rec(cid, subject, template, true, new="Mars", neighbours=()):
    return CounterFactRecord(case_id=cid, subject=subject, prompt=template, target_true=true,
                             target_new=new, relation=template,
                             paraphrase_prompts=[], neighborhood_prompts=list(neighbours),
                             neighborhood_true=[true] * len(neighbours), layout="flat")


# -- neighbourhoods ----------------------------------------------------------------------------
def test_top_up_fills_in_tiers_and_never_uses_the_subject_or_the_new_object():
    rec = _rec(1, "Alpha", "{} is in", "Paris", new="Rome", neighbours=["Zeta is in"])
    pool = [
        rec,
        _rec(2, "Bravo", "{} is in", "Paris"),              # tier 1: same template and object
        _rec(3, "Charlie", "{}, located in", "Paris"),      # tier 2: same object, other template
        _rec(4, "Delta", "{} is in", "Berlin"),             # tier 3: same template, other object
        _rec(5, "Echo", "{} is in", "Rome"),                # never: its answer is the new object
        _rec(6, "Alpha Beta", "{} is in", "Oslo"),          # never: mentions the subject
        _rec(7, "Foxtrot", "{} was born in", "Madrid"),     # never: other template and object
    ]
    plain = build_neighbourhoods([rec], pool, 10)[1]
    assert plain == [("Zeta is in", "Paris"), ("Bravo is in", "Paris")]
    tiers: dict = {}
    got = build_neighbourhoods([rec], pool, 10, top_up="object-then-relation", tiers=tiers)[1]
    assert got == [("Zeta is in", "Paris"), ("Bravo is in", "Paris"),
                   ("Charlie, located in", "Paris"), ("Delta is in", "Berlin")]
    assert tiers[1] == [1, 1, 2, 3]
    # the cap applies across tiers, earlier tiers first
    assert build_neighbourhoods([rec], pool, 3, top_up="object-then-relation")[1] == got[:3]
    with pytest.raises(ValueError, match="top_up='more'"):
        build_neighbourhoods([rec], pool, 3, top_up="more")


def test_top_up_gives_every_edit_1k_record_five_prompts_on_all_of_counterfact(tiny_llama):
    records = load_counterfact("edit-1k", verbose=False)
    plan = plan_run(tiny_llama, "unedited", records, n_neighbours=10, generation=False,
                 n_generation=1, max_new_tokens=30, generation_records=None,
                 pool="counterfact", top_up="object-then-relation", seed=0, shard=None)
    counts = [len(v) for v in plan.neighbourhoods.values()]
    assert min(counts) >= 5 and np.mean([c == 10 for c in counts]) > 0.95
    for r in records:
        assert all(r.subject.strip() not in p for p, _ in plan.neighbourhoods[r.case_id])
        assert all(t != r.target_new for _, t in plan.neighbourhoods[r.case_id])


def test_a_records_neighbourhood_does_not_depend_on_which_records_are_evaluated(tiny_llama):
    """So the rows of the first 10 records stay valid when the study grows to 40."""
    records = load_counterfact("edit-1k", n=40, verbose=False)
    opts = dict(n_neighbours=10, generation=False, n_generation=1, max_new_tokens=30,
                generation_records=None, pool="counterfact", top_up="object-then-relation",
                seed=0, shard=None)
    small = plan_run(tiny_llama, "unedited", records[:10], **opts)
    big = plan_run(tiny_llama, "unedited", records, **opts)
    assert small.digests == {c: big.digests[c] for c in small.digests}


# -- the committed rows ------------------------------------------------------------------------
def test_store_path_is_one_file_per_model_split_and_editor(tiny_llama, tmp_path):
    p = store_path(tiny_llama, "rome", "edit-1k", tmp_path)
    assert p == tmp_path / "tiny-llama" / "edit-1k" / "rome.jsonl"
    with pytest.raises(ValueError, match="editor name"):
        store_path(tiny_llama, "../rome", "edit-1k", tmp_path)


def test_study_reuses_rows_computes_only_the_missing_ones_and_equals_evaluate(tiny_llama,
                                                                              tmp_path):
    first = study(tiny_llama, ["unedited", "ft"], n=4, root=tmp_path, fresh=False, **KW)
    assert {k: v.attrs["computed"] for k, v in first.items()} == {"unedited": 4, "ft": 4}
    from loudfacts.paths import git_commit

    # every row names the code and the machine that made it
    assert (first["ft"]["commit"] == git_commit()).all() and git_commit() != ""
    assert first["ft"]["machine"].str.len().gt(0).all()
    path = store_path(tiny_llama, "ft", "edit-1k", tmp_path)
    before = path.read_text().splitlines()
    more = study(tiny_llama, ["unedited", "ft"], n=6, root=tmp_path, fresh=False, **KW)
    assert {k: (v.attrs["reused"], v.attrs["computed"]) for k, v in more.items()} == \
        {"unedited": (4, 2), "ft": (4, 2)}
    after = path.read_text().splitlines()
    assert after[:len(before)] == before and len(after) == len(before) + 2  # appended only
    again = study(tiny_llama, ["ft"], n=5, root=tmp_path, fresh=False, **KW)["ft"]
    assert again.attrs["computed"] == 0 and len(again) == 5
    assert again["case_id"].tolist() == more["ft"]["case_id"].tolist()[:5]
    records = load_counterfact("edit-1k", n=6, verbose=False)
    want = evaluate(tiny_llama, "ft", records, pool="counterfact", progress=False, **{
        k: v for k, v in KW.items() if k != "split"})
    for m in ("ES", "PS", "NS", "NS+", "NKL"):
        np.testing.assert_allclose(more["ft"][m].astype(float), want[m].astype(float),
                                   rtol=1e-4, atol=1e-6, equal_nan=True)


def test_study_refuses_a_file_made_under_other_settings_and_fresh_recomputes(tiny_llama,
                                                                             tmp_path):
    study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=False, **KW)
    path = store_path(tiny_llama, "unedited", "edit-1k", tmp_path)
    text = path.read_text()
    other = {**KW, "n_neighbours": 2}
    with pytest.raises(ResultsFileError, match="n_neighbours") as e:
        study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=False, **other)
    assert str(path) in str(e.value) and "FRESH=1" in str(e.value)
    assert path.read_text() == text  # left as it was
    got = study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=True, **other)["unedited"]
    assert got.attrs["computed"] == 3
    assert json.loads(path.read_text().splitlines()[0])["runs"].popitem()[1][
        "n_neighbours"] == 2


def test_fresh_comes_from_the_environment(tiny_llama, tmp_path, monkeypatch):
    study(tiny_llama, ["unedited"], n=2, root=tmp_path, fresh=False, **KW)
    monkeypatch.setenv("LOUDFACTS_FRESH", "1")
    assert study(tiny_llama, ["unedited"], n=2, root=tmp_path, **KW)[
        "unedited"].attrs["computed"] == 2
    monkeypatch.setenv("LOUDFACTS_FRESH", "")
    assert study(tiny_llama, ["unedited"], n=2, root=tmp_path, **KW)[
        "unedited"].attrs["computed"] == 0


def test_study_in_two_workers_sharing_one_file_equals_one_process(tiny_llama, tmp_path):
    """The local launcher: two shard processes append to the same file under a lock; the
    result equals the unsharded run row for row."""
    kw = {**KW, "top_up": "object-then-relation"}
    one = study(tiny_llama, ["unedited", "ft"], n=6, root=tmp_path / "a", fresh=False, **kw)
    two = study(tiny_llama, ["unedited", "ft"], n=6, root=tmp_path / "b", fresh=False,
                workers=2, **kw)
    for name in ("unedited", "ft"):
        a, b = one[name], two[name]
        assert a["case_id"].tolist() == b["case_id"].tolist()
        assert a["settings_digest"].tolist() == b["settings_digest"].tolist()
        for m in ("ES", "PS", "NS", "NS+", "NS+cool", "NKL"):
            np.testing.assert_allclose(a[m].astype(float), b[m].astype(float), rtol=1e-4,
                                       atol=1e-6, equal_nan=True)
        assert len(read_results(store_path(tiny_llama, name, "edit-1k", tmp_path / "b"))) == 6
    assert not list((tmp_path / "b").rglob("*shard*"))  # no per-shard files


def _append_many(path, worker, n):
    for i in range(n):
        _append(path, {"case_id": worker * 10_000 + i, "editor": "e", "model": "m",
                       "run_key": "k", "settings_digest": "d", "pad": "x" * 20_000})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert _create_new(path, {"k": {"editor": "e", "model": "m"}})
    assert not _create_new(path, {"k": {"editor": "e", "model": "m"}})  # never replaced
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 60)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    rows = read_results(path)
    assert len(rows) == 180 and len({r["case_id"] for r in rows}) == 180


def test_cli_store_needs_editors_and_excludes_out_dir(tmp_path, capsys):
    from loudfacts.evaluate import main

    with pytest.raises(SystemExit):
        main(["--editor", "unedited", "--store", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "--store needs --editors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--editors", "unedited", "--store", str(tmp_path), "--out-dir", str(tmp_path)])
    assert "one of them" in capsys.readouterr().err


def test_cli_store_writes_the_study_file(tmp_path):
    from loudfacts.evaluate import main

    args = ["--editors", "unedited", "--model", "tiny-llama", "--n", "4", "--no-generation",
            "--n-neighbours", "3", "--pool", "counterfact", "--store", str(tmp_path)]
    assert main(args + ["--shard", "0/2"]) == 0
    assert main(args + ["--shard", "1/2"]) == 0
    path = tmp_path / "tiny-llama" / "edit-1k" / "unedited.jsonl"
    assert len(read_results(path)) == 4


# -- the launcher ------------------------------------------------------------------------------
def test_strip_options_removes_the_launchers_own_options():
    from loudfacts.launch import strip_options

    argv = ["--editors", "a,b", "--launcher", "local", "--shards=3", "--store", "r",
            "--n", "4", "--slurm-gpus", "1", "--no-generation"]
    assert strip_options(argv) == ["--editors", "a,b", "--n", "4", "--no-generation"]


def test_local_launcher_shards_and_merge_equal_the_unsharded_run(tiny_llama, tmp_path):
    """`--launcher local --shards 2`: two submitit jobs, each writing its own shard files,
    merged into the study's file; the rows equal a one-process run's."""
    from loudfacts.evaluate import main

    args = ["--editors", "unedited,ft", "--model", "tiny-llama", "--n", "6", "--no-generation",
            "--n-neighbours", "3", "--pool", "counterfact", "--threads", "1"]
    assert main(args + ["--store", str(tmp_path / "one")]) == 0
    assert main(args + ["--store", str(tmp_path / "two"), "--launcher", "local",
                        "--shards", "2"]) == 0
    for name in ("unedited", "ft"):
        a = read_results(store_path(tiny_llama, name, "edit-1k", tmp_path / "one"))
        b = read_results(store_path(tiny_llama, name, "edit-1k", tmp_path / "two"))
        a, b = (sorted(x, key=lambda r: r["case_id"]) for x in (a, b))
        assert [r["case_id"] for r in a] == [r["case_id"] for r in b] and len(a) == 6
        assert [r["settings_digest"] for r in a] == [r["settings_digest"] for r in b]
        for m in ("ES", "PS", "NS", "NS+", "NKL"):
            np.testing.assert_allclose([np.nan if r[m] is None else r[m] for r in a],
                                       [np.nan if r[m] is None else r[m] for r in b],
                                       rtol=1e-4, atol=1e-6)
    # a second launch finds every row: each shard resumes its file, the merge adds nothing
    assert main(args + ["--store", str(tmp_path / "two"), "--launcher", "local",
                        "--shards", "2"]) == 0
    assert len(read_results(store_path(tiny_llama, "ft", "edit-1k", tmp_path / "two"))) == 6


def test_launcher_needs_shards_and_editors(tmp_path, capsys):
    from loudfacts.evaluate import main

    with pytest.raises(SystemExit):
        main(["--editors", "unedited", "--store", str(tmp_path), "--launcher", "local"])
    assert "--launcher and --shards go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--editors", "unedited", "--store", str(tmp_path), "--launcher", "local",
              "--shards", "2", "--shard", "0/2"])
    assert "not --shard" in capsys.readouterr().err


def test_study_without_compute_reads_rows_and_names_what_is_missing(tiny_llama, tmp_path):
    made = study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=False, **KW)["unedited"]
    path = store_path(tiny_llama, "unedited", "edit-1k", tmp_path)
    text = path.read_text()
    got = study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=False, compute=False,
                **KW)["unedited"]
    assert got.attrs["computed"] == 0 and got["case_id"].tolist() == made["case_id"].tolist()
    with pytest.raises(ResultsFileError) as e:  # one record more than the file holds
        study(tiny_llama, ["unedited"], n=4, root=tmp_path, fresh=False, compute=False, **KW)
    assert str(path) in str(e.value) and "unedited 1" in str(e.value)
    assert "python -m loudfacts.evaluate --editors unedited" in str(e.value)
    assert path.read_text() == text  # nothing computed or appended
    with pytest.raises(ResultsFileError, match="ft 3"):  # no file at all: none is created
        study(tiny_llama, ["ft"], n=3, root=tmp_path, fresh=False, compute=False, **KW)
    assert not store_path(tiny_llama, "ft", "edit-1k", tmp_path).exists()
    with pytest.raises(ValueError, match="fresh=True, compute=False"):
        study(tiny_llama, ["unedited"], n=3, root=tmp_path, fresh=True, compute=False, **KW)
    assert path.read_text() == text


# -- populations: known, unknown, all ------------------------------------------------------------
def test_population_unknown_edits_exactly_the_records_the_known_run_left_out(tiny_llama):
    records = load_counterfact("edit-1k", n=12, verbose=False)
    kw = {k: v for k, v in KW.items() if k != "split"}
    known = evaluate(tiny_llama, "ft", records, pool="counterfact", progress=False, **kw)
    unknown = evaluate(tiny_llama, "ft", records, pool="counterfact", progress=False,
                       population="unknown", **kw)
    every = evaluate(tiny_llama, "ft", records, pool="counterfact", progress=False,
                     population="all", **kw)
    k_mask = known["known"].to_numpy()
    assert 0 < k_mask.sum() < len(records), "the tiny model must know some records, not all"
    assert (unknown["known"].to_numpy() == k_mask).all()
    # each population scores its own records and leaves the others' metrics empty
    assert known.loc[k_mask, "ES"].notna().all() and known.loc[~k_mask, "ES"].isna().all()
    assert unknown.loc[~k_mask, "ES"].notna().all() and unknown.loc[k_mask, "ES"].isna().all()
    assert every["ES"].notna().all()
    # an edit does not depend on the population it was made in
    for m in ("ES", "PS", "NS", "NS+", "NKL"):
        joined = known[m].where(k_mask, unknown[m]).astype(float)
        np.testing.assert_allclose(joined, every[m].astype(float), rtol=1e-4, atol=1e-6)
    # and the population is part of the run's settings (the default's key is unchanged)
    assert len({known["run_key"][0], unknown["run_key"][0], every["run_key"][0]}) == 3
    with pytest.raises(ValueError, match="population='most'"):
        evaluate(tiny_llama, "ft", records, progress=False, population="most", **kw)


def test_all_records_joins_the_known_and_unknown_files_without_editing_twice(tiny_llama,
                                                                           tmp_path):
    from loudfacts.claims import paired_effect
    from loudfacts.metrics import summarize
    from loudfacts.runner import all_records

    kw = {**KW, "pool": "counterfact"}
    known = study(tiny_llama, ["unedited", "ft"], n=8, root=tmp_path, fresh=False, **kw)
    assert store_path(tiny_llama, "ft", "edit-1k", tmp_path, "unknown") == \
        tmp_path / "tiny-llama" / "edit-1k" / "unknown" / "ft.jsonl"
    with pytest.raises(ResultsFileError, match="--population unknown"):
        all_records(tiny_llama, ["unedited", "ft"], n=8, root=tmp_path, compute=False, **kw)
    rows = all_records(tiny_llama, ["unedited", "ft"], n=8, root=tmp_path, **kw)
    n_known = int(known["ft"]["known"].sum())
    assert rows.attrs == {"n_records": 8, "n_known": n_known}
    assert len(rows) == 16 and rows.groupby("editor")["case_id"].nunique().eq(8).all()
    assert rows["ES"].notna().all()
    ft = rows[rows["editor"] == "ft"].reset_index(drop=True)
    assert ft["case_id"].tolist() == known["ft"]["case_id"].tolist()  # record order kept
    # known rows are the known study's rows, untouched
    kept = ft[ft["known"]]
    assert kept["settings_digest"].tolist() == \
        known["ft"].loc[known["ft"]["known"], "settings_digest"].tolist()
    # the unknown file edited only the unknown records
    unk = read_results(store_path(tiny_llama, "ft", "edit-1k", tmp_path, "unknown"))
    assert sum(r["ES"] is not None for r in unk) == 8 - n_known
    # the analyses take the population
    all_n = paired_effect(rows, "ft", "ES", population="all")["n"]
    assert all_n == 8 and paired_effect(rows, "ft", "ES")["n"] == n_known
    assert paired_effect(rows, "ft", "ES", population="unknown")["n"] == 8 - n_known
    s = summarize(rows, metrics=["ES"], population="all")
    assert s.set_index("editor").loc["ft", "n"] == 8
    # reading again computes nothing
    again = all_records(tiny_llama, ["unedited", "ft"], n=8, root=tmp_path, compute=False,
                        **kw)
    assert again["settings_digest"].tolist() == rows["settings_digest"].tolist()


def test_cli_population_unknown_writes_its_own_study_file(tmp_path):
    from loudfacts.evaluate import main

    args = ["--editors", "unedited", "--model", "tiny-llama", "--n", "4", "--no-generation",
            "--n-neighbours", "3", "--pool", "counterfact", "--store", str(tmp_path),
            "--population", "unknown"]
    assert main(args) == 0
    rows = read_results(tmp_path / "tiny-llama" / "edit-1k" / "unknown" / "unedited.jsonl")
    assert len(rows) == 4
    assert all((r["ES"] is None) == r["known"] for r in rows)
    assert not (tmp_path / "tiny-llama" / "edit-1k" / "unedited.jsonl").exists()


# -- variants: an editor under hyper-parameter overrides ----------------------------------------
def test_variant_rows_are_kept_apart_reused_and_differ_only_where_the_override_acts(
        tiny_llama, tmp_path):
    from loudfacts.runner import variant_path, variant_study

    kw = dict(split="edit-1k", n_neighbours=3, pool="counterfact", root=tmp_path,
              progress=False)
    p = variant_path(tiny_llama, "ft", {"seed": 1, "lr": 0.5}, "edit-1k", tmp_path)
    assert p == tmp_path / "tiny-llama" / "edit-1k" / "variants" / "ft" / "lr=0.5,seed=1.jsonl"
    with pytest.raises(ValueError, match="no overrides"):
        variant_path(tiny_llama, "ft", {}, "edit-1k", tmp_path)
    a = variant_study(tiny_llama, "ft", {"seed": 1}, n=3, **kw)
    assert (a.attrs["reused"], a.attrs["computed"]) == (0, 3)
    b = variant_study(tiny_llama, "ft", {"seed": 1}, n=5, **kw)
    assert (b.attrs["reused"], b.attrs["computed"]) == (3, 2)
    assert b["settings_digest"].tolist()[:3] == a["settings_digest"].tolist()
    header = json.loads(Path(b.attrs["path"]).read_text().splitlines()[0])
    assert next(iter(header["runs"].values()))["hparams"]["seed"] == 1
    # FT is deterministic: its seed changes the settings (another file) but not the numbers
    base = study(tiny_llama, ["ft"], n=5, fresh=False, **{k: v for k, v in kw.items()
                                                        if k != "progress"},
                 generation=False)["ft"]
    assert base["run_key"][0] != b["run_key"][0]
    np.testing.assert_allclose(base["ES"].astype(float), b["ES"].astype(float), rtol=1e-5,
                               equal_nan=True)


def test_variant_study_compute_false_reads_checks_and_names_the_command(tiny_llama, tmp_path):
    from loudfacts.runner import variant_path, variant_study

    kw = dict(split="edit-1k", n_neighbours=3, pool="counterfact", root=tmp_path,
              progress=False)
    with pytest.raises(ResultsFileError, match="no row for 3 of the first 3") as e:
        variant_study(tiny_llama, "ft", {"seed": 1}, n=3, compute=False, **kw)
    path = variant_path(tiny_llama, "ft", {"seed": 1}, "edit-1k", tmp_path)
    assert not path.exists() and str(path) in str(e.value)  # reading creates nothing
    made = variant_study(tiny_llama, "ft", {"seed": 1}, n=3, **kw)
    text = path.read_text()
    got = variant_study(tiny_llama, "ft", {"seed": 1}, n=3, compute=False, **kw)
    assert (got.attrs["reused"], got.attrs["computed"]) == (3, 0)
    assert got["case_id"].tolist() == made["case_id"].tolist()
    assert got["settings_digest"].tolist() == made["settings_digest"].tolist()
    np.testing.assert_array_equal(got["NS+"].astype(float), made["NS+"].astype(float))
    with pytest.raises(ResultsFileError, match="no row for 1 of the first 4") as e:
        variant_study(tiny_llama, "ft", {"seed": 1}, n=4, compute=False, **kw)
    assert path.read_text() == text  # nothing computed or appended
    # the message's command computes exactly the missing rows, in two shards
    from loudfacts.evaluate import main

    cmd = shlex.split(str(e.value).split("python -m loudfacts.evaluate ", 1)[1])
    assert cmd[cmd.index("--set") + 1] == "seed=1" and cmd[cmd.index("--n") + 1] == "4"
    assert cmd[cmd.index("--store") + 1] == str(tmp_path) and "--no-generation" in cmd
    for i in (0, 1):
        assert main(cmd + ["--shard", f"{i}/2"]) == 0
    got4 = variant_study(tiny_llama, "ft", {"seed": 1}, n=4, compute=False, **kw)
    assert got4["settings_digest"].tolist()[:3] == made["settings_digest"].tolist()
    assert len(read_results(path)) == 4  # one file, no row twice
    text = path.read_text()
    # rows made under other settings are refused, not read
    with pytest.raises(ResultsFileError, match="other settings"):
        variant_study(tiny_llama, "ft", {"seed": 1}, n=3, compute=False,
                      **{**kw, "n_neighbours": 2})
    assert path.read_text() == text


def test_cli_set_needs_editors_and_names_a_bad_override(tiny_llama, tmp_path, capsys):
    from loudfacts.evaluate import main
    from loudfacts.runner import variant_path

    base = ["--editors", "ft", "--model", "tiny-llama", "--n", "2", "--no-generation",
            "--n-neighbours", "2", "--pool", "counterfact"]
    with pytest.raises(SystemExit):
        main(base[2:] + ["--editor", "ft", "--out", str(tmp_path / "x.jsonl"), "--set", "seed=1"])
    assert "--set writes an editor's variant files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--store", str(tmp_path), "--set", "seed"])
    assert "'seed' is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--set \{'bogus': 1\}: unknown hyper-parameter"):
        main(base + ["--store", str(tmp_path), "--set", "bogus=1"])
    assert not (tmp_path / "tiny-llama" / "edit-1k" / "variants").exists()  # nothing written
    # values are JSON: the file is named by the override's canonical form
    assert main(base + ["--store", str(tmp_path), "--set", "lr=0.5", "--set", "seed=1"]) == 0
    assert (tmp_path / "tiny-llama" / "edit-1k" / "variants" / "ft" / "lr=0.5,seed=1.jsonl"
            ).exists()
    # the launcher's shard jobs merge into the same variant file, never the study's
    launched = base + ["--store", str(tmp_path / "L"), "--set", "seed=1", "--threads", "1"]
    assert main(launched + ["--launcher", "local", "--shards", "2"]) == 0
    v = variant_path(tiny_llama, "ft", {"seed": 1}, "edit-1k", tmp_path / "L")
    assert sorted(r["case_id"] for r in read_results(v)) == [
        r.case_id for r in load_counterfact("edit-1k", n=2, verbose=False)]
    assert not store_path(tiny_llama, "ft", "edit-1k", tmp_path / "L").exists()
    # --out-dir keeps each override's files apart
    assert main(base + ["--out-dir", str(tmp_path / "D"), "--set", "seed=1"]) == 0
    assert [p.parent.name for p in (tmp_path / "D").rglob("*.jsonl")] == ["seed=1"]
