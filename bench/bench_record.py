"""Wall seconds for notebook 06's editors on one known record, as the study computes them.

Run: `python bench/bench_record.py [--n 12] [--out bench/results/record.json]` (embedded model).

The speed issue's target is "the 7-editor evaluation of one known record <= 10 s wall on 2
cores". This times exactly that work: `runner.study` with notebook 06's editors and settings
(its parameters cell and `params/report.yaml`: 10 neighbours, the CounterFact pool topped up object-then-relation)
on the first `--n` records of its split, into a scratch folder (never `results/`), fresh, with
ROME's on-disk components cache off, so every edit is computed (hook-delta and hook-gated
reuse ROME's v* from memory, as in the study). GE is left out: the study generates only for
its first 8 records. What a process loads once (C and the corpus tokens behind its cache key,
ROME's context prefixes, patch-donor's fact pool) is loaded in an untimed warm-up on the first
records up to a known one, as a study of many records pays it once (before 2026-12-08 the
warm-up ran the first record alone, which is unknown, so the first mode timed also paid about
2.4 s of loading: C's key tokenises the corpus once per process). These ways of running it
are timed in one run:

- `in-process`: one process, torch's default thread count (the cores);
- `2 workers`: two one-thread worker processes, one shard each (`workers=2`, the study's and
  the report's way);
- `in-process, padded`: as `in-process`, with packed scoring off (`scoring.packing(False)`:
  every probe forward right-padded, the route before prefix-tree packing), so the two
  in-process lines give packing's effect on the whole record in one run;
- `in-process, as at a5e5ad8`: as `in-process`, with the three savings made after commit
  a5e5ad8 turned off: hook edits' probes padded (`scoring.packing(True, hooks=False)`), the
  weights hashed on every request for their digest
  (`digests.remembering_weight_digests(False)`), and every ROME v* and FT step through the
  bridge (`lean.lean_route(False)`);
- `in-process, bridge`: as `in-process` with only the lean route off, so the two lines give
  `loudfacts.lean`'s effect on the whole record in one run;
- `in-process, one edit at a time`: as `in-process` with batched edits off
  (`runner.batched_edits(False)`: FT and FT-L edit each record alone instead of the next
  `runner.EDIT_BATCH` records' prompts together), so the two lines give batching's effect;
- `in-process, separate passes`: as `in-process` with each probe set scored the way it was
  before `scoring.prompt_scores`: the next-token reads in one pass and the multi-token objects,
  teacher-forced, in another (`separate_pair_probs` below, swapped in for `pair_probs`), so
  the two lines give the merged pass's effect;
- `in-process, batch_size chunks`: as `in-process` with every scoring call cut into
  `batch_size` prompts as before `scoring._chunks` (a record's 40-odd probe prompts were two
  packed forwards, not one; `chunks_by_route` below), so the two lines give that change's
  effect.

`--modes` picks which (default: all eight). The `as at a5e5ad8` mode also edits one at a time,
scores in separate passes and cuts calls by `batch_size`. `in-process, bridge` also runs the
scoring forwards through the bridge (the lean route covers them too: `scoring.lean_packing`).

Unknown records are scored but not edited; the per-known-record figure charges all the wall
time to the known ones (an upper bound). The per-editor `edit_s_per_known_record` are the rows'
own `edit_seconds`, which count a reused v* at what it cost ROME (so hook-delta's and
hook-gated's look like ROME's though the wall time paid for v* once). Shards split records by
case id parity (`runner.shard_records`), so with few records the two workers' shares can be
uneven and the wall is the larger one's. Writes the CPU, load and seconds to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"  # time fresh optimisations

import torch  # noqa: E402

from loudfacts import cases  # noqa: E402
from loudfacts import evaluation as ev  # noqa: E402
from loudfacts import scoring  # noqa: E402
from loudfacts.digests import remembering_weight_digests  # noqa: E402
from loudfacts.editing.rome import clear_components_memo  # noqa: E402
from loudfacts.lean import lean_route  # noqa: E402
from loudfacts.models import cpu_info, load_model  # noqa: E402
from loudfacts.paths import repo_path  # noqa: E402
from loudfacts.report import declared_parameters, load_params  # noqa: E402
from loudfacts.scoring import next_token_logprobs, target_probs  # noqa: E402
from loudfacts.tokens import target_ids  # noqa: E402

TARGET_S = 10.0
# label: (workers, packed scoring, hook edits packed, weight digests remembered, lean route,
#         batched edits, merged scoring passes, packed calls cut by route)
MODES = {"in-process": (1, True, True, True, True, True, True, True),
         "2 workers": (2, True, True, True, True, True, True, True),
         "in-process, padded": (1, False, True, True, True, True, True, True),
         "in-process, as at a5e5ad8": (1, True, False, False, False, False, False, False),
         "in-process, bridge": (1, True, True, True, False, True, True, True),
         "in-process, one edit at a time": (1, True, True, True, True, False, True, True),
         "in-process, separate passes": (1, True, True, True, True, True, False, True),
         "in-process, batch_size chunks": (1, True, True, True, True, True, True, False)}
NOTEBOOK = "06_specificity_plus"


def separate_pair_probs(model, pairs, batch_size: int = 32, extra_prompts=()):
    """`probes.pair_probs` as it was before `scoring.prompt_scores`: the next-token reads
    (one-token objects and `extra_prompts`) in one pass, then the multi-token objects
    teacher-forced in another, each prompt computed again there. Same numbers to float
    rounding; only for timing the merged pass against it."""
    ids = [target_ids(model, t) for _, t in pairs]
    single = list(dict.fromkeys([p for (p, _), i in zip(pairs, ids) if len(i) == 1]
                                + list(extra_prompts)))
    logp = next_token_logprobs(model, single, batch_size=batch_size) if single else None
    rows = {p: logp[j] for j, p in enumerate(single)}
    out = torch.empty(len(pairs), dtype=torch.float64)
    multi = [k for k, i in enumerate(ids) if len(i) > 1]
    for k, ((p, _), i) in enumerate(zip(pairs, ids)):
        if len(i) == 1:
            out[k] = rows[p][i[0]].double().exp()
    if multi:
        out[multi] = target_probs(model, [pairs[k][0] for k in multi],
                                  [pairs[k][1] for k in multi], batch_size=batch_size).double()
    return out, rows


@contextlib.contextmanager
def merged_passes(enabled: bool):
    """Inside the block, `cases.score` scores with `separate_pair_probs` unless `enabled`."""
    real = cases.pair_probs
    if not enabled:
        cases.pair_probs = separate_pair_probs
    try:
        yield
    finally:
        cases.pair_probs = real


@contextlib.contextmanager
def chunks_by_route(enabled: bool):
    """Inside the block, the scorers cut every call into `batch_size` prompts, packed or not,
    as before `scoring._chunks` (unless `enabled`)."""
    real = scoring._chunks
    if not enabled:
        scoring._chunks = lambda model, tokens, batch_size: scoring._batches(len(tokens),
                                                                             batch_size)
    try:
        yield
    finally:
        scoring._chunks = real


def notebook_parameters() -> dict:
    """Notebook 06's parameters as `make report` runs it: its parameters cell, then the file."""
    return {**declared_parameters(repo_path("notebooks", f"{NOTEBOOK}.py")),
            **load_params(repo_path("params", "report.yaml"), NOTEBOOK)}


