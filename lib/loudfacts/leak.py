"""Loud facts: how far an edit leaks, which path carries the leak, and a closed-form predictor.

After ROME writes "The Louvre is in Rome", "The Louvre is cool. Barack Obama is from" starts
to answer "Rome". This module measures that leak on four families of probe prompts, traces it
by activation patching between the edited and the unedited model, and predicts it for ROME
from the unedited run alone.

The families (`leak_probes`):

- **neighbourhood**: CounterFact's neighbourhood prompts (other subjects, same relation);
- **counterfact+**: the same prompts after the edit statement (Specificity+'s prefix);
- **tangential**: "{subject} is cool. " before the neighbourhood prompts and before unrelated
  prompts (`probes.UNRELATED_PROMPTS`);
- **unrelated**: the unrelated prompts alone (no mention of the subject).

The leak of a prompt is ΔP = P_edited(new) − P_unedited(new), where P is the next-token
probability of the new object's *first* token at the prompt's last position (one position, so
that patching can restore exactly the quantity it explains), and KL(P_unedited ‖ P_edited) of
the whole next-token distribution there (the Specificity+ paper's NKL direction).

**Paths** (`patch_paths`). A ROME edit changes one weight, the down-projection of MLP L, so the
edited run differs from the unedited one only through the output of MLP L, at every position.
Activation patching restores parts of the unedited run inside the edited forward:

- (a) the output of MLP L at the subject's tokens only (`p_subject_mlp`);
- (b) each attention head's output (its `z`, the input of the output projection,
  `blocks.{l}.attn.o.hook_in`) at the last position, one head per batch row, for every layer
  after L (heads at layers ≤ L read nothing the edit changed) (`p_heads`);
- the *direct* path: the output of MLP L at the last position itself (`p_direct`);
- every head after L at the last position together with the direct path (`p_all`). That
  restores the last position's residual stream exactly, so it must give back P_unedited:
  `patch_paths` checks it and raises `LeakError` otherwise.

The fraction of the leak a patch removes is (P_edited − P_patched) / (P_edited − P_unedited)
(`removed`).

**The predictor** (`rome_coefficients`). ROME adds ΔW = δ uᵀ / (uᵀ k_bare) with u = C⁻¹ k*, so
for the key k_t at any position t of any prompt the layer's output changes by exactly
c_t · δ with c_t = uᵀ k_t / uᵀ k_bare. The coefficients need one unedited forward to layer L and
no edited forward at all; `coefficient_summary` reduces them to the largest and the last one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import product

import numpy as np
import pandas as pd
import torch

from loudfacts.probes import UNRELATED_PROMPTS, cool_prefix, statement_prefix
from loudfacts.scoring import logits_at, next_token_logprobs
from loudfacts.tokens import check_context, find_subject_spans, target_ids

FAMILIES = ("neighbourhood", "counterfact+", "tangential", "unrelated")
HEAD_OUT = "blocks.{}.attn.o.hook_in"  # (batch, pos, n_heads, d_head): each head's z
MLP_OUT = "blocks.{}.hook_mlp_out"  # (batch, pos, d_model)
MLP_KEY = "blocks.{}.mlp.hook_post"  # (batch, pos, d_mlp): ROME's keys


class LeakError(ValueError):
    """A probe or patch that cannot be measured (names the prompt or the edit)."""


# -- probes ------------------------------------------------------------------------------------
def leak_probes(request, neighbour_prompts: Sequence[str],
                unrelated_prompts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(family, prompt) pairs for one edit, in `FAMILIES` order.

    Args:
        request: the `EditRequest` (its subject and statement make the prefixes).
        neighbour_prompts: prompts about other subjects of the same relation (CounterFact's
            neighbourhood; plain strings or (prompt, object) pairs).
        unrelated_prompts: prompts with nothing to do with the edit (default
            `probes.UNRELATED_PROMPTS`).
    """
    unrelated = list(UNRELATED_PROMPTS if unrelated_prompts is None else unrelated_prompts)
    neigh = [p[0] if isinstance(p, (tuple, list)) else p for p in neighbour_prompts]
    for p in neigh + unrelated:
        if not isinstance(p, str) or not p.strip():
            raise LeakError(f"probe prompt {p!r} is not a non-empty string")
    stmt, cool = statement_prefix(request), cool_prefix(request)
    out = [("neighbourhood", p) for p in neigh]
    out += [("counterfact+", stmt + p) for p in neigh]
    out += [("tangential", cool + p) for p in neigh + unrelated]
    out += [("unrelated", p) for p in unrelated]
    return out


