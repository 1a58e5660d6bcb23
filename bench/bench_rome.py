"""ROME: seconds per edit for the default recipe and for each named option, in one run, and how
far each option moves δ; key-statistics throughput against plain forwards.

Run: `python bench/bench_rome.py [N_COUNTERFACT] [--out PATH]` (default 4, embedded model).
Writes bench/results/rome.json (or PATH, for a second CPU kind) with the CPU
(`torch.backends.cpu.get_cpu_capability()`, model name, flags), so numbers from machines with
and without native bf16 are never confused.

Edits timed: two landmark requests of the seed report, then the first N CounterFact records
the model knows. Each edit is made with every variant below, interleaved (variant order within
an edit rotates), so every ratio is measured under the same load; the components memo is
cleared before every edit. Statistics and context prefixes are filled first and not timed.

Variants: "default" (the model's hparams: the reference recipe, plus the documented prefix
start words for SmolLM2), "bridge" (the same hparams with the lean route off,
`lean.lean_route(False)`: every v* step through the TransformerLens bridge, as before
`loudfacts.lean`), "all_positions" (`suffix_only=False`: every position rerun in each v*
step; the speed switches must leave δ within 1e-3 relative to stay on), and the
deviations: "bf16" (`v_autocast`), "p5" (`v_n_prefixes=5`), "nll_stop" (`early_stop_on=nll`),
"wk_norm" (`norm_reference=w_k_star`). r-ROME's key changes only the update, not δ.
Target on a 2-core CPU: <= 5 s per edit with the default recipe. `--variants` picks which
(default: all; "default" is always run, as the reference for δ).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import contextlib

import torch

# time fresh optimisations: ROME's on-disk components cache off
os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"

from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.rome import clear_components_memo
from loudfacts.lean import lean_route
from loudfacts.models import cpu_info, load_model
from loudfacts.paths import repo_path
from loudfacts.stats import corpus_tokens, second_moment

REQUESTS = [
    EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"),
    EditRequest("{} is located in the city of", "The Space Needle", "London", "Seattle"),
]
VARIANTS = {
    "default": {},
    "bridge": {},
    "all_positions": {"suffix_only": False},
    "bf16": {"v_autocast": "bfloat16"},
    "p5": {"v_n_prefixes": 5},
    "nll_stop": {"early_stop_on": "nll"},
    "wk_norm": {"norm_reference": "w_k_star"},
}
ROUTES = {"bridge": lambda: lean_route(False)}  # variants that differ in route, not hparams
DELTA_BAR = 1e-3  # a speed setting stays on by default only within this relative change of δ


@torch.no_grad()
def forward_throughput(model, tokens, n_batches=3, seq_len=128, per_batch=16):
    ids = tokens[: n_batches * per_batch * seq_len].view(n_batches, per_batch, seq_len)
    model.bridge(ids[0, :2])  # warm-up
    t = time.perf_counter()
    for b in ids:
        model.bridge(b)
    return ids.numel() / (time.perf_counter() - t)


def main(n_cf: int = 4, out_path=None, variants=tuple(VARIANTS)):
    torch.manual_seed(0)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    names = ["default"] + [v for v in VARIANTS if v in variants and v != "default"]
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    editors = {k: get_editor("rome", model, **VARIANTS[k]) for k in names}
    base = editors["default"]
    layer = base.layer
    tokens, _ = corpus_tokens(model)
    n_stats = 3 * 16 * 128
    fwd = forward_throughput(model, tokens)
    t = time.perf_counter()
    second_moment(model, [layer], n_tokens=n_stats, seq_len=128, use_cache=False,
                  progress=False)
    stats_tps = n_stats / (time.perf_counter() - t)
    fwd_tps = (fwd + forward_throughput(model, tokens)) / 2  # bracket the statistics
    print(f"forward {fwd_tps:.0f} tok/s, statistics {stats_tps:.0f} tok/s "
          f"({stats_tps / fwd_tps:.0%})")
    base.second_moment()  # the editor's statistics: filled once, not timed per edit
    for ed in editors.values():
        ed.context_templates()
    from loudfacts.data import load_counterfact
    from loudfacts.scoring import target_probs

    recs = load_counterfact("edit-1k", n=40)
    texts = [r.text for r in recs]
    p_true = target_probs(model, texts, [r.target_true for r in recs])
    p_new = target_probs(model, texts, [r.target_new for r in recs])
    cf = [EditRequest.from_record(r) for r, a, b in zip(recs, p_true, p_new) if a > b][:n_cf]
    edits = []
    for i, (group, req) in enumerate([("landmarks", r) for r in REQUESTS]
                                     + [("counterfact", r) for r in cf]):
        row = {"group": group, "request": req.text + " -> " + req.target_new}
        order = names[i % len(names):] + names[: i % len(names)]
        deltas = {}
        for label in order:
            clear_components_memo()
            with ROUTES.get(label, contextlib.nullcontext)():
                t = time.perf_counter()
                e = editors[label].edit(req)
            total = time.perf_counter() - t
            tm = e.info["timings"]
            deltas[label] = e.info["components"]["delta"]
            row[label] = {"total": total, "k": tm["k"], "v": tm["v"], "update": tm["update"],
                          "v_steps": e.info["v_steps"], "final_loss": e.info["v_final_loss"]}
        ref = deltas["default"]
        for label in names:
            row[label]["delta_rel_change"] = float((deltas[label] - ref).norm() / ref.norm())
        edits.append(row)
        print(f"{group:12s} {req.subject[:24]:24s} " + "  ".join(
            f"{k} {row[k]['total']:5.1f}s/{row[k]['v_steps']}st/Δδ {row[k]['delta_rel_change']:.3f}"
            for k in names))

    def mean(label, key, group=None):
        rows = [e for e in edits if group is None or e["group"] == group]
        return sum(e[label][key] for e in rows) / len(rows)

    summary = {}
    for label in names:
        summary[label] = {
            "hparams_override": VARIANTS[label],
            "route": "bridge (lean route off)" if label == "bridge" else "default",
            "seconds_per_edit": mean(label, "total"),
            "v_seconds": mean(label, "v"),
            "v_steps": mean(label, "v_steps"),
            "by_group": {g: mean(label, "total", g) for g in ("landmarks", "counterfact")},
            "delta_rel_change_max": max(e[label]["delta_rel_change"] for e in edits),
            "time_ratio_to_default": mean(label, "total") / mean("default", "total"),
        }
    for label, switch in (("all_positions", "suffix_only"), ("bridge", "lean_route")):
        if label in summary:
            summary[label][f"{switch}_passes_delta_bar"] = (
                summary[label]["delta_rel_change_max"] <= DELTA_BAR)
    out = {
        "benchmark": "rome",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_info(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "loadavg": os.getloadavg()},
        "model": model.name,
        "layer": layer,
        "hparams": base.hparams,
        "deviations_of_default": base.deviations(),
        "delta_bar": DELTA_BAR,
        "statistics": {"tokens_timed": n_stats, "stats_tokens_per_s": stats_tps,
                       "forward_tokens_per_s": fwd_tps, "ratio": stats_tps / fwd_tps},
        "variants": summary,
        "target_seconds": 5.0,
        "default_meets_target": summary["default"]["seconds_per_edit"] <= 5.0,
        "edits": edits,
    }
    path = Path(out_path) if out_path else repo_path("bench", "results", "rome.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: {kk: round(vv, 3) if isinstance(vv, float) else vv
                          for kk, vv in v.items() if kk != "by_group"}
                      for k, v in summary.items()}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n_cf", nargs="?", type=int, default=4, help="CounterFact edits timed")
    ap.add_argument("--out", default=None, help="results file (default bench/results/rome.json)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="variants timed (default: all)")
    a = ap.parse_args()
    main(a.n_cf, a.out, a.variants)
