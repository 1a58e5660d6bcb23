"""The loud-fact ladder: P(new object) on unrelated prompts after mentions of the edited subject,
from the edit statement down to an unrelated sentence, and its rows kept as data.

Rungs (`probes.ladder_prefixes`): none, the edit statement, a bare mention ("{subject}. "), a
tangential mention ("{subject} is cool. ") and an unrelated sentence. Each edit is scored
against the unedited model on the same texts. `ladder_for_editors(..., split=...)` stores one
row per record in `results/<model>/<split>/ladder/<editor>.jsonl` and reuses rows whose digest
(`ladder_row_digest`: settings, `LADDER_VERSION`, the record) matches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from loudfacts.editing.base import EditRequest, get_editor
from loudfacts.jsonlines import append_line
from loudfacts.tokens import target_ids
from loudfacts.cases import Probe, ladder_probes, score
from loudfacts.probes import UNRELATED_PROMPTS, ladder_prefixes
from loudfacts.digests import canonical_json, digest, weights_fingerprint
from loudfacts.runner import fresh_requested, open_row_store, record_content, run_key, store_path

# -- loud-fact ladder --------------------------------------------------------------------------
def ladder_texts(request: EditRequest, unrelated_prompts: Sequence[str]):
    """(step, prefix, prefix + prompt, prompt) for every probe of `cases.ladder_probes`: each
    rung before every unrelated prompt whose answer is not target_new (that would not be a
    leak)."""
    prefixes = ladder_prefixes(request)
    return [(p.kind, prefixes[p.kind], p.prompt, p.prompt[len(prefixes[p.kind]):])
            for p in ladder_probes(request, unrelated_prompts)]


def ladder_pass(model, full: Sequence[str], new: str, batch_size: int):
    """(P(new | text), whether new's first token is the greedy next token) for every text, from
    `cases.score` with the texts' next-token distributions (one pass; a multi-token target adds
    its teacher-forced pass)."""
    if not full:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    first = target_ids(model, new)[0]
    scores = score(model, [Probe(t, "ladder", new) for t in full], batch_size,
                   next_token_of=full)
    rows = scores.attrs["next_token"]
    top = torch.stack([rows[t] for t in full]).argmax(-1) == first
    return torch.as_tensor(scores["p_new"].to_numpy(dtype=float, copy=True)), top


def loud_fact_ladder(model, edit, request: EditRequest | None = None,
                     unrelated_prompts: Sequence[str] = UNRELATED_PROMPTS,
                     batch_size: int = 32, pre=None):
    """Does mentioning the edited subject make the new object leak into unrelated prompts?

    Each rung prepends a prefix to every unrelated prompt: none, the edit statement itself
    ("The Louvre is located in the city of Rome. "), a bare mention ("The Louvre. "), a
    tangential sentence ("The Louvre is cool. "), an unrelated sentence (no subject).

    `pre`: the unedited model's (probabilities, top-1 flags) on the same texts, as
    `ladder_for_editors` computes once per record and shares between editors; None computes it.

    Returns:
        DataFrame, one row per rung and prompt: step, prefix, prompt, p_new_pre, p_new_post,
        top1_pre, top1_post (whether target_new's first token is the greedy next token).
        Unrelated prompts whose answer is target_new are dropped (that would not be a leak).
    """
    import pandas as pd

    request = request or edit.request
    new = request.target_new
    texts = ladder_texts(request, unrelated_prompts)
    full = [t[2] for t in texts]
    p_pre, top_pre = pre if pre is not None else ladder_pass(model, full, new, batch_size)
    if len(p_pre) != len(full):
        raise ValueError(f"pre holds {len(p_pre)} values for {len(full)} ladder texts of "
                         f"case {request.subject!r} -> {new!r}")
    with edit.applied():
        p_post, top_post = ladder_pass(model, full, new, batch_size)
    return pd.DataFrame([
        {"step": s, "prefix": pre_, "prompt": p, "p_new_pre": float(a), "p_new_post": float(b),
         "top1_pre": bool(c), "top1_post": bool(d)}
        for (s, pre_, _, p), a, b, c, d in zip(texts, p_pre, p_post, top_pre, top_post)
    ])


LADDER_VERSION = 1  # what a stored ladder row means: the rungs of `ladder_texts`, `ladder_pass`


def ladder_settings(model, editor, unrelated_prompts=UNRELATED_PROMPTS) -> dict:
    """Everything besides the record that determines a record's ladder rows: the model and its
    weights, the editor and its full hyper-parameters, `LADDER_VERSION` and the unrelated
    prompts (canonical JSON data, as the header of a stored ladder file holds it)."""
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    return json.loads(canonical_json({
        "model": model.name, "weights": weights_fingerprint(model), "editor": editor.name,
        "hparams": editor.hparams, "ladder_version": LADDER_VERSION,
        "unrelated_prompts": list(unrelated_prompts)}))


def ladder_row_digest(key: str, rec) -> str:
    """A stored ladder row's `settings_digest`: sha256 of its run key and the record's content."""
    return digest({"run": key, "record": record_content(rec)})


def ladder_store_path(model, editor, split: str, root=None) -> Path:
    """Where the ladder rows of one editor live: `results/<model>/<split>/ladder/<editor>.jsonl`
    (beside the study's rows, `store_path`)."""
    path = store_path(model, editor, split, root)
    return path.parent / "ladder" / path.name


def ladder_for_editors(model, editors, records, unrelated_prompts=UNRELATED_PROMPTS,
                       progress: bool = True, *, split: str | None = None, root=None,
                       fresh: bool | None = None):
    """`loud_fact_ladder` for every editor (name or Editor) and record; one long DataFrame
    with an `editor` and `case_id` column. The unedited model's pass is made once per record
    and shared by every editor. Editors that fail on a record are skipped, counted.

    With `split`, each editor's rows are kept as data in `ladder_store_path(...)` (under
    `root`, default `results/`): one line per record holding its rungs, in the study's file
    format (a header with `ladder_settings`, a digest per row), so rows already there are
    reused, the missing ones appended as each record finishes, and a file made under other
    settings stops the run with a `ResultsFileError` naming it. `fresh` (default:
    `fresh_requested()`, `make report FRESH=1`) deletes these editors' files first.
    """
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    fresh = fresh_requested() if fresh is None else bool(fresh)
    frames, failed, pre, reused = [], 0, {}, 0
    for ed in editors:
        ed = get_editor(ed, model) if isinstance(ed, str) else ed
        done, path = {}, None
        if split is not None:
            settings = ladder_settings(model, ed, unrelated_prompts)
            key = run_key(settings)
            digests = {r.case_id: ladder_row_digest(key, r) for r in records}
            path = ladder_store_path(model, ed.name, split, root)
            done = open_row_store(path, settings, key, digests, fresh=fresh, what="ladder")
        for rec in tqdm(records, desc=f"ladder {ed.name}", disable=not progress, leave=False):
            row = done.get(rec.case_id)
            if row is None:
                t0 = time.perf_counter()
                row = {"case_id": rec.case_id, "editor": ed.name, "model": model.name}
                req = EditRequest.from_record(rec)
                k = (req.subject, req.target_new, req.statement)
                if k not in pre:  # before any edit is made: the unedited model's pass
                    full = [t[2] for t in ladder_texts(req, unrelated_prompts)]
                    pre[k] = ladder_pass(model, full, req.target_new, 32)
                try:
                    edit = ed.edit(req)
                except ValueError as e:
                    print(f"ladder: {ed.name} could not edit case {rec.case_id}: {e}")
                    row["edit_error"] = str(e)
                else:
                    f = loud_fact_ladder(model, edit, req, unrelated_prompts, pre=pre[k])
                    row["rungs"] = f.to_dict("records")
                row["seconds"] = time.perf_counter() - t0
                if path is not None:
                    append_line(path, {**row, "run_key": key,
                                   "settings_digest": digests[rec.case_id]})
            else:
                reused += 1
            if row.get("edit_error") is not None:
                failed += 1
                continue
            f = pd.DataFrame(row["rungs"])
            f.insert(0, "case_id", rec.case_id)
            f.insert(0, "editor", ed.name)
            frames.append(f)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["n_failed"] = failed
    df.attrs["reused"] = reused
    return df


def ladder_summary(ladder):
    """Per editor and step: mean P(target_new) before/after and fraction top-1 after."""
    return (ladder.groupby(["editor", "step"], sort=False)
            .agg(p_new_pre=("p_new_pre", "mean"), p_new_post=("p_new_post", "mean"),
                 top1_pre=("top1_pre", "mean"), top1_post=("top1_post", "mean"),
                 n=("prompt", "size"))
            .reset_index())
