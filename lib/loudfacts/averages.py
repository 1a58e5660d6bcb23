"""Causal-tracing averages over many known facts, by ROME's token classes (first / middle / last
subject token, first subsequent token, further tokens, last token), kept as data, and the
edit layer they choose (`choose_edit_layer`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loudfacts.atomic import write_text
from loudfacts.digests import digest
from loudfacts.jsonlines import append_line
from loudfacts.paths import cache_dir
from loudfacts.tokens import (
    target_ids,
)
from loudfacts.tracing import (KINDS, TOKEN_CLASSES, TraceResult, check_trace_args, is_int, noise_scale, prepare_trace, trace, weights_fingerprint)


def token_classes(subject_span: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """ROME's token classes of a prompt: positions of each (an empty list when absent).

    A position can belong to two classes (e.g. the first subsequent token is the last token
    when the subject ends just before it), as in ROME's averages.
    """
    s0, s1 = subject_span
    last = n_tokens - 1
    return {
        "first subject token": [s0],
        "middle subject tokens": list(range(s0 + 1, s1 - 1)),
        "last subject token": [s1 - 1],
        "first subsequent token": [s1] if s1 <= last else [],
        "further tokens": list(range(s1 + 1, last)),
        "last token": [last],
    }


def class_effects(result: TraceResult) -> dict[str, list[float] | None]:
    """Indirect effect per token class for one trace: class -> per-layer list (None if absent)."""
    classes = token_classes(result.subject_span, len(result.tokens))
    out = {}
    for name, positions in classes.items():
        out[name] = (
            result.indirect_effect[:, positions].mean(axis=1).tolist() if positions else None
        )
    return out


@dataclass
class AverageEffects:
    """Average indirect effects over facts.

    Attributes:
        effects: kind -> array (len(TOKEN_CLASSES), n_layers) of mean indirect effect.
        counts: kind -> array (len(TOKEN_CLASSES),) facts contributing to each class.
        n_facts: number of facts averaged.
        clean_prob, corrupt_prob: kind -> mean over facts.
        per_fact: the per-fact records (what the cache file holds).
        settings: samples, noise, window, seed, model.
    """

    effects: dict
    counts: dict
    n_facts: int
    clean_prob: dict
    corrupt_prob: dict
    per_fact: list
    settings: dict

    def table(self, kind: str):
        """The (token class x layer) mean indirect effects of `kind` as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.effects[kind], index=list(TOKEN_CLASSES))


def fact_content(fact) -> tuple[dict, str]:
    """What a fact is (prompt, subject, target, source: what its records are keyed by), and a
    label for people reading the records ("source:id"; not a key, since a KnownFact and a
    CounterFact record can both have id 0).

    Three kinds of fact are accepted, each read by its own rule:

    * a `KnownFact`: its text, subject and attribute; source known_1000, id its known_id;
    * a `CounterFactRecord`: its text, subject and target_true; source counterfact, id its
      case_id;
    * a mapping or a pandas row (the knowledge table's rows, `select_known_facts`): text (else
      prompt), subject, target_true (else attribute, else target; an int is a token id),
      source and id when present.

    Anything else, or a fact without a prompt or subject, is refused with its position named
    by the caller.
    """
    from loudfacts.data import CounterFactRecord, KnownFact

    if isinstance(fact, KnownFact):
        prompt, subject, target = fact.text, fact.subject, fact.attribute
        source, fid = "known_1000", fact.known_id
    elif isinstance(fact, CounterFactRecord):
        prompt, subject, target = fact.text, fact.subject, fact.target_true
        source, fid = "counterfact", fact.case_id
    else:
        if hasattr(fact, "to_dict") and hasattr(fact, "index"):  # a pandas row
            fact = fact.to_dict()
        if not isinstance(fact, Mapping):
            raise ValueError(f"a fact must be a KnownFact, a CounterFactRecord, or a mapping / "
                             f"pandas row with text, subject and target_true; got "
                             f"{type(fact).__name__}")
        get = fact.get
        prompt, subject = get("text") or get("prompt"), get("subject")
        target = get("target_true") or get("attribute") or get("target")
        source = get("source") or ""
        fid = get("id")
        if fid is None:
            fid = get("known_id") if get("known_id") is not None else get("case_id")
    label = f"{source}:{fid}" if fid is not None else f"{prompt}|{subject}"
    if not isinstance(prompt, str) or not isinstance(subject, str):
        raise ValueError(f"({label}) needs a prompt (text) and a subject; got prompt={prompt!r}, "
                         f"subject={subject!r}")
    content = {"prompt": prompt, "subject": subject,
               "target": int(target) if is_int(target) else target, "source": str(source)}
    return content, label


