"""Scoring a record's probes: packed prefix trees against padded batches, in one run.

Run: `python bench/bench_scoring.py [N] [--out PATH]` (default N=8 edit-1k records, embedded
model). Writes bench/results/scoring.json, naming the CPU and the load.

What is timed is `cases.score` of notebook 06's probes for a record (rewrite, paraphrase,
neighbourhood, CounterFact+ and tangential prompts, P(new) and P(true), with the CounterFact+
next-token distributions the runner reads for NKL), on the unedited model: a weight edit
(ROME, FT, FT-L) is scored by the same forwards, so its scoring costs the same.

Variants, interleaved within each repetition so that every ratio is measured under the same
load: "padded" (`scoring.packing(False)`: right-padded batches of 32 prompts, the route before
packing) and "packed" at `PACK_TOKENS` = 128, 256 and 512 (the default) positions per tree.
For each, the positions the forwards compute (padding included) are counted, and the largest
relative difference of P(new) and P(true) from the padded route is recorded.

Hook edits (`hook_edits` in the output): the same probes scored with notebook 06's hook edits
applied (patch-donor, hook-delta, hook-gated; ROME's v* from the components cache when it holds
them), packed (their hooks are `scoring.pack_aware`) against padded
(`scoring.packing(True, hooks=False)`, the route before hooks could pack), interleaved the same
way, with the calls a hook sent back to padding (`PackingRefused`) counted. patch-context is
left out: it never takes an edit on this model (notebook 04), and its hooks are those of
patch-donor's "last" positions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np
import torch

from loudfacts import scoring
from loudfacts.cases import Case, score
from loudfacts.data import load_counterfact, neighbour_pool
from loudfacts.models import cpu_info, load_model
from loudfacts.paths import repo_path
from loudfacts.probes import build_neighbourhoods

PACK_SIZES = (128, 256, 512)
REPEATS = 3


def _cases(n: int):
    records = load_counterfact("edit-1k", n=n, verbose=False)
    cf = list(neighbour_pool())
    in_cf = {r.case_id for r in cf}
    nb = build_neighbourhoods(records, cf + [r for r in records if r.case_id not in in_cf], 10,
                              top_up="object-then-relation")
    return [Case.from_counterfact(r, neighbours=nb[r.case_id], ladder=False) for r in records]


def _score_all(model, cases):
    return [score(model, c.probes, 32, next_token_of=[p.prompt for p in c.of_role("counterfact+")])
            for c in cases]


def _positions(model, cases, variant):
    """Positions the forwards compute for the cases' prompts (as `pair_probs` groups them:
    one next-token pass over the distinct prompts, in batches of 32)."""
    total = 0
    for c in cases:
        seqs = [model.encode(p) for p in dict.fromkeys(p.prompt for p in c.probes)]
        for i in range(0, len(seqs), 32):
            group = seqs[i:i + 32]
            if variant == "padded":
                total += len(group) * max(map(len, group))
            else:
                total += sum(len(p) for p, _ in scoring.pack_sequences(group, variant))
    return total


def _max_rel_diff(got, ref, col) -> float:
    """Largest |got - ref| / ref of column `col` over records' score frames (NaN refs skipped)."""
    worst = 0.0
    for a, b in zip(got, ref):
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        ok = ~np.isnan(y)
        worst = max(worst, float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(y[ok], 1e-30))))
    return worst


HOOK_EDITORS = ("patch-donor", "hook-delta", "hook-gated")


