"""Generations after an edit and their GE as ROME's code computes it, kept as data: one row per
editor and record in `results/<model>/<split>/generation/<editor>.jsonl`.

Each row holds the record's generation prompts (`probes.generation_prompts_for`), the texts
that `fluency.rome_texts` sampled from the edited model (prompt included, as ROME scores them)
and their GE (`fluency.rome_ngram_entropy_of_text`, averaged). The unedited model is the editor
"unedited", so GE's paired effect is a difference of two rows of the same record
(`claims.paired_effects_table(rows.assign(known=True), metrics=["GE"])`). These rows
are apart from the study's metric rows (`runner`), whose GE is the earlier greedy recipe: a
change to this recipe re-makes these rows only. A row is reused when its digest
(`generation_row_digest`: `generation_settings`, the record) matches; a file made under other
settings stops the run with a `ResultsFileError` naming it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from loudfacts.digests import canonical_json, digest, weights_fingerprint
from loudfacts.editing.base import EditRequest, get_editor
from loudfacts.fluency import ROME_GE, rome_ngram_entropy_of_text, rome_texts
from loudfacts.jsonlines import append_line
from loudfacts.probes import generation_prompts_for
from loudfacts.runner import fresh_requested, open_row_store, record_content, run_key, store_path

GENERATION_VERSION = 1  # what a stored generation row means: `fluency.rome_texts`, ROME's GE
COLUMNS = ["editor", "case_id", "GE", "texts", "prompts", "seconds", "edit_error"]


def generation_settings(model, editor, n_prompts: int | None = None, seed: int = 0) -> dict:
    """Everything besides the record that determines its generation row: the model and its
    weights, the editor and its full hyper-parameters, `GENERATION_VERSION`, ROME's recipe
    (`fluency.ROME_GE`), how many of a record's generation prompts are used (None: all, as ROME)
    and the sampling seed."""
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    if n_prompts is not None and (isinstance(n_prompts, bool) or not isinstance(n_prompts, int)
                                  or n_prompts < 1):
        raise ValueError(f"n_prompts={n_prompts!r} must be a positive int or None (all)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an int")
    return json.loads(canonical_json({
        "model": model.name, "weights": weights_fingerprint(model), "editor": editor.name,
        "hparams": editor.hparams, "generation_version": GENERATION_VERSION,
        "recipe": dict(ROME_GE), "n_prompts": n_prompts, "seed": seed}))


def generation_row_digest(key: str, rec) -> str:
    """A stored row's `settings_digest`: the digest of its run key and the record's content."""
    return digest({"run": key, "record": record_content(rec)})


def generation_store_path(model, editor, split: str, root=None) -> Path:
    """`results/<model>/<split>/generation/<editor>.jsonl` (beside the study's rows)."""
    path = store_path(model, editor, split, root)
    return path.parent / "generation" / path.name


def prompts_of(record, n_prompts: int | None) -> list[str]:
    """The record's generation prompts: all of them (ROME), or the first `n_prompts`."""
    every = generation_prompts_for(record, 10 ** 6)
    return every if n_prompts is None else every[:n_prompts]


def generations_for_editors(model, editors, records, *, n_prompts: int | None = None,
                            seed: int = 0, split: str | None = None, root=None,
                            fresh: bool | None = None, progress: bool = True):
    """Edit each record with each editor (name or Editor; "unedited" for the baseline), sample
    ROME's texts from its generation prompts under the edit and score their GE.

    Returns one row per (editor, record), `COLUMNS`: editor, case_id, GE, texts, prompts,
    seconds (edit and generation), and edit_error for an edit the editor refused (no GE).
    With `split`, rows are kept in `generation_store_path(...)` (under `root`, default
    `results/`), reused when their digest matches and appended as each record finishes;
    `fresh` (default `fresh_requested()`) deletes these editors' files first.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    fresh = fresh_requested() if fresh is None else bool(fresh)
    rows, reused = [], 0
    for ed in editors:
        ed = get_editor(ed, model) if isinstance(ed, str) else ed
        settings = generation_settings(model, ed, n_prompts, seed)
        key = run_key(settings)
        digests = {r.case_id: generation_row_digest(key, r) for r in records}
        done, path = {}, None
        if split is not None:
            path = generation_store_path(model, ed.name, split, root)
            done = open_row_store(path, settings, key, digests, fresh=fresh,
                                  what="generations")
        for rec in tqdm(records, desc=f"generations {ed.name}", disable=not progress,
                        leave=False):
            row = done.get(rec.case_id)
            if row is not None:
                reused += 1
            else:
                t0 = time.perf_counter()
                prompts = prompts_of(rec, n_prompts)
                row = {"case_id": rec.case_id, "editor": ed.name, "model": model.name,
                       "prompts": prompts}
                try:
                    edit = ed.edit(EditRequest.from_record(rec))
                except ValueError as e:
                    print(f"generations: {ed.name} could not edit case {rec.case_id}: {e}")
                    row["edit_error"] = str(e)
                else:
                    with edit.applied():
                        texts = rome_texts(model, prompts, seed=seed, top_k=ROME_GE["top_k"],
                                           max_out_len=ROME_GE["max_out_len"])
                    row["texts"] = texts
                    row["GE"] = sum(rome_ngram_entropy_of_text(t, ROME_GE["ns"], ROME_GE["weights"])
                                    for t in texts) / len(texts)
                row["seconds"] = time.perf_counter() - t0
                if path is not None:
                    append_line(path, {**row, "run_key": key,
                                       "settings_digest": digests[rec.case_id]})
            rows.append({k: row.get(k) for k in COLUMNS})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["reused"] = reused
    return df