def average_settings(model, samples, noise, window, seed, first_token, occurrence) -> dict:
    return {"model": model.name, "samples": int(samples), "noise": float(noise),
            "window": int(window), "seed": int(seed), "first_token": bool(first_token),
            "occurrence": None if occurrence is None else int(occurrence)}


def averages_file_key(settings: dict, weights: str) -> str:
    return digest({**settings, "weights": weights, "v": 2}, 24)


def average_record_key(content: dict, kind: str, settings: dict, weights: str) -> str:
    """A digest of the fact's content, the kind and every setting: different facts, kinds or
    settings never share a key."""
    return digest({"fact": content, "kind": kind, **settings, "weights": weights, "v": 2}, 24)


def _legacy_key(payload: dict) -> str:
    """The key that stores written before `loudfacts.digests` (2026-12) were named by: SHA-256
    of `json.dumps(payload, sort_keys=True)`, 24 digits. Only `_migrate_legacy_store` reads it."""
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _migrate_legacy_store(path: Path, settings: dict, weights: str) -> int:
    """Rename the records file of these settings from its legacy key to `path`, re-keying each
    record. A record is carried over only when its stored key is the legacy key of its own fact,
    kind and these settings (so nothing made under other settings comes along); the others
    are dropped and recomputed. Returns the number of records carried over (0: no legacy file)."""
    model_part = path.name[len("averages-"):-len(f"-{averages_file_key(settings, weights)}.jsonl")]
    old = path.with_name(
        f"averages-{model_part}-{_legacy_key({**settings, 'weights': weights, 'v': 2})}.jsonl")
    if not old.exists():
        return 0
    kept, dropped = [], 0
    for rec in _read_average_records(old).values():
        fact, kind = rec.get("fact"), rec.get("kind")
        payload = {"fact": fact, "kind": kind, **settings, "weights": weights, "v": 2}
        if not isinstance(fact, dict) or rec["key"] != _legacy_key(payload):
            dropped += 1
            continue
        kept.append({**rec, "key": average_record_key(fact, kind, settings, weights)})
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    for part in [old, *sorted(old.parent.glob(f"{old.stem}.part*.jsonl"))]:
        part.unlink()
    print(f"average_effects: {old.name} renamed to {path.name} (keys are digests.digest now): "
          f"{len(kept)} records carried over" + (f", {dropped} dropped" if dropped else ""))
    return len(kept)


def average_record(res: TraceResult, content: dict, label: str, kind: str, key: str) -> dict:
    return {"key": key, "fact": content, "id": label, "kind": kind,
            "subject": content["subject"], "prompt": res.settings["prompt"],
            "target": res.target, "target_id": res.settings["target_id"],
            "clean_prob": res.clean_prob, "corrupt_prob": res.corrupt_prob,
            "classes": class_effects(res)}


