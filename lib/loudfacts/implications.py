"""Logical implications of an edit (symmetric, transitive, inverse), from `data/probes/implications.jsonl`:
loading and checking the cases, scoring whether an edit carries them, their families, and the
comparison of several editors on the same cases (probe outcomes and the seed hypothesis's
verdict, notebook 04).
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
        efficacy = bool(post["new_wins"][0])  # row 0 is the rewrite probe
        implied_rows = [i for i, q in enumerate(c.probes) if q.role == "implication"]
        for j, p in zip(implied_rows, probes):
            b, a = pre.iloc[j], post.iloc[j]
            po, pn, qo, qn = b["p_true"], b["p_new"], a["p_true"], a["p_new"]
            rows.append({"editor": editor.name, "id": case["id"], "kind": case["kind"],
                         "phrasing": p.get("phrasing", ""), "prompt": p["prompt"],
                         "old": p["old"], "new": p["new"], "p_old_pre": po, "p_new_pre": pn,
                         "p_old_post": qo, "p_new_post": qn, "implied_pre": pn > po,
                         "implied": qn > qo, "shift": (qn - qo) - (pn - po),
                         "efficacy": efficacy, "edit_seconds": seconds,
                         **(gen if j == implied_rows[0] else {})})
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


# -- several editors on the same cases (notebook 04) ---------------------------------------------
LEAK_THRESHOLD = 0.05  # a ladder probe "leaks" when the edit raises P(new) by more than this
PROBE_SETS = {"rewrite": "rewrite", "paraphrase": "paraphrase", "neighbourhood": "neighbourhood",
              "ladder": "loud", "implication": "implication"}


def probe_outcomes(paired_scores):
    """Each (edit, probe) of `cases.paired` with `set` (rewrite, paraphrase, neighbourhood,
    loud, implication: `PROBE_SETS` of the probe's role) and `success`: the new object beats
    the true one after the edit; for a loud probe (a ladder rung, which has no true object),
    P(new) rose by more than `LEAK_THRESHOLD`. For neighbourhood probes success is the edit
    *moving* the neighbour, so `outcome_summary` reports its complement."""
    d = paired_scores.copy()
    unknown = sorted(set(d["role"]) - set(PROBE_SETS))
    if unknown:
        raise ValueError(f"probe_outcomes(): roles {unknown} have no probe set here "
                         f"(known: {sorted(PROBE_SETS)})")
    d.insert(1, "set", d["role"].map(PROBE_SETS))
    loud = d["set"] == "loud"
    d["success"] = (d["p_new_post"] > d["p_true_post"]).astype(bool)
    d.loc[loud, "success"] = (d.loc[loud, "p_new_post"] - d.loc[loud, "p_new_pre"]
                              > LEAK_THRESHOLD)
    d["success"] = d["success"].astype(bool)
    return d


def outcome_summary(outcomes):
    """Per editor and probe set: the share of probes where the new object beats the true one
    (neighbourhood: where the neighbour's own object still wins; loud: where P(new) leaked by
    more than `LEAK_THRESHOLD`, lower is better), mean P(new) before and after, and n."""
    d = outcomes.copy()
    d["score"] = d["success"].astype(float)
    nb = d["set"] == "neighbourhood"
    d.loc[nb, "score"] = 1.0 - d.loc[nb, "score"]
    return (d.groupby(["editor", "set"], sort=False)
            .agg(score=("score", "mean"), p_new_post=("p_new_post", "mean"),
                 p_new_pre=("p_new_pre", "mean"), n=("prompt", "size"))
            .reset_index())


def implication_verdict(outcomes, patchers=("patch-donor", "patch-context"),
                        weight_editors=("rome", "ft"), min_efficacy: float = 0.5):
    """The seed hypothesis, tested on `probe_outcomes` (with a `case` column).

    "Patching activations from the same model respects logical implications better than
    weight edits": an editor can only respect an implication of a fact it wrote, so each pair
    (activation patcher, weight editor) is compared **on the cases where both edits succeeded
    on the rewrite prompt** (new beats old). Pairs sharing fewer than `min_efficacy` x cases
    are dropped; the patcher and weight editor that carry the most implication probes are
    compared. A difference smaller than one probe per case is called "not distinguished".

    Returns:
        (verdict sentence, DataFrame of the two editors' scores by probe set on the shared
        cases) or (reason, empty DataFrame) when no pair qualifies.
    """
    import pandas as pd

    scores = outcomes

    def table_for(sub):
        return outcome_summary(sub).pivot(index="editor", columns="set", values="score")

    present = set(scores["editor"])
    ok = scores[(scores["set"] == "rewrite") & scores["success"].astype(bool)]
    pairs = []
    for p in [e for e in patchers if e in present]:
        for w in [e for e in weight_editors if e in present]:
            shared = set(ok.loc[ok.editor == p, "case"]) & set(ok.loc[ok.editor == w, "case"])
            sub = scores[scores.editor.isin([p, w]) & scores.case.isin(shared)]
            if not shared or "implication" not in set(sub["set"]):
                continue
            if len(shared) < min_efficacy * scores.case.nunique():
                continue
            pairs.append((p, w, table_for(sub), len(shared), sub))
    if not pairs:
        return (("not testable: no activation patcher and weight editor both wrote the fact on "
                f"at least {min_efficacy:.0%} of the cases"), pd.DataFrame())

    def best(role):  # the editor of that role that carries the most implications, any pair
        names = {x[role] for x in pairs}
        return max(names, key=lambda e: max(x[2].loc[e, "implication"] for x in pairs
                                            if x[role] == e))

    p, w = best(0), best(1)
    _, _, t, n, sub = next(x for x in pairs if x[0] == p and x[1] == w)
    d = t.loc[p, "implication"] - t.loc[w, "implication"]
    per_case = (sub["set"] == "implication").sum() / (2 * n)
    margin = 1.0 / max(1.0, per_case)
    if d > margin:
        v = f"supported on {n} shared case(s): {p} carries {d:+.2f} more implied probes than {w}"
    elif d < -margin:
        v = f"contradicted on {n} shared case(s): {p} carries {d:+.2f} implied probes vs {w}"
    else:
        v = (f"not distinguished on {n} shared case(s): {p} vs {w} differ by {d:+.2f} on "
             "implied probes, within one probe per case")
    return v, t