def notebook_settings(n: int) -> tuple[list[str], dict]:
    """Notebook 06's editors and the `runner.study` options that time them on its first `n`
    records (no generation, fresh, no progress bars)."""
    p = notebook_parameters()
    opts = dict(split=p["split"], n=n, n_neighbours=p["n_neighbours"], generation=False,
                top_up=p["neighbour_top_up"], seed=p["seed"], pool=p["neighbour_pool"],
                progress=False, fresh=True)
    return p["editors"], opts


def main(n: int, out: Path, modes=tuple(MODES)):
    editors, opts = notebook_settings(n)
    model = load_model(notebook_parameters()["model_name"])
    # warm-up, not timed: kernels, and what every editor loads once per process (C and the
    # corpus's tokens behind its key, context prefixes, patch-donor's fact pool), on the first
    # records up to a known one (an unknown record is not edited), both scoring routes
    for packed in (True, False):
        for k in range(1, n + 1):
            with tempfile.TemporaryDirectory() as root, scoring.packing(packed):
                warm = ev.study(model, editors, workers=1, root=root, **{**opts, "n": k})
            if warm["unedited"]["known"].any():
                break
    # count the full hashes of the weights (each ~0.5 s on this model): remembering digests
    # saves exactly those, whatever the machine's speed
    hashes = []
    real_digest = type(model).weight_digest
    model.weight_digest = lambda: hashes.append(1) or real_digest(model)
    t = time.perf_counter()
    for _ in range(3):
        real_digest(model)
    hash_s = (time.perf_counter() - t) / 3
    results = {}
    for label in modes:
        workers, packed, hooks, remember, lean, batched, merged, by_route = MODES[label]
        # each in-process mode starts from nothing remembered: ROME's v* (hook-delta and
        # hook-gated still reuse it within the mode) and the unedited model's scores
        clear_components_memo()
        ev.UNEDITED.probs.clear()
        ev.UNEDITED.logprobs.clear()
        with (tempfile.TemporaryDirectory() as root, scoring.packing(packed, hooks),
              remembering_weight_digests(remember), lean_route(lean),
              ev.batched_edits(batched), merged_passes(merged), chunks_by_route(by_route)):
            hashes.clear()
            t = time.perf_counter()
            frames = ev.study(model, editors, workers=workers, root=root, **opts)
            wall = time.perf_counter() - t
        rows = frames["unedited"]
        known = int(rows["known"].sum())
        edit_s = {e: float(frames[e].loc[frames[e]["known"], "edit_seconds"].mean())
                  for e in editors if e != "unedited"}
        results[label] = {
            "workers": workers, "torch_threads": torch.get_num_threads() if workers == 1 else 1,
            "packed_scoring": packed, "hook_edits_packed": packed and hooks,
            "weight_digests_remembered": remember, "lean_route": lean,
            "batched_edits": batched, "merged_scoring_passes": merged,
            "packed_calls_cut_by_route": by_route,
            "records": len(rows), "known": known, "wall_s": wall,
            "wall_s_per_record": wall / len(rows),
            "wall_s_per_known_record": wall / max(known, 1),
            "meets_target": wall / max(known, 1) <= TARGET_S,
            "edit_s_per_known_record": edit_s,
            # in this process only (a worker process hashes on its own)
            "weight_hashes": len(hashes) if workers == 1 else None,
        }
        print(f"{label:10s}: {wall:6.1f} s for {len(rows)} records ({known} known): "
              f"{wall / max(known, 1):5.2f} s per known record", flush=True)
    doc = {
        "benchmark": "record", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "cpu": cpu_info(),
                    "load_average": list(os.getloadavg())},
        "model": model.name, "editors": editors, "settings": {k: v for k, v in opts.items()
                                                             if k not in ("progress", "fresh")},
        "target_s_per_known_record": TARGET_S, "s_per_weight_hash": hash_s, "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="first records of notebook 06's split")
    ap.add_argument("--out", type=Path, default=repo_path("bench", "results", "record.json"))
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="which ways to run (default: all)")
    a = ap.parse_args()
    if a.n < 1:
        ap.error(f"--n {a.n}: at least one record")
    main(a.n, a.out, a.modes)