def average_effects(
    model,
    facts: Iterable,
    kinds: Sequence[str] = KINDS,
    samples: int = 10,
    noise: float | None = None,
    window: int = 10,
    seed: int = 0,
    cache: bool = True,
    progress: bool = True,
    workers: int = 1,
    first_token: bool = True,
    occurrence: int | None = None,
    store=None,
) -> AverageEffects:
    """Average indirect effect by token class and layer over `facts`, for each kind.

    Each fact is traced on its true object (`target_true` / `attribute`; a fact without one is
    traced on the greedy prediction). Every fact is checked (subject in the prompt, target
    tokenisable, fits the context) before anything is traced; an error names the fact.

    Per-fact class effects are appended to a JSON-lines file in `store` (default
    data/cache/tracing/) named by the model, its weights and the settings, so an interrupted
    run resumes where it stopped and records made under other settings go to another file.
    Notebook 01 keeps them in `results/<model>/tracing/`, committed with the code, so a fresh
    clone's report reuses them.
    Each record is keyed by a digest of the fact's content (prompt, subject, target, source
    kind), the kind and every setting; on read, a record is used only if its stored fact and
    kind are the ones asked for.

    Args:
        facts: dicts, pandas rows (e.g. `known_facts_table(model)` filtered on `known`),
            `KnownFact`s or CounterFact records, each with a prompt/text, subject and object.
        kinds: which restorations to average (one kind may be given as a string).
        window: layers restored together for "mlp"/"attn", 1 <= window <= n_layers.
        workers: trace in this many one-thread processes (`loudfacts.workers`), each taking
            every n-th (fact, kind) not yet in the cache and appending to its own part of the
            cache file; needs `cache` and a model that `load_model(model.name)` reloads with
            the same weights (checked: a worker refuses another fingerprint).
        first_token: score a multi-token object by its first token (default, ROME's
            convention; facts from `select_known_facts` have that token as the greedy
            prediction). With False, a multi-token object raises before anything is traced.
            `settings["multi_token_targets"]` counts the facts scored by their first token.
        occurrence: passed to `trace` (None: each subject must occur once in its prompt).
        store: the folder of the per-fact records file (created if missing); default
            `data/cache/tracing/`. Used only with `cache`.

    Returns:
        AverageEffects.
    """
    from tqdm.auto import tqdm

    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = list(kinds)
    if not kinds:
        raise ValueError(f"kinds is empty; use some of {KINDS}")
    for k in kinds:
        check_trace_args(model, k, None, "fast", samples, window, noise, seed)
    if not is_int(workers) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    facts = list(facts)
    if not facts:
        raise ValueError("facts is empty: nothing to average")
    items, n_multi = [], 0
    for i, fact in enumerate(facts):
        try:
            content, label = fact_content(fact)
        except ValueError as exc:
            sep = " " if str(exc).startswith("(") else ": "
            raise ValueError(f"fact {i}{sep}{exc}") from exc
        try:
            prepare_trace(model, content["prompt"], content["subject"], content["target"],
                     occurrence, first_token)
        except ValueError as exc:
            raise type(exc)(f"fact {i} ({label}): {exc}") from exc
        if isinstance(content["target"], str) and len(target_ids(model, content["target"])) > 1:
            n_multi += 1
        items.append((content, label))
    scale = float(noise_scale(model) if noise is None else noise)
    settings = average_settings(model, samples, scale, window, seed, first_token, occurrence)
    weights = weights_fingerprint(model)
    key = averages_file_key(settings, weights)
    folder = cache_dir("tracing") if store is None else Path(store)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"averages-{model.name.replace('/', '_')}-{key}.jsonl"
    if cache and not path.exists():
        _migrate_legacy_store(path, settings, weights)
    todo = [(content, label, k, average_record_key(content, k, settings, weights))
            for content, label in items for k in kinds]
    done = _matching_records(_read_average_records(path), todo, path) if cache else {}
    missing = [t for t in todo if t[3] not in done]
    if workers > 1 and cache and len(missing) > 1:
        _average_in_workers(model, missing, settings, key, path, workers)
        done = _matching_records(_read_average_records(path), todo, path)
    records = []
    for content, label, kind, rkey in tqdm(todo, desc="average causal effects",
                                           disable=not progress):
        rec = done.get(rkey)
        if rec is None:
            res = trace(model, content["prompt"], content["subject"], kind=kind,
                        target=content["target"], samples=samples, noise=scale, window=window,
                        seed=seed, cache=False, occurrence=occurrence, first_token=first_token)
            rec = average_record(res, content, label, kind, rkey)
            done[rkey] = rec
            if cache:
                append_line(path, rec)
        records.append(rec)

    effects, counts, clean_p, corrupt_p = {}, {}, {}, {}
    for kind in kinds:
        recs = [r for r in records if r["kind"] == kind]
        grid = np.zeros((len(TOKEN_CLASSES), model.n_layers))
        count = np.zeros(len(TOKEN_CLASSES), dtype=int)
        for i, name in enumerate(TOKEN_CLASSES):
            rows = [r["classes"][name] for r in recs if r["classes"][name] is not None]
            count[i] = len(rows)
            grid[i] = np.mean(rows, axis=0) if rows else np.nan
        effects[kind], counts[kind] = grid, count
        clean_p[kind] = float(np.mean([r["clean_prob"] for r in recs])) if recs else float("nan")
        corrupt_p[kind] = float(np.mean([r["corrupt_prob"] for r in recs])) if recs else float("nan")
    settings = {**settings, "kinds": kinds, "multi_token_targets": n_multi}
    return AverageEffects(effects, counts, len(facts), clean_p, corrupt_p, records, settings)


