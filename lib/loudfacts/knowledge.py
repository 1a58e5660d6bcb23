"""Which facts does the model know?

Editing a fact the model never held measures nothing, so every experiment draws its cases from
the table built here. For each CounterFact record we score, on the rewrite prompt,
P(target_true) and P(target_new) (ROME's convention, `loudfacts.scoring`), and whether the
greedy next token is the true object's first token. A record is *known* when
P(true) > P(new) — ROME's criterion, which is weak (a coin flip between two unlikely objects
passes it), so the table also keeps `top1` for a stricter filter. For ROME's known_1000 facts
(which have no counterfactual target) a fact is known when it is top-1.

The table is cached in `data/cache/knowledge/` keyed by the model's name, its weight digest,
the data split and its size.
"""

from __future__ import annotations


import pandas as pd
import torch

from loudfacts.digests import weight_digest
from loudfacts.atomic import atomic_path
from loudfacts.data import (
    COUNTERFACT_SPLITS,
    data_path,
    file_digest,
    load_counterfact,
    load_known_facts,
)
from loudfacts.paths import cache_dir
from loudfacts.scoring import score_targets, target_probs

COLUMNS = ["source", "id", "subject", "prompt", "text", "target_true", "target_new",
           "relation", "p_true", "p_new", "known", "top1"]


def _counterfact_rows(model, split: str, n: int | None, batch_size: int) -> pd.DataFrame:
    recs = load_counterfact(split, n=n, verbose=True)
    texts = [r.text for r in recs]
    nll_true, top1 = score_targets(model, texts, [r.target_true for r in recs], batch_size)
    p_true = torch.exp(-nll_true)
    p_new = target_probs(model, texts, [r.target_new for r in recs], batch_size=batch_size)
    return pd.DataFrame(
        {
            "source": f"counterfact/{split}",
            "id": [r.case_id for r in recs],
            "subject": [r.subject for r in recs],
            "prompt": [r.prompt for r in recs],
            "text": texts,
            "target_true": [r.target_true for r in recs],
            "target_new": [r.target_new for r in recs],
            "relation": [r.relation for r in recs],
            "p_true": p_true.numpy(),
            "p_new": p_new.numpy(),
            "known": (p_true > p_new).numpy(),
            "top1": top1.numpy(),
        }
    )


def _known1000_rows(model, n: int | None, batch_size: int) -> pd.DataFrame:
    facts = load_known_facts(n=n)
    texts = [f.text for f in facts]
    nll_true, top1 = score_targets(model, texts, [f.attribute for f in facts], batch_size)
    p_true = torch.exp(-nll_true)
    return pd.DataFrame(
        {
            "source": "known_1000",
            "id": [f.known_id for f in facts],
            "subject": [f.subject for f in facts],
            "prompt": [f.prompt for f in facts],
            "text": texts,
            "target_true": [f.attribute for f in facts],
            "target_new": None,
            "relation": [f.relation for f in facts],
            "p_true": p_true.numpy(),
            "p_new": float("nan"),
            "known": top1.numpy(),
            "top1": top1.numpy(),
        }
    )


