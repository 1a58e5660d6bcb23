"""What fine-tuning does to the rest of the model (notebook 03, `bench/bench_finetune.py`):
`sweep` edits known facts under a grid of FT / FT-L hyper-parameters and measures each setting,
and `bricking_table` measures fluency (GE, perplexity) after writing one fact with each of
several new objects, the seed report's "some FT targets brick the model"."""

from __future__ import annotations

import time

from loudfacts.atomic import atomic_path
from loudfacts.digests import cache_file, digest_text, weight_digest
from loudfacts.editing.base import EditRequest, get_editor


def sweep(model, editor_name: str, requests, grid: list[dict], neighbours=(), held_text=None,
          max_tokens: int = 256):
    """Evidence for the hyper-parameters: edit each request under each setting and measure.

    Args:
        model: the LoadedModel.
        editor_name: "ft" or "ft-l".
        requests: EditRequests of facts the model knows.
        grid: hyper-parameter overrides, one dict per setting.
        neighbours: (prompt_text, true_object) pairs that the edits should not change.
        held_text: text for perplexity (skipped if None).

    Returns:
        pandas DataFrame, one row per (setting, request): p_new before/after, neighbour
        probability after (mean), perplexity after, seconds, steps run.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from loudfacts.fluency import perplexity
    from loudfacts.scoring import target_probs

    n_prompts = [p for p, _ in neighbours]
    n_true = [t for _, t in neighbours]
    base_nb = float(target_probs(model, n_prompts, n_true).mean()) if neighbours else float("nan")
    base_ppl = perplexity(model, held_text, max_tokens) if held_text else float("nan")
    rows = []
    for setting in tqdm(grid, desc=f"sweep {editor_name}"):
        editor = get_editor(editor_name, model, **setting)
        for r in requests:
            p_before = float(target_probs(model, [r.text], [r.target_new])[0])
            t0 = time.perf_counter()
            e = editor.edit(r)
            secs = time.perf_counter() - t0
            with e.applied():
                p_after = float(target_probs(model, [r.text], [r.target_new])[0])
                nb = float(target_probs(model, n_prompts, n_true).mean()) if neighbours else float("nan")
                ppl = perplexity(model, held_text, max_tokens) if held_text else float("nan")
            rows.append({**setting, "subject": r.subject, "target_new": r.target_new,
                         "p_new_before": p_before, "p_new_after": p_after,
                         "neighbour_p_true": nb, "neighbour_p_true_base": base_nb,
                         "ppl_after": ppl, "ppl_base": base_ppl, "seconds": secs,
                         "steps_run": e.info["steps_run"]})
    return pd.DataFrame(rows)


def bricking_table(model, editors: dict, request: EditRequest, targets, prompts, held_text: str,
                   max_new_tokens: int = 30, max_tokens: int = 256, use_cache: bool = True):
    """Does writing `request` with each target break the model? Fluency before and after.

    For each editor and each target, the request is edited to that target (the same subject
    and prompt), and the edited model generates greedily from `prompts` (n-gram entropy, GE)
    and scores `held_text` (perplexity); the unedited model gives the baseline row.

    Args:
        editors: {label: Editor}.
        request: the fact to rewrite; its target_new is replaced by each of `targets`.
        targets: new objects, e.g. ["Norway", "Sweden", "Italy"].
        prompts: generation prompts.
        held_text: text for perplexity.
        use_cache: read/write `data/cache/bricking/` keyed by the weights' digest, the
            editors' hyper-parameters and every argument.

    Returns:
        pandas DataFrame: editor, target, p_new (on the rewrite prompt), ge, ppl, seconds,
        generation (the first prompt's continuation).
    """
    import dataclasses

    import pandas as pd
    from tqdm.auto import tqdm

    from loudfacts.fluency import fluency_scores
    from loudfacts.scoring import target_probs

    targets, prompts = list(targets), list(prompts)
    if not targets:
        raise ValueError("bricking_table() needs at least one target")
    same = [t for t in targets if request.target_true and t.strip() == request.target_true.strip()]
    if same:
        raise ValueError(f"targets {same} equal the true object {request.target_true!r}: no edit")
    key_doc = {
        "model": model.name, "digest": weight_digest(model),
        "editors": {k: {"name": e.name, "hparams": e.hparams} for k, e in editors.items()},
        "request": request.to_dict(), "targets": targets, "prompts": prompts,
        "text": digest_text(held_text),
        "max_new_tokens": max_new_tokens, "max_tokens": max_tokens, "version": 1,
    }
    path = cache_file("bricking", model.name, key_doc, ".csv")
    if use_cache and path.exists():
        try:
            df = pd.read_csv(path)
            if len(df) == 1 + len(editors) * len(targets) and {"ge", "ppl"} <= set(df):
                df["target"] = df["target"].fillna("").astype(str)
                df["generation"] = df["generation"].fillna("").astype(str)
                return df
        except (OSError, ValueError, pd.errors.ParserError) as e:  # corrupt: recompute
            print(f"ignoring unreadable cache {path.name}: {e}")
    rows = []

    def measure(label, target, p_new, secs):
        f = fluency_scores(model, prompts, held_text, max_new_tokens, max_tokens)
        rows.append({"editor": label, "target": target, "p_new": p_new, "ge": f["ge"],
                     "ppl": f["ppl"], "seconds": secs, "generation": f["generations"][0]})

    measure("unedited", "", float("nan"), 0.0)
    jobs = [(label, ed, t) for label, ed in editors.items() for t in targets]
    for label, ed, t in tqdm(jobs, desc="bricking"):
        req = dataclasses.replace(request, target_new=t)
        edit = ed.edit(req)
        with edit.applied():
            p_new = float(target_probs(model, [req.text], [t])[0])
            measure(label, t, p_new, edit.info.get("seconds", float("nan")))
    df = pd.DataFrame(rows)
    if use_cache:
        with atomic_path(path, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)
    return df
