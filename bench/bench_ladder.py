"""The loud-fact ladder's scoring: one next-token pass per rung against the earlier two scorers.

Run: `python bench/bench_ladder.py [N]` (default N=5 known edit-1k records, embedded model).
Writes bench/results/ladder.json, naming the CPU.

Until stop 36 the ladder scored each editor's edit with four passes over its 5 x 6 texts:
`target_probs` and `next_token_logprobs` before the edit, the same two after it, and the
"before" pair again for every editor. Now `ladder_for_editors` makes the unedited pass once
per record and shares it between editors, and each pass reads P(new) and the top-1 flag off
one next-token distribution (`pair_probs`; a multi-token target adds its teacher-forced pass).
Both routes score the same edits in this one run (ROME's edits, made before any timing), and
the benchmark records the largest difference between their numbers as well as the seconds.
The edits themselves cost the same either way and are not timed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

import torch

from loudfacts import evaluation as ev
from loudfacts.data import load_counterfact
from loudfacts.editing.base import EditRequest, get_editor
from loudfacts.models import load_model
from loudfacts.paths import repo_path
from loudfacts.scoring import next_token_logprobs, target_probs
from loudfacts.tokens import target_ids

N_EDITORS = 8  # notebook 06's editors: the unedited pass is shared by this many


def _two_scorers(model, full, new):
    """The earlier route: P(new) by teacher forcing, top-1 from a second next-token pass."""
    first = target_ids(model, new)[0]
    p = target_probs(model, full, [new] * len(full))
    top = next_token_logprobs(model, full).argmax(-1) == first
    return p, top


def main(n: int = 5):
    torch.manual_seed(0)
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    records = load_counterfact("edit-1k", n=40)
    pre = ev.evaluate(model, "unedited", records, generation=False, progress=False)
    known = [r for r, k in zip(records, pre["known"]) if k][:n]
    rome = get_editor("rome", model)
    edits = [(req, rome.edit(req)) for req in map(EditRequest.from_record, known)]

    old_s = new_s = 0.0
    max_dp, top_mismatch, n_texts = 0.0, 0, 0
    for req, edit in edits:
        full = [t[2] for t in ev.ladder_texts(req, ev.UNRELATED_PROMPTS)]
        n_texts += len(full)
        t = time.perf_counter()
        old_pre = _two_scorers(model, full, req.target_new)
        with edit.applied():
            old_post = _two_scorers(model, full, req.target_new)
        old_s += time.perf_counter() - t
        t = time.perf_counter()
        new_pre = ev.ladder_pass(model, full, req.target_new, 32)
        with edit.applied():
            new_post = ev.ladder_pass(model, full, req.target_new, 32)
        new_s += time.perf_counter() - t
        for (po, to), (pn, tn) in ((old_pre, new_pre), (old_post, new_post)):
            max_dp = max(max_dp, float((po.double() - pn.double()).abs().max()))
            top_mismatch += int((to != tn).sum())
    # per record and editor: the earlier route paid the "before" pair for every editor, the new
    # one pays its single pass once per record, shared by N_EDITORS editors
    old_per = old_s / len(edits)
    one_pass = new_s / len(edits) / 2  # before and after cost one pass each
    new_per = one_pass + one_pass / N_EDITORS
    results = {
        "records": len(edits), "texts_per_record": n_texts / len(edits),
        "seconds_per_record_editor_two_scorers": old_per,
        "seconds_per_record_editor_one_pass_shared_pre": new_per,
        "speedup": old_per / new_per,
        "max_abs_diff_p_new": max_dp, "top1_disagreements": top_mismatch,
    }
    print(json.dumps(results, indent=2))
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {
        "benchmark": "ladder", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                    "torch_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "model": model.name, "n_editors_sharing_pre": N_EDITORS, "results": results,
        "note": ("both routes in one run on the same ROME edits; timings on a shared 2-core CPU; "
                 "the edits' own cost is the same for both and not counted"),
    }
    path = repo_path("bench", "results", "ladder.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
