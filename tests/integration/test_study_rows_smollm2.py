"""The committed study rows (`results/`) are the ones `make report` would compute.

Notebook 06 reuses a row only when the file's settings and the row's digest are the ones the
report's parameters give (`evaluation.study`). This checks that, without evaluating anything:
for every editor notebook 06 runs under `params/report.yaml`, the committed file exists, was
made under those settings (model weights, the editor's full hyper-parameters, the metric
version, neighbourhood and generation settings) and holds a row with the right digest for each
of the report's records. So a fresh clone's `make report` computes no row of the study, and a
change to an editor's hyper-parameters or a metric that leaves the rows stale fails here, naming
the file, rather than silently recomputing an hour of rows.
"""

from __future__ import annotations

import pytest

from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.editing.base import get_editor

pytestmark = pytest.mark.integration


def test_committed_rows_cover_the_report_population(model, report_params_06):
    p = report_params_06
    assert p["model_name"] == model.name
    records = load_counterfact(p["split"], n=p["n_records"], verbose=False)
    for name in p["editors"]:
        path = ev.store_path(model, name, p["split"])
        assert path.exists(), f"{path}: no committed rows for {name}"
        plan = ev.plan_run(model, get_editor(name, model), records,
                        n_neighbours=p["n_neighbours"], generation=p["generation"],
                        n_generation=p["n_generation"], max_new_tokens=p["max_new_tokens"],
                        generation_records=p["generation_records"], pool=p["neighbour_pool"],
                        top_up=p["neighbour_top_up"], seed=p["seed"], shard=None)
        f = ev.read_results_file(path)
        assert f.torn_at is None, f"{path}: torn last line"
        assert set(f.runs) == {plan.rkey}, (
            f"{path} was made under other settings than params/report.yaml gives: "
            + "; ".join(ev.settings_diff(next(iter(f.runs.values())), plan.settings)))
        rows = {r["case_id"]: r for r in f.rows}
        missing = [c for c in plan.digests if c not in rows]
        stale = [c for c, d in plan.digests.items() if c in rows
                 and rows[c]["settings_digest"] != d]
        assert not missing, f"{path}: no row for case ids {missing[:10]}"
        assert not stale, f"{path}: rows of case ids {stale[:10]} have other digests"


def test_study_effects_read_the_committed_rows_paired_with_the_unedited_model(model,
                                                                             report_params_06):
    """Notebooks 02-04 show their editors on these rows (`study_effects`): read, never
    computed, each cell the editor minus the unedited model on the same known records."""
    from loudfacts import claims as cl

    p = report_params_06
    settings = dict(n_neighbours=p["n_neighbours"], generation=p["generation"],
                    n_generation=p["n_generation"], max_new_tokens=p["max_new_tokens"],
                    generation_records=p["generation_records"], pool=p["neighbour_pool"],
                    top_up=p["neighbour_top_up"])
    n = min(200, p["n_records"])
    table = ev.study_effects(model, ["rome"], split=p["split"], n=n, seed=p["seed"],
                             n_resamples=200, **settings)
    rows = ev.read_study(model, ["unedited", "rome"], split=p["split"], n=n, seed=p["seed"],
                         **settings)
    assert list(table.index) == ["rome"]
    assert table.attrs["n_known"] == table.loc["rome", "n"] == int(
        rows.loc[rows.editor == "unedited", "known"].sum())
    for m in ("ES", "NS+"):
        r = cl.paired_effect(rows, "rome", m, n_resamples=200, seed=p["seed"])
        assert table.loc["rome", f"Δ{m}"] == (f"{r['effect']:+.3f} [{r['ci_low']:+.3f}, "
                                              f"{r['ci_high']:+.3f}]")
    assert float(table.loc["rome", "ΔES"].split()[0]) > 0.5  # ROME writes the facts
    n_para = int(rows.loc[rows.editor == "rome"].query("known")["PS_para"].notna().sum())
    assert table.loc["rome", "ΔPS_para"].endswith(f"(n={n_para})")


@pytest.mark.parametrize("stem", ["02_rome", "03_finetuning", "04_patching_edits",
                                  "07_quiet_edits"])
def test_notebooks_that_read_the_study_ask_for_notebook_06s_rows(stem, report_params_of,
                                                               report_params_06):
    """A notebook that reads 06's rows must name the same settings, or `make report` stops."""
    p, six = report_params_of(stem), report_params_06
    assert p["study_records"], f"{stem}: params/report.yaml does not have it read the study"
    assert p["study_records"] <= six["n_records"]
    assert p.get("study_split", p.get("split")) == six["split"]
    assert p["study_n_neighbours"] == six["n_neighbours"]
    assert p["study_generation_records"] == six["generation_records"]
    assert p.get("study_top_up", p.get("neighbour_top_up")) == six["neighbour_top_up"]
    assert p["seed"] == six["seed"]