def known_facts_table(
    model,
    split: str = "edit-1k",
    n_counterfact: int | None = None,
    n_known1000: int | None = None,
    batch_size: int = 32,
    cache: bool = True,
) -> pd.DataFrame:
    """Knowledge of CounterFact (`split`, first `n_counterfact`) and known_1000 facts.

    Returns:
        DataFrame with columns source, id, subject, prompt (template), text, target_true,
        target_new (None for known_1000), relation, p_true, p_new, known, top1.
    """
    if split not in COUNTERFACT_SPLITS:
        raise ValueError(f"split {split!r} is not one of {sorted(COUNTERFACT_SPLITS)}")
    key = "-".join(
        [
            model.name.replace("/", "_"),
            weight_digest(model)[:12],
            split,
            file_digest(data_path(COUNTERFACT_SPLITS[split])),
            str(n_counterfact),
            str(n_known1000),
        ]
    )
    path = cache_dir("knowledge") / f"known_facts-{key}.csv"
    if cache and path.exists():
        try:
            table = pd.read_csv(path)
            if list(table.columns) == COLUMNS:
                return table
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
            pass  # corrupt cache: recompute below
    table = pd.concat(
        [
            _counterfact_rows(model, split, n_counterfact, batch_size),
            _known1000_rows(model, n_known1000, batch_size),
        ],
        ignore_index=True,
    )[COLUMNS]
    if cache:
        with atomic_path(path, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    return table


def latest_known_facts_table(model) -> pd.DataFrame:
    """The largest knowledge table written for this model's weights (as notebook 00 built it;
    the most facts, then the most recent), or a fresh default one when there is none.

    Largest, not latest: a smoke run writes small tables, and a choice by modification time made
    notebook 01 draw its facts from whichever run had written last.
    """
    prefix = f"known_facts-{model.name.replace('/', '_')}-{weight_digest(model)[:12]}-"
    best, best_key = None, None
    for path in cache_dir("knowledge").glob(prefix + "*.csv"):
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError):
            continue
        if list(table.columns) != COLUMNS:
            continue
        key = (len(table), path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = table, key
    return best if best is not None else known_facts_table(model)


def select_known_facts(model, n: int, seed: int = 0, table=None, source: str | None = "known_1000",
                       sink_prefix: bool = True):
    """`n` facts the model knows, drawn at random (seeded) from the knowledge table.

    Uses `loudfacts.knowledge.latest_known_facts_table(model)` unless `table` is given, keeps
    rows with `known` and `top1` true (the model predicts the object, as ROME's known_1000
    facts were chosen for GPT-2 XL) and takes `source` rows first, then the others.

    Most known_1000 prompts start with their subject, and token 0 is the attention sink of a
    model without a BOS token: noising it there perturbs everything after it. Dropping those
    prompts would keep only facts whose subject sits mid-sentence (a biased third of them).
    With `sink_prefix`, such a prompt is traced after the model's document separator
    (`tokens.document_separator`, e.g. "<|endoftext|>"), which then holds position 0 as a
    document boundary does in training; the fact is kept if the object is still the greedy
    next token. Without a separator (or `sink_prefix=False`) they are dropped.

    Returns:
        list of dicts with text, subject, target_true, id, source, and sink_prefix (the text
        put in front, "" for none); `len` < n when the table holds fewer.
    """
    from loudfacts.tokens import SubjectNotFoundError, document_separator, subject_span

    if table is None:
        table = latest_known_facts_table(model)
    rows = table[table["known"].astype(bool) & table["top1"].astype(bool)]
    rows = rows.sample(frac=1.0, random_state=seed)
    if source is not None:  # the preferred source first, then the others
        rows = rows.assign(_other=(rows["source"] != source)).sort_values("_other", kind="stable")
    sep = document_separator(model) if sink_prefix else ""
    out, pending = [], []

    def flush():
        # keep prefixed facts whose object is still the greedy next token
        if not pending:
            return
        _, top1 = score_targets(model, [f["text"] for f in pending],
                                [f["target_true"] for f in pending])
        out.extend(f for f, ok in zip(pending, top1.tolist()) if ok)
        pending.clear()

    for _, r in rows.iterrows():
        if len(out) + len(pending) >= n:
            flush()
            if len(out) >= n:
                break
        fact = {"text": r["text"], "subject": r["subject"], "target_true": r["target_true"],
                "id": r["id"], "source": r["source"], "sink_prefix": ""}
        try:
            span = subject_span(model, r["text"], r["subject"])
        except (SubjectNotFoundError, ValueError):
            continue
        if span[0] != 0:
            out.append(fact)
        elif sep:
            fact.update(text=sep + r["text"], sink_prefix=sep)
            pending.append(fact)
    flush()
    return out[:n]