def first_target_id(model, target: str) -> int:
    """The first token of `target` as it follows a prompt (" Rome" -> its first id)."""
    try:
        return target_ids(model, target)[0]
    except ValueError as e:
        raise LeakError(f"target {target!r}: {e}") from e


# -- the leak ------------------------------------------------------------------------------------
@torch.no_grad()
def measure_leak(model, edit, probes: Sequence[tuple[str, str]], batch_size: int = 32):
    """P(new object's first token) before and after `edit` on each probe, and the KL.

    Args:
        edit: an `Edit` (applied only inside this call; the model is restored on exit).
        probes: (family, prompt) pairs (`leak_probes`).

    Returns:
        DataFrame with one row per probe: family, prompt, p_new_pre, p_new_post,
        dp (= post − pre), kl (KL(P_pre ‖ P_post) of the next-token distribution, nats),
        top1_pre, top1_post (whether the new object's first token is the greedy answer).
    """
    from loudfacts.metrics import kl_divergences

    probes = list(probes)
    if not probes:
        raise LeakError("no probe prompts to measure")
    for fam, p in probes:
        if fam not in FAMILIES:
            raise LeakError(f"probe family {fam!r} of prompt {p!r} is not one of {FAMILIES}")
    prompts = [p for _, p in probes]
    tid = first_target_id(model, edit.request.target_new)
    pre = next_token_logprobs(model, prompts, batch_size=batch_size)
    with edit.applied():
        post = next_token_logprobs(model, prompts, batch_size=batch_size)
    kl, _ = kl_divergences(pre, post)
    return pd.DataFrame({
        "family": [f for f, _ in probes],
        "prompt": prompts,
        "p_new_pre": pre[:, tid].exp().double().numpy(),
        "p_new_post": post[:, tid].exp().double().numpy(),
        "dp": (post[:, tid].exp().double() - pre[:, tid].exp().double()).numpy(),
        "kl": kl.double().numpy(),
        "top1_pre": (pre.argmax(-1) == tid).numpy(),
        "top1_post": (post.argmax(-1) == tid).numpy(),
    })


# -- paths -----------------------------------------------------------------------------------------
def _keep_hook(act, hook, *, store, name):
    # store under the name asked for: a bridge hook's own `hook.name` can be an alias
    store[name] = act.detach().clone()


def _n_heads(model) -> int:
    n = getattr(getattr(model.bridge, "cfg", None), "n_heads", None)
    if not isinstance(n, int) or n <= 0:
        raise LeakError(f"{model.name}: the bridge does not say how many attention heads it has")
    return n


