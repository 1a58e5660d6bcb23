"""ROME: seconds per edit (k*, v*, update) and key-statistics throughput vs plain forwards.

Run: `python bench/bench_rome.py [N_COUNTERFACT]` (default 8, embedded model). Writes
bench/results/rome.json. Statistics for the editor's token count are collected (and cached)
before the edits are timed, so "stats" is ~0 in the per-edit numbers. Throughputs are measured
in the same run on the same batches (16 windows x 128 tokens): a plain full forward, and the
statistics pass (`loudfacts.stats`, which stops after the edit layer and accumulates XᵀX).

Edits timed: the three landmark requests of the seed report, then the first N CounterFact
records the model knows (their v* often runs all 20 steps without reaching the early stop, so
they cost more), each three ways, interleaved in one run so the ratios are measured under the
same load: with the model's hparams (for SmolLM2: v* under bfloat16 autocast over the bare
prompt and 5 of the 10 prefixes, `suffix_only` steps that rerun only the subject's last token
onwards); with ROME's own v* settings ("reference_": float32, all prefixes; suffix steps still
on); and with every position rerun ("all_positions_", the model's hparams otherwise). The
components memo is cleared before every edit.
Targets on a 2-core CPU: <= 5 s per edit; statistics >= 50% of forward throughput.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

import torch

from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.rome import clear_components_memo
from loudfacts.models import load_model
from loudfacts.paths import repo_path
from loudfacts.stats import corpus_tokens, second_moment

REQUESTS = [
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"),
    EditRequest("{} is located in the city of", "The Space Needle", "London", "Seattle"),
]


@torch.no_grad()
def forward_throughput(model, tokens, n_batches=3, seq_len=128, per_batch=16):
    ids = tokens[: n_batches * per_batch * seq_len].view(n_batches, per_batch, seq_len)
    model.bridge(ids[0, :2])  # warm-up
    t = time.perf_counter()
    for b in ids:
        model.bridge(b)
    return ids.numel() / (time.perf_counter() - t)


def main(n_cf: int = 8):
    torch.manual_seed(0)
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    editor = get_editor("rome", model)
    layer = editor.layer
    tokens, _ = corpus_tokens(model)
    n_stats = 3 * 16 * 128
    fwd = forward_throughput(model, tokens)
    t = time.perf_counter()
    second_moment(model, [layer], n_tokens=n_stats, use_cache=False, progress=False)
    stats_tps = n_stats / (time.perf_counter() - t)
    fwd2 = forward_throughput(model, tokens)  # again: the machine is shared, bracket the stats
    fwd_tps = (fwd + fwd2) / 2
    print(f"forward {fwd_tps:.0f} tok/s, statistics {stats_tps:.0f} tok/s "
          f"({stats_tps / fwd_tps:.0%})")
    editor.second_moment()  # fill the cache for the editor's token count (not timed per edit)
    editor.context_templates()
    full_editor = get_editor("rome", model, suffix_only=False)
    reference_editor = get_editor("rome", model, v_autocast=None, v_n_prefixes=None)
    from loudfacts.data import load_counterfact
    from loudfacts.scoring import target_probs

    recs = load_counterfact("edit-1k", n=60)
    texts = [r.text for r in recs]
    p_true = target_probs(model, texts, [r.target_true for r in recs])
    p_new = target_probs(model, texts, [r.target_new for r in recs])
    cf = [EditRequest.from_record(r) for r, a, b in zip(recs, p_true, p_new) if a > b][:n_cf]
    edits = []
    for group, reqs in (("landmarks", REQUESTS), ("counterfact", cf)):
        for req in reqs:
            row = {"group": group, "request": req.text + " -> " + req.target_new}
            for label, ed in (("", editor), ("reference_", reference_editor),
                              ("all_positions_", full_editor)):
                clear_components_memo()
                t = time.perf_counter()
                e = ed.edit(req)
                total = time.perf_counter() - t
                tm = e.info["timings"]
                row.update({f"{label}total": total, f"{label}k": tm["k"], f"{label}v": tm["v"],
                            f"{label}update": tm["update"], f"{label}stats": tm["stats"],
                            f"{label}v_steps": e.info["v_steps"]})
                if not label:
                    row["dw_rel_norm"] = e.info["dw_rel_norm"]
                    delta = e.info["components"]["delta"]
                elif label == "reference_":
                    row["delta_cosine_to_reference"] = float(torch.nn.functional.cosine_similarity(
                        delta, e.info["components"]["delta"], dim=0))
            edits.append(row)
            print(f"{group:12s} {req.subject[:24]:24s} total {row['total']:5.1f} s "
                  f"(reference {row['reference_total']:5.1f} s, all positions "
                  f"{row['all_positions_total']:5.1f} s)  k* {row['k']:.2f}  "
                  f"v* {row['v']:.2f} ({row['v_steps']} steps)  update {row['update']:.3f}")
    def mean(key, group=None):
        rows = [e for e in edits if group is None or e["group"] == group]
        return sum(e[key] for e in rows) / len(rows)

    per_group = {
        g: {"n": sum(e["group"] == g for e in edits), "total": mean("total", g),
            "k": mean("k", g), "v": mean("v", g), "update": mean("update", g),
            "v_steps": mean("v_steps", g), "reference_total": mean("reference_total", g),
            "all_positions_total": mean("all_positions_total", g),
            "speedup_over_reference_v": mean("reference_v", g) / mean("v", g),
            "speedup_of_suffix_steps": mean("all_positions_v", g) / mean("v", g),
            "delta_cosine_to_reference_min": min(e["delta_cosine_to_reference"] for e in edits
                                                 if e["group"] == g)}
        for g in ("landmarks", "counterfact")
    }
    out = {
        "benchmark": "rome",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "loadavg": os.getloadavg()},
        "model": model.name,
        "layer": layer,
        "hparams": {k: v for k, v in editor.hparams.items()},
        "statistics": {"tokens_timed": n_stats, "stats_tokens_per_s": stats_tps,
                       "forward_tokens_per_s": fwd_tps, "ratio": stats_tps / fwd_tps,
                       "target_ratio": 0.5, "meets_target": stats_tps / fwd_tps >= 0.5},
        "edits": edits,
        "seconds_per_edit": {"total": mean("total"), "k": mean("k"), "v": mean("v"),
                             "update": mean("update"), "target": 5.0,
                             "meets_target": mean("total") <= 5.0, "by_group": per_group},
    }
    path = repo_path("bench", "results", "rome.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
