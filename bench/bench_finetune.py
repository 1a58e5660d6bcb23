"""Seconds per edit for FT, FT+L and ROME on the same requests, in one run.

    python bench/bench_finetune.py                 # timing -> bench/results/finetune.json
    python bench/bench_finetune.py --sweep         # hyper-parameter evidence -> data/cache/ft_sweep/

Timing: each editor edits the same few known facts (after one warm-up edit, not timed); we
report the median and mean seconds per `editor.edit(request)` and, for FT, the optimiser steps
it ran (it stops early once P(target) reaches `stop_prob`). ROME is included when
`loudfacts.editing.rome` exists; its key statistics are computed (or loaded from cache) during
the warm-up, so the timed edits measure the edit, not the statistics, and its remembered
components are cleared before every edit, so each one computes v*. Each edit is made twice,
interleaved: by default, and with the lean route off (`lean.lean_route(False)`: every step
through the TransformerLens bridge, as before `loudfacts.lean`); `bridge` gives those seconds,
the ratio of the medians, and how far the edit's weight change moved, ‖ΔW_lean − ΔW_bridge‖ /
‖ΔW_bridge‖.

Sweep: the small grid behind `hparams/ft/<model>.json`'s "evidence": efficacy (P(target_new)
on the rewrite prompt), a neighbourhood of other facts that should not move, and perplexity on
held text, per (layer, lr, eps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time

import torch

# time fresh optimisations: ROME's on-disk components cache off
os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"

from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.base import available_editors
from loudfacts.editing.rome import clear_components_memo
from loudfacts.lean import lean_route
from loudfacts.models import cpu_info, load_model
from loudfacts.paths import cache_dir, repo_path

REQUESTS = [
    EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"),
    EditRequest("{} is located in the city of", "The Colosseum", "Paris", "Rome"),
    EditRequest("{} is located in the city of", "The Sydney Opera House", "London", "Sydney"),
    EditRequest("{} is located in the country of", "The Kremlin", "Japan", "Russia"),
]
NEIGHBOURS = [
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("Big Ben is located in the city of", "London"),
    ("The Brandenburg Gate is located in the city of", "Berlin"),
    ("The capital of France is", "Paris"),
    ("The Statue of Liberty is located in the city of", "New"),
    ("The Acropolis is located in the city of", "Athens"),
]


def machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu": cpu_info(),
    }


def _relative_change(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over every weight change of two edits of the same paths."""
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return (num / den) ** 0.5 if den else 0.0


def bench(model_name: str, n_requests: int, out: str) -> dict:
    model = load_model(model_name)
    editors = ["ft", "ft-l"] + (["rome"] if "rome" in available_editors() else [])
    reqs = REQUESTS[:n_requests]
    results = {}
    for name in editors:
        editor = get_editor(name, model)
        editor.edit(reqs[0])  # warm-up: caches (ROME's statistics), allocator, kernels
        secs, steps, bridge_secs, moved = [], [], [], []
        for i, r in enumerate(reqs):
            made = {}
            for lean in ((True, False) if i % 2 == 0 else (False, True)):
                clear_components_memo()
                with lean_route(lean):
                    t0 = time.perf_counter()
                    e = editor.edit(r)
                    (secs if lean else bridge_secs).append(time.perf_counter() - t0)
                made[lean] = e.deltas()
                if lean:
                    steps.append(e.info.get("steps_run", e.info.get("v_steps")))
            moved.append(_relative_change(made[True], made[False]))
        results[name] = {
            "seconds_median": statistics.median(secs),
            "seconds_mean": statistics.fmean(secs),
            "seconds": secs,
            "steps_run": steps,
            "bridge": {"seconds_median": statistics.median(bridge_secs),
                       "seconds": bridge_secs,
                       "ratio_lean_to_bridge": statistics.median(secs)
                       / statistics.median(bridge_secs),
                       "weight_change_moved_max": max(moved)},
            "hparams": {k: v for k, v in editor.hparams.items() if not isinstance(v, (dict, list))},
        }
        print(f"{name:6s} median {results[name]['seconds_median']:.2f} s/edit  {secs}; bridge "
              f"{statistics.median(bridge_secs):.2f}; moved {max(moved):.1e}")
    ref = results.get("rome", {}).get("seconds_median")
    for r in results.values():
        r["ratio_to_rome"] = r["seconds_median"] / ref if ref else None
    doc = {
        "benchmark": "seconds per edit (editor.edit(request), model unchanged afterwards)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name,
        "requests": [r.statement for r in reqs],
        "machine": machine(),
        "rome_available": "rome" in results,
        "results": results,
    }
    path = repo_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return doc


def run_sweep(model_name: str, n_requests: int, max_tokens: int) -> None:
    from loudfacts.data import load_text
    from loudfacts.bricking import sweep

    model = load_model(model_name)
    held = load_text("lee")[:4000]
    reqs = REQUESTS[:n_requests]
    out = cache_dir("ft_sweep")
    # Adam moves every weight by about lr per step, so for FT+L lr = eps reaches the bound in
    # one step (ROME's GPT-2 XL pairing, 5e-4/5e-4); the grid varies where and how far.
    grids = {
        "ft": [{"layer": L, "lr": lr, "steps": 25} for L in (0, 3, 6, 12) for lr in (5e-4, 5e-3)],
        "ft-l": [
            {"layer": L, "eps": eps, "lr": eps, "steps": 25}
            for L in (0, 3, 6, 12)
            for eps in (5e-4, 2e-3, 1e-2)
        ],
    }
    for name, grid in grids.items():
        df = sweep(model, name, reqs, grid, NEIGHBOURS, held, max_tokens)
        path = out / f"{model_name}-{name}.csv"
        df.to_csv(path.with_suffix(".tmp"), index=False)
        os.replace(path.with_suffix(".tmp"), path)
        keys = [k for k in ("layer", "eps", "lr") if k in df]
        print(df.groupby(keys)[["p_new_after", "neighbour_p_true", "ppl_after", "seconds"]]
              .mean().round(3).to_string())
        print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=3, help="requests timed per editor")
    ap.add_argument("--out", default="bench/results/finetune.json")
    ap.add_argument("--sweep", action="store_true", help="run the hyper-parameter sweep instead")
    ap.add_argument("--max-tokens", type=int, default=256, help="perplexity tokens (sweep)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.sweep:
        run_sweep(args.model, args.n, args.max_tokens)
    else:
        bench(args.model, args.n, args.out)


if __name__ == "__main__":
    main()