@torch.no_grad()
def patch_paths(model, edit, layer: int, prompt: str, *, subject: str | None = None,
                target: str | None = None, heads: bool = True,
                check_tol: float = 1e-4) -> dict:
    """Which path carries an edit's leak on one prompt: activation patching of the unedited run
    into the edited one, all patches in one batched forward (one row per patch).

    Args:
        edit: a ROME-style `Edit` that changes the output of MLP `layer` (applied inside).
        layer: the edited layer L.
        prompt: the probe prompt (the subject may or may not occur in it).
        subject: whose tokens (a) restores (default the edit's subject).
        target: whose first token's probability is read (default the edit's new object).
        heads: also patch every head of every layer after L, one at a time (b).
        check_tol: largest accepted |p_all − p_pre|.

    Returns:
        dict with p_pre, p_post, p_subject_mlp (a), p_direct (MLP L restored at the last
        position only), p_all (every later head and the direct path restored: equals p_pre),
        subject_positions, n_tokens, and p_heads: a (n_layers, n_heads) float array of P after
        restoring that one head at the last position (layers ≤ L hold p_post: nothing there
        changed); None when `heads` is False.

    Raises:
        LeakError: the prompt is empty or too long, the layer is out of range, the hooks do not
            have the expected shapes, or p_all differs from p_pre by more than `check_tol`
            (the edit changes more than MLP L's output).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise LeakError(f"prompt {prompt!r} is empty")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise LeakError(f"layer {layer!r} is not a layer of {model.name} "
                        f"(0..{model.n_layers - 1})")
    req = edit.request
    subject = req.subject if subject is None else subject
    tid = first_target_id(model, req.target_new if target is None else target)
    ids = model.encode(prompt)
    if not ids:
        raise LeakError(f"prompt {prompt!r} tokenises to nothing")
    try:
        check_context(model, len(ids), prompt)
    except ValueError as e:
        raise LeakError(str(e)) from e
    last = len(ids) - 1
    subj_pos = sorted({t for a, b in find_subject_spans(model, prompt, subject)
                       for t in range(a, b)})
    n_heads = _n_heads(model)
    later = list(range(layer + 1, model.n_layers))

    # the unedited run: each later head's z and MLP L's output
    store: dict = {}
    names = [HEAD_OUT.format(l) for l in later] + [MLP_OUT.format(layer)]
    rec = [(n, functools.partial(_keep_hook, store=store, name=n)) for n in names]
    with model.bridge.hooks(fwd_hooks=rec):
        logits = logits_at(model, [ids], [0], [last])
    p_pre = float(torch.softmax(logits.float(), -1)[0, tid])
    for n in names[:-1]:
        if store[n].dim() != 4 or store[n].shape[2] != n_heads:
            raise LeakError(f"{n} has shape {tuple(store[n].shape)}; expected (batch, pos, "
                            f"{n_heads} heads, d_head)")

    # rows: 0 edited, 1 (a) subject MLP, 2 direct, 3 all, then one per (later layer, head)
    pairs = list(product(later, range(n_heads))) if heads else []
    base = 4
    n_rows = base + len(pairs)
    head_idx = torch.arange(n_heads)

    def heads_hook(act, hook, *, l):
        clean = store[HEAD_OUT.format(l)][0, last]  # (n_heads, d_head)
        act = act.clone()
        act[3, last] = clean
        if heads:
            first = base + (l - layer - 1) * n_heads
            act[first + head_idx, last, head_idx] = clean
        return act

    def mlp_hook(act, hook):
        clean = store[MLP_OUT.format(layer)][0]  # (pos, d_model)
        act = act.clone()
        if subj_pos:
            act[1, subj_pos] = clean[subj_pos]
        act[2, last] = clean[last]
        act[3, last] = clean[last]
        return act

    hooks = [(HEAD_OUT.format(l), functools.partial(heads_hook, l=l)) for l in later]
    hooks.append((MLP_OUT.format(layer), mlp_hook))
    with edit.applied(), model.bridge.hooks(fwd_hooks=hooks):
        logits = logits_at(model, [ids] * n_rows, list(range(n_rows)), [last] * n_rows)
    p = torch.softmax(logits.float(), -1)[:, tid].double().cpu().numpy()
    out = {
        "p_pre": p_pre, "p_post": float(p[0]), "p_subject_mlp": float(p[1]),
        "p_direct": float(p[2]), "p_all": float(p[3]), "subject_positions": subj_pos,
        "n_tokens": len(ids), "p_heads": None,
    }
    if abs(out["p_all"] - p_pre) > check_tol:
        raise LeakError(
            f"restoring every head after layer {layer} and MLP {layer}'s output at the last "
            f"position of {prompt!r} gives P={out['p_all']:.6g}, not the unedited {p_pre:.6g}: "
            f"the edit ({edit.editor}) changes more than the output of MLP {layer}")
    if heads:
        grid = np.full((model.n_layers, n_heads), out["p_post"])
        grid[layer + 1:] = p[base:].reshape(len(later), n_heads)
        out["p_heads"] = grid
    return out


def removed(p_post, p_patched, p_pre, min_leak: float = 1e-9):
    """Fraction of the leak a patch removes: (p_post − p_patched) / (p_post − p_pre).

    1 when the patch gives back the unedited probability, 0 when it changes nothing, and NaN
    where the edit did not raise the probability by more than `min_leak` (nothing to remove).
    Works on numbers and on arrays of the same shape (p_pre and p_post may be scalars).
    """
    post = np.asarray(p_post, dtype=float)
    pre = np.asarray(p_pre, dtype=float)
    leak = post - pre
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (post - np.asarray(p_patched, dtype=float)) / leak
    frac = np.where(leak > min_leak, frac, np.nan)
    return float(frac) if frac.ndim == 0 else frac


# -- the closed-form predictor -------------------------------------------------------------------
@torch.no_grad()
def unedited_keys(model, layer: int, prompts: Sequence[str]) -> list[torch.Tensor]:
    """ROME's keys (the input of MLP `layer`'s down-projection) at every position of each
    prompt, from the unedited model: a list of (n_tokens, d_mlp) float32 tensors."""
    if model.active_hooks():
        raise LeakError("unedited_keys needs the unedited model, but hooks are applied: "
                        f"{model.active_hooks()}")
    name = MLP_KEY.format(layer)
    out = []
    for p in prompts:
        ids = model.encode(p) if isinstance(p, str) else []
        if not ids:
            raise LeakError(f"prompt {p!r} is empty")
        store: dict = {}
        rec = [(name, functools.partial(_keep_hook, store=store, name=name))]
        stop = layer + 1
        with model.bridge.hooks(fwd_hooks=rec):
            model.bridge(torch.tensor([ids], device=model.device),
                         **({"stop_at_layer": stop} if stop < model.n_layers else {}))
        out.append(store[name][0].float().cpu())
    return out


def rome_coefficients(model, editor, comps: dict, prompts: Sequence[str]) -> list[dict]:
    """c_t = uᵀ k_t / uᵀ k_ref at every position of each prompt, from the unedited run only.

    ROME's update adds ΔW k_t = c_t · r to the output of layer L for the key k_t, where
    u = C⁻¹ k*, and (by the editor's `update_key`) k_ref = k_bare, r = δ (ROME) or
    k_ref = k*, r = v* − W k* − b (r-ROME). So the write at each position is known before any
    edited forward pass.

    Args:
        editor: the `RomeEditor` that made (or would make) the edit.
        comps: its `components(request)`.

    Returns:
        One dict per prompt: prompt, c (float64 array, one per token), write (the change of
        layer L's output at each position, a (n_tokens, d_model) float64 tensor = c_t · r).
    """
    for name in ("k_star", "k_bare", "delta"):
        if name not in comps:
            raise LeakError(f"ROME components lack {name!r}: pass editor.components(request)")
    u = editor.update_direction(comps["k_star"])
    if editor.hparams["update_key"] == "bare":
        k_ref, r = comps["k_bare"], comps["delta"]
    else:
        k_ref, r = comps["k_star"], comps["v_star"] - comps["w_k"]
    denom = float(u @ k_ref.detach().to(torch.float64).cpu())
    if not abs(denom) > 0:
        raise LeakError(f"degenerate ROME update: uᵀk = {denom}")
    r = r.detach().to(torch.float64).cpu()
    out = []
    for p, keys in zip(prompts, unedited_keys(model, editor.layer, prompts)):
        c = (keys.to(torch.float64) @ u) / denom
        out.append({"prompt": p, "c": c.numpy(), "write": c[:, None] * r[None, :]})
    return out


def coefficient_summary(c) -> dict:
    """c_max (the largest coefficient over the prompt's positions) and c_last (at the last
    position, where the answer is read)."""
    c = np.asarray(c, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise LeakError(f"coefficients must be a non-empty 1-D array, got shape {c.shape}")
    return {"c_max": float(c.max()), "c_last": float(c[-1])}


# -- statistics --------------------------------------------------------------------------------
def spearman_ci(x, y, groups=None, n_resamples: int = 1000, seed: int = 0,
                confidence: float = 0.95) -> dict:
    """Spearman's ρ of x and y with a percentile bootstrap interval.

    With `groups` (e.g. the edit each prompt belongs to), the bootstrap resamples whole groups,
    since prompts of one edit are not independent; n is then the number of groups.

    Returns:
        {"rho", "ci_low", "ci_high", "n"} (NaN where fewer than 3 points or a constant input).
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise LeakError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    g = np.arange(len(x)) if groups is None else np.asarray(groups)
    if g.shape != x.shape:
        raise LeakError(f"groups has shape {g.shape}, x has {x.shape}")
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y, g = x[ok], y[ok], g[ok]
    labels, inv = np.unique(g, return_inverse=True)
    nan = {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": int(len(labels))}

    def rho(a, b):
        if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
            return math.nan
        return float(spearmanr(a, b).statistic)

    r = rho(x, y)
    if math.isnan(r):
        return nan
    members = [np.flatnonzero(inv == i) for i in range(len(labels))]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(labels), len(labels))])
        v = rho(x[idx], y[idx])
        if not math.isnan(v):
            draws.append(v)
    a = (1 - confidence) / 2
    lo, hi = (np.quantile(draws, [a, 1 - a]) if len(draws) > 1 else (math.nan, math.nan))
    return {"rho": r, "ci_low": float(lo), "ci_high": float(hi), "n": int(len(labels))}