def _read_average_records(path: Path) -> dict:
    """record key -> per-fact record, from the records file (and the per-worker part files
    that earlier versions wrote beside it). Lines that do not parse (a torn line from an
    interrupted write) are skipped; their records are recomputed."""
    done: dict = {}
    for part in [path, *sorted(path.parent.glob(f"{path.stem}.part*.jsonl"))]:
        if not part.exists():
            continue
        for line in part.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from an interrupted run
    return done


def _matching_records(done: dict, todo: list, path: Path) -> dict:
    """The cached records of `todo` whose stored fact and kind are the ones asked for; a
    record under the right key holding another fact (a hand-edited or foreign file) is
    dropped with a warning, and recomputed."""
    out, wrong = {}, []
    for content, _, kind, rkey in todo:
        rec = done.get(rkey)
        if rec is None:
            continue
        if rec.get("fact") == content and rec.get("kind") == kind:
            out[rkey] = rec
        else:
            wrong.append(f"{rec.get('fact')!r} ({rec.get('kind')!r}) instead of {content!r} "
                         f"({kind!r})")
    if wrong:
        warnings.warn(f"{len(wrong)} cached record(s) in {path.name} hold another fact than "
                      f"their key says, recomputed: {wrong[:3]}", stacklevel=3)
    return out


def _average_in_workers(model, items, settings, key, path, workers):
    """Trace (fact, kind) items in `workers` processes (`python -m loudfacts.trace_worker`)."""
    from loudfacts.workers import run_workers

    todo = [{"fact": content, "id": label, "kind": kind, "key": rkey}
            for content, label, kind, rkey in items]
    job = cache_dir("tracing") / f"{path.stem}.todo.json"  # transient: not beside the records
    job.write_text(json.dumps(todo))
    args = ["--model", model.name, "--todo", job, "--samples", settings["samples"],
            "--noise", repr(settings["noise"]), "--window", settings["window"],
            "--seed", settings["seed"], "--key", key, "--out", path]
    if settings["first_token"]:
        args.append("--first-token")
    if settings["occurrence"] is not None:
        args += ["--occurrence", settings["occurrence"]]
    run_workers("loudfacts.trace_worker", args, workers)
    job.unlink(missing_ok=True)


def choose_edit_layer(avg: AverageEffects, kind: str = "mlp",
                      token_class: str = "last subject token",
                      min_layer: int = 0) -> tuple[int, float]:
    """The layer with the largest average indirect effect of `kind` at `token_class` (ROME's
    criterion for where to edit), and that effect.

    `min_layer` leaves out the layers below it (e.g. 1 to leave out the first MLP, which acts on
    the corrupted token embedding itself rather than recalling anything).
    """
    row = avg.effects[kind][TOKEN_CLASSES.index(token_class)]
    if not 0 <= min_layer < len(row):
        raise ValueError(f"min_layer {min_layer} is out of range (0..{len(row) - 1})")
    layer = min_layer + int(np.nanargmax(row[min_layer:]))
    return layer, float(row[layer])
