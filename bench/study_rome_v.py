"""ROME's v* settings on the embedded model: edit quality and speed per setting.

Run: `python bench/study_rome_v.py [N_RECORDS] [SETTING ...]` (defaults: 50 records, every
setting below). Writes bench/results/rome_v.json; per-record rows are appended to
bench/results/rome_v/<setting>.jsonl as they finish, so an interrupted run resumes and a
finished setting is not recomputed.

Each setting edits the same CounterFact records (the report's split, 5 neighbours, no
generation) with the model's ROME hparams plus the overrides below, and reports ES / PS / NS /
NS+ / NS+cool / NKL over the known records, seconds per edit and v* steps. The settings run one
after another, so their seconds are only indicative (bench_rome.py times fp32 against bf16
interleaved, under the same load).

* lr0.5 / lr1 / lr2 — ROME's v_lr (0.5, Adam) was set for GPT-2 XL. Adam moves every
  coordinate of δ by about the learning rate per step, so δ's norm grows by up to
  lr·√d_model per step (12 for SmolLM2's 576 dimensions), while the δ an edit needs scales
  with the residual norm at the edit layer (‖W k*‖ ~40 on SmolLM2's layer 5). Does a larger
  rate reach the target in fewer steps without hurting the edit?
* bf16 — v*'s forward and backward passes under bfloat16 autocast (`v_autocast`), the rest
  in float32: what does mixed precision change in the edits?
* p5 / bf16p5 — v*'s NLL over the bare prompt and 5 of the 10 prefixes (`v_n_prefixes`; k*
  still averages over all 10), as MEMIT's code does with its 5 prefixes; in float32 and in
  bfloat16.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import torch

from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.editing import get_editor
from loudfacts.models import load_model
from loudfacts.paths import repo_path

SETTINGS = {  # each names every override it makes, so the model's file cannot leak in
    "lr0.5": {"v_lr": 0.5, "v_autocast": None, "v_n_prefixes": None},
    "lr1": {"v_lr": 1.0, "v_autocast": None, "v_n_prefixes": None},
    "lr2": {"v_lr": 2.0, "v_autocast": None, "v_n_prefixes": None},
    "bf16": {"v_lr": 0.5, "v_autocast": "bfloat16", "v_n_prefixes": None},
    "p5": {"v_lr": 0.5, "v_autocast": None, "v_n_prefixes": 5},
    "bf16p5": {"v_lr": 0.5, "v_autocast": "bfloat16", "v_n_prefixes": 5},
}
BASELINE = "lr0.5"  # the float32 ROME settings; runs first
METRICS = ["ES", "PS", "NS", "NS+", "NS+cool", "NKL", "edit_seconds", "edit_steps"]


def main(n_records: int = 50, settings=tuple(SETTINGS)):
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    torch.manual_seed(0)
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    records = load_counterfact("edit-1k", n=n_records)
    out_dir = repo_path("bench", "results", "rome_v")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, frames = {}, {}
    for name in settings:
        editor = get_editor("rome", model, **SETTINGS[name])
        df = ev.evaluate(model, editor, records, out=out_dir / f"{name}.jsonl", n_neighbours=5,
                         generation=False, progress=f"[{name}]")
        known = df[df["known"] & df["edit_error"].isna()]
        row = {"overrides": SETTINGS[name], "n_known": int(len(known))}
        for k in METRICS:
            row[k] = float(known[k].astype(float).mean())
        row["share_all_steps"] = float(
            (known["edit_steps"] >= editor.hparams["v_num_grad_steps"]).mean())
        frames[name] = known.set_index("case_id")
        base = frames.get(BASELINE)
        if base is not None and name != BASELINE:  # paired with the float32 lr 0.5 edits
            both = base.index.intersection(frames[name].index)
            row[f"records_changed_vs_{BASELINE}"] = {
                k: int((frames[name].loc[both, k].astype(float)
                        - base.loc[both, k].astype(float)).abs().gt(1e-9).sum())
                for k in ("ES", "PS", "NS", "NS+", "NS+cool")}
        summary[name] = row
        print(name, {k: v for k, v in row.items() if k != "overrides"}, flush=True)
    if BASELINE not in settings:
        print(f"(no paired comparison: {BASELINE} was not among the settings)")
    out = {
        "benchmark": "rome_v",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "loadavg": os.getloadavg()},
        "model": model.name,
        "records": {"split": "edit-1k", "n": n_records, "n_neighbours": 5},
        "settings": summary,
    }
    path = repo_path("bench", "results", "rome_v.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    chosen = tuple(sys.argv[2:]) or tuple(SETTINGS)
    main(n, tuple(sorted(chosen, key=lambda s: s != BASELINE)))  # the baseline first
