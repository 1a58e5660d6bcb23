"""Logical implications of an edit (symmetric, transitive, inverse), from `data/probes/implications.jsonl`:
loading and checking the cases, scoring whether an edit carries them, and their families.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


from loudfacts.editing.base import EditRequest, get_editor
from loudfacts.scoring import target_probs
from loudfacts.tokens import fill
from loudfacts.probes import greedy_generate

# -- logical implications ----------------------------------------------------------------------
IMPLICATION_KINDS = ("symmetric", "transitive", "inverse")


def implications_path() -> Path:
    from loudfacts.paths import repo_path

    return repo_path("data", "probes", "implications.jsonl")


def load_implications(path=None, known_only: bool = True, kinds=None) -> list[dict]:
    """Cases of `data/probes/implications.jsonl`.

    Each line: {"id", "kind" (symmetric|transitive|inverse), "edit": {"prompt" (template with
    {}), "subject", "target_true", "target_new"}, "probes": [{"prompt" (full text), "old",
    "new", "phrasing"}], "checks": [{"prompt", "true", "false"}] (facts the unedited model must
    know for the case to make sense), "known": bool (set by `verify_implications`)}.

    Args:
        known_only: keep only cases marked known (every check passed on the embedded model).
    """
    path = Path(path) if path else implications_path()
    cases = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    for c in cases:
        if c.get("kind") not in IMPLICATION_KINDS:
            raise ValueError(f"{path}: case {c.get('id')!r} has kind {c.get('kind')!r}, "
                             f"expected one of {IMPLICATION_KINDS}")
        EditRequest(**c["edit"])  # validates the template
    if known_only:
        cases = [c for c in cases if c.get("known", True)]
    if kinds:
        cases = [c for c in cases if c["kind"] in kinds]
    return cases


IMPLICATION_FAMILIES = ("symmetric", "transitive, subject-side", "transitive, object-side",
                        "inverse")


def implication_family(case: dict) -> str:
    """The family of an implication case (a line of `data/probes/implications.jsonl`).

    Transitive cases split by which side of the edited fact the implied fact hangs on:
    subject-side (the Louvre is in Rome => the Louvre is in Italy; ids `transitive-landmark-*`)
    and object-side (Paris is in Russia => the Louvre is in Russia). The two behave
    differently, so cases are chosen and reported per family (`IMPLICATION_FAMILIES`).
    """
    kind, case_id = case.get("kind"), case.get("id")
    if kind not in IMPLICATION_KINDS:
        raise ValueError(f"implication case {case_id!r}: kind={kind!r} must be one of "
                         f"{IMPLICATION_KINDS}")
    if kind != "transitive":
        return kind
    return ("transitive, subject-side" if str(case_id).startswith("transitive-landmark-")
            else "transitive, object-side")


def implication_checks(case: dict) -> list[tuple[str, str, str]]:
    """Every fact a case relies on, as (prompt, true, false): the edited fact (true beats new),
    each probe's old implied object (old beats new), and the case's extra checks."""
    e = case["edit"]
    out = [(fill(e["prompt"], e["subject"]), e["target_true"], e["target_new"])]
    out += [(p["prompt"], p["old"], p["new"]) for p in case["probes"]]
    out += [(c["prompt"], c["true"], c["false"]) for c in case.get("checks", [])]
    return out


def verify_implications(model, cases, batch_size: int = 32):
    """Check every fact of every case on the unedited model: P(true) > P(false).

    Returns:
        DataFrame, one row per check: id, kind, prompt, true, false, p_true, p_false, known.
    """
    import pandas as pd

    rows = [(c["id"], c["kind"], *chk) for c in cases for chk in implication_checks(c)]
    if not rows:
        return pd.DataFrame(columns=["id", "kind", "prompt", "true", "false", "p_true",
                                     "p_false", "known"])
    pt = target_probs(model, [r[2] for r in rows], [r[3] for r in rows], batch_size)
    pf = target_probs(model, [r[2] for r in rows], [r[4] for r in rows], batch_size)
    df = pd.DataFrame(rows, columns=["id", "kind", "prompt", "true", "false"])
    df["p_true"], df["p_false"] = pt.numpy(), pf.numpy()
    df["known"] = df["p_true"] > df["p_false"]
    return df


def score_implications(model, editor, cases, *, generations: int = 0, max_new_tokens: int = 15,
                       batch_size: int = 32, progress: bool = True):
    """Edit each case, then compare P(new implied) with P(old implied) before and after.

    Returns:
        DataFrame, one row per probe: editor, id, kind, phrasing, prompt, old, new, p_old_pre,
        p_new_pre, p_old_post, p_new_post, implied (p_new_post > p_old_post), shift (change of
        p_new - p_old), efficacy (the edit itself succeeded on its rewrite prompt). The first
        `generations` cases also get `generation_pre/post` (greedy continuations of the first
        probe) as illustration.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from loudfacts.cases import Case, score

    if isinstance(editor, str):
        editor = get_editor(editor, model)
    rows, failed = [], []
    for k, case in enumerate(tqdm(cases, desc=f"implications {editor.name}",
                                  disable=not progress, leave=False)):
        c = Case.from_implication(case)  # the rewrite probe, then one per implied fact
        pre = score(model, c.probes, batch_size)
        t0 = time.perf_counter()
        try:
            edit = editor.edit(c.request)
        except ValueError as e:
            print(f"implications: {editor.name} could not edit {case['id']}: {e}")
            failed.append(case["id"])
            continue
        seconds = time.perf_counter() - t0
        probes = case["probes"]
        gen = {}
        with edit.applied():
            post = score(model, c.probes, batch_size)
            if k < generations:
                gen["generation_post"] = greedy_generate(model, probes[0]["prompt"],
                                                         max_new_tokens)
        if k < generations:
            gen["generation_pre"] = greedy_generate(model, probes[0]["prompt"], max_new_tokens)
        efficacy = bool(post["new_wins"][0])
        for j, p in enumerate(probes):
            b, a = pre.iloc[1 + j], post.iloc[1 + j]  # row 0 is the rewrite probe
            po, pn, qo, qn = b["p_true"], b["p_new"], a["p_true"], a["p_new"]
            rows.append({"editor": editor.name, "id": case["id"], "kind": case["kind"],
                         "phrasing": p.get("phrasing", ""), "prompt": p["prompt"],
                         "old": p["old"], "new": p["new"], "p_old_pre": po, "p_new_pre": pn,
                         "p_old_post": qo, "p_new_post": qn, "implied_pre": pn > po,
                         "implied": qn > qo, "shift": (qn - qo) - (pn - po),
                         "efficacy": efficacy, "edit_seconds": seconds,
                         **(gen if j == 0 else {})})
    df = pd.DataFrame(rows)
    df.attrs["failed"] = failed  # cases the editor refused (EditError), not scored
    if failed and progress:
        print(f"implications {editor.name}: {len(failed)} of {len(cases)} cases could not be "
              "edited and are not scored")
    return df


def implication_summary(df):
    """Per editor and kind: edit efficacy, fraction of probes where the new implied object
    beats the old one before and after the edit, and the mean shift of P(new) - P(old)."""
    return (df.groupby(["editor", "kind"], sort=False)
            .agg(cases=("id", "nunique"), probes=("prompt", "size"),
                 efficacy=("efficacy", "mean"), implied_pre=("implied_pre", "mean"),
                 implied_post=("implied", "mean"), mean_shift=("shift", "mean"))
            .reset_index())