def test_committed_quiet_rows_cover_what_notebooks_06_and_07_read(model, report_params_of,
                                                                  report_params_06):
    """rome-quiet's variant rows are computed beforehand (hours of edits) and only read by the
    report (`variant_study(compute=False)`): the committed file must hold a row, made under the
    report's settings, for each of the records 06 and 07 ask for."""
    six, seven = report_params_06, report_params_of("07_quiet_edits")
    asks = {("06", f, six["quiet_records"]) for f in six["quiet_factors"]}
    asks |= {("07", f, seven["study_quiet_records"]) for f in seven["study_quiet_factors"]}
    assert asks, "params/report.yaml shows rome-quiet on the study's rows in neither notebook"
    assert seven["study_quiet_records"] <= seven["study_records"]
    assert six["quiet_records"] <= six["n_records"]
    for stem, f, n in sorted(asks):
        rows = ev.variant_study(model, "rome-quiet", {"quiet_factor": float(f),
                                                      "seed": six["seed"]},
                                split=six["split"], n=n, n_neighbours=six["n_neighbours"],
                                pool=six["neighbour_pool"], top_up=six["neighbour_top_up"],
                                seed=six["seed"], compute=False, progress=False)
        assert len(rows) == n and rows.attrs["computed"] == 0, stem
        assert rows["ES"].notna().sum() == rows["known"].sum() > n // 2, stem
        assert rows["GE"].isna().all(), f"{stem}: variant rows carry no GE"


def test_committed_tracing_records_cover_the_report_averages(model, report_params_of,
                                                             monkeypatch):
    """Notebook 01's averages read their per-fact records from results/<model>/tracing/: under
    the report's parameters every (fact, kind) record is committed, so a fresh clone's report
    traces nothing (a trace here fails the test)."""
    from loudfacts import averages
    from loudfacts.knowledge import known_facts_table, select_known_facts
    from loudfacts.paths import results_dir

    p = report_params_of("01_causal_tracing")
    assert p["averages_store"] == "results"
    assert p["n_facts_average"] >= 200 and p["samples_average"] >= 3  # the study's floor

    def no_trace(*args, **kwargs):
        raise AssertionError("a record the report needs is not committed in "
                             f"{results_dir(model.name, 'tracing')}")

    # notebook 01 draws its facts from the largest knowledge table cached, which in a report run
    # is the one notebook 00 has just written; other tests leave smaller tables, so build 00's
    p00 = report_params_of("00_model_and_facts")
    table = known_facts_table(model, split="edit-1k", n_counterfact=p00["n_counterfact"],
                              n_known1000=p00["n_known1000"])
    facts = select_known_facts(model, p["n_facts_average"], seed=p["seed"], table=table)
    monkeypatch.setattr(averages, "trace", no_trace)
    store = results_dir(model.name, "tracing")
    avg = averages.average_effects(model, facts, kinds=p["kinds_average"],
                                  samples=p["samples_average"], window=p["window"],
                                  seed=p["seed"], store=store, progress=False)
    assert avg.n_facts == len(facts) >= 200
    if p["single_layer_mlp_average"]:
        averages.average_effects(model, facts[:p["n_facts_single_layer"]], kinds=["mlp"],
                                samples=p["samples_average"], window=1, seed=p["seed"],
                                store=store, progress=False)


def test_committed_ladder_rows_cover_the_report_ladder(model, report_params_06):
    """Notebook 06's loud-fact ladder reads its rows from results/<model>/<split>/ladder/: every
    editor has a row, made under the current settings, for each of the report's ladder records
    (the first `ladder_records` known records), so a fresh clone's report edits none."""
    p = report_params_06
    records = load_counterfact(p["split"], n=p["n_records"], verbose=False)
    unedited = ev.read_results(ev.store_path(model, "unedited", p["split"]))
    known = {r["case_id"] for r in unedited if r["known"]}
    ladder_recs = [r for r in records if r.case_id in known][:p["ladder_records"]]
    assert len(ladder_recs) == p["ladder_records"]
    for name in p["editors"]:
        path = ev.ladder_store_path(model, name, p["split"])
        assert path.exists(), f"{path}: no committed ladder rows for {name}"
        settings = ev.ladder_settings(model, name)
        key = ev.run_key(settings)
        f = ev.read_results_file(path)
        assert f.torn_at is None, f"{path}: torn last line"
        assert set(f.runs) == {key}, (
            f"{path} was made under other settings: "
            + "; ".join(ev.settings_diff(next(iter(f.runs.values())), settings)))
        rows = {r["case_id"]: r for r in f.rows}
        missing = [r.case_id for r in ladder_recs if r.case_id not in rows]
        stale = [r.case_id for r in ladder_recs if r.case_id in rows
                 and rows[r.case_id]["settings_digest"] != ev.ladder_row_digest(key, r)]
        assert not missing, f"{path}: no row for case ids {missing[:10]}"
        assert not stale, f"{path}: rows of case ids {stale[:10]} have other digests"
