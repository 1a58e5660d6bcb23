"""Seconds of evaluation per record next to seconds of editing, per editor.

Run: `python bench/bench_evaluation.py [N]` (default N=4 CounterFact records, embedded model).
Writes bench/results/evaluation.json. Evaluation is timed with and without generation (GE),
since greedy generation dominates the evaluation cost on CPU. The unedited model's numbers are
computed once per record (first editor) and cached, as in a multi-editor run; the first
editor's eval time therefore includes nothing extra (the cache is filled before timing starts).
ROME's remembered components are cleared before each editor, so hook-delta's edit time is its
own v* optimisation (in notebook 06 it reuses ROME's and costs ~0.2 s).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import torch

# time fresh optimisations: ROME's on-disk components cache off
os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"

from loudfacts.data import load_counterfact
from loudfacts.editing.base import available_editors
from loudfacts.editing.rome import clear_components_memo
from loudfacts.evaluation import evaluate
from loudfacts.models import cpu_info, load_model
from loudfacts.paths import repo_path
from loudfacts.plotting import EDITOR_ORDER


def main(n: int = 4):
    torch.manual_seed(0)
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    records = load_counterfact("edit-1k", n=40)
    # keep n records the model knows (cheap: the unedited editor scores them without editing)
    pre = evaluate(model, "unedited", records, generation=False, progress=False)
    known = [r for r, k in zip(records, pre["known"]) if k][:n]
    have = set(available_editors())
    results = {}
    path = repo_path("bench", "results", "evaluation.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in EDITOR_ORDER:
        if name not in have:
            print(f"editor {name!r} not available; skipped")
            continue
        for gen in (False, True):
            clear_components_memo()  # time hook-delta's own v*, not ROME's reused one
            df = evaluate(model, name, known, generation=gen, n_generation=1,
                          max_new_tokens=30, progress=False)
            key = f"{name}{'' if gen else ' (no GE)'}"
            results[key] = {
                "editor": name, "generation": gen, "records": int(df["known"].sum()),
                "edit_seconds_per_record": float(df["edit_seconds"].mean()),
                "eval_seconds_per_record": float(df["eval_seconds"].mean()),
            }
            r = results[key]
            r["eval_over_edit"] = (r["eval_seconds_per_record"] / r["edit_seconds_per_record"]
                                   if r["edit_seconds_per_record"] > 1e-3 else None)
            print(f"{key:28s} edit {r['edit_seconds_per_record']:7.2f} s  eval "
                  f"{r['eval_seconds_per_record']:6.2f} s")
            _write(path, model, known, results, complete=False)  # partial results survive a kill
    _write(path, model, known, results, complete=True)
    print(f"wrote {path}")


def _write(path, model, known, results, complete):
    out = {
        "benchmark": "evaluation", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "cpu": cpu_info(), "load_average": list(os.getloadavg())},
        "model": model.name, "n_records": len(known),
        "settings": {"n_neighbours": 10, "n_generation": 1, "max_new_tokens": 30},
        "complete": complete, "results": results,
        "note": "timings on a shared 2-core CPU; load from other jobs inflates them",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