def _hook_edits(model, cases):
    """Seconds per record scoring each hook edit's probes, packed and padded (module doc)."""
    from loudfacts.editing import EditError, get_editor

    editors = {name: get_editor(name, model) for name in HOOK_EDITORS}
    edits = {name: [] for name in HOOK_EDITORS}
    for c in cases:
        for name, ed in editors.items():
            try:
                edits[name].append((c, ed.edit(c.request)))
            except EditError as e:  # e.g. no donor: that record is left out for this editor
                print(f"{name}: {c.request.subject!r} skipped ({e})")
    routes = ("padded", "packed")

    def run(name, route):
        with scoring.packing(True, hooks=route == "packed"):
            out = []
            for c, edit in edits[name]:
                with edit.applied():
                    out.append(score(model, c.probes, 32, next_token_of=[
                        p.prompt for p in c.of_role("counterfact+")]))
            return out

    table = {}
    for name in HOOK_EDITORS:
        if not edits[name]:
            continue
        for route in routes:  # warm-up
            run(name, route)
        seconds = dict.fromkeys(routes, 0.0)
        results, refused = {}, 0
        for rep in range(REPEATS):
            for route in (routes if rep % 2 == 0 else routes[::-1]):
                before = scoring._PACKING["refused"]
                t = time.perf_counter()
                results[route] = run(name, route)
                seconds[route] += time.perf_counter() - t
                if route == "packed":
                    refused += scoring._PACKING["refused"] - before
        worst = {col: _max_rel_diff(results["packed"], results["padded"], col)
                 for col in ("p_new", "p_true")}
        k = len(edits[name])
        table[name] = {
            "records": k,
            "padded_s_per_record": seconds["padded"] / (REPEATS * k),
            "packed_s_per_record": seconds["packed"] / (REPEATS * k),
            "speedup_vs_padded": seconds["padded"] / seconds["packed"],
            "calls_sent_back_to_padding_per_repeat": refused / REPEATS,
            "max_rel_diff_p_new": worst["p_new"], "max_rel_diff_p_true": worst["p_true"],
        }
        print(f"{name:>12}: padded {table[name]['padded_s_per_record']:.3f} s, packed "
              f"{table[name]['packed_s_per_record']:.3f} s per record "
              f"({table[name]['speedup_vs_padded']:.2f}x), P(new) within {worst['p_new']:.1e}, "
              f"{refused / REPEATS:.0f} calls padded by refusal")
    return table


def main(n: int = 8, out_path=None):
    torch.manual_seed(0)
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    cases = _cases(n)
    assert not scoring._any_hooks(model) and scoring.supports_packing(model)
    variants = ["padded", *PACK_SIZES]
    default_size = scoring.PACK_TOKENS

    def run(v):
        if v == "padded":
            with scoring.packing(False):
                return _score_all(model, cases)
        scoring.PACK_TOKENS = v
        try:
            with scoring.packing(True):
                return _score_all(model, cases)
        finally:
            scoring.PACK_TOKENS = default_size

    for v in variants:  # warm-up
        run(v)
    seconds = {v: 0.0 for v in variants}
    results = {}
    for rep in range(REPEATS):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for v in order:
            t = time.perf_counter()
            results[v] = run(v)
            seconds[v] += time.perf_counter() - t

    table = {}
    for v in variants:
        s = seconds[v] / (REPEATS * len(cases))
        table[str(v)] = {
            "s_per_record": s,
            "speedup_vs_padded": seconds["padded"] / seconds[v],
            "positions": _positions(model, cases, v),
            "max_rel_diff_p_new": _max_rel_diff(results[v], results["padded"], "p_new"),
            "max_rel_diff_p_true": _max_rel_diff(results[v], results["padded"], "p_true"),
        }
        print(f"{str(v):>7}: {s:.3f} s per record, {table[str(v)]['speedup_vs_padded']:.2f}x, "
              f"{table[str(v)]['positions']} positions, P(new) within "
              f"{table[str(v)]['max_rel_diff_p_new']:.1e}")
    hook_table = _hook_edits(model, cases)
    out = {
        "benchmark": "scoring",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_info(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg())},
        "model": model.name,
        "records": len(cases),
        "probes_per_record": float(np.mean([len(c.probes) for c in cases])),
        "repeats": REPEATS,
        "default_pack_tokens": default_size,
        "variants": table,
        "hook_edits": hook_table,
    }
    path = out_path or repo_path("bench", "results", "scoring.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=8)
    ap.add_argument("--out", type=lambda s: __import__("pathlib").Path(s), default=None)
    a = ap.parse_args()
    main(a.n, a.out)
