"""Benchmark: what the patching hooks cost at inference, and what preparing an edit costs.

    python bench/bench_patching.py [--model smollm2-135m] [--repeats 10] [--batch 16]

Writes bench/results/patching.json. Hooked and plain forwards are timed in the same run,
interleaved, on the same right-padded batch (half the rows contain the subject), and reported
as a ratio of medians. Edit preparation is timed once per editor (`Editor.edit`, which includes
the donor search for patch-donor and ROME's k*/v* for hook-delta).
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
from loudfacts.models import cpu_info
from loudfacts.paths import repo_path

REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
PROMPTS = [
    "The Louvre is located in the city of",
    "The Louvre is cool. Barack Obama is from",
    "Where is the Louvre? It is in the country of",
    "The Louvre, the Louvre and the Louvre again",
    "Barack Obama is from",
    "The capital of Japan is",
    "Michael Jordan plays the sport of",
    "The official language of Brazil is",
]


def padded_batch(model, n: int):
    enc = [model.encode(PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    w = max(map(len, enc))
    ids = torch.full((n, w), model.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids.to(model.device), mask.to(model.device)


@torch.no_grad()
def time_forward(model, ids, mask) -> float:
    t0 = time.perf_counter()
    model.hf(ids, attention_mask=mask)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rome-light", action="store_true",
                    help="cheaper ROME settings for hook-delta (fewer prefixes and steps)")
    args = ap.parse_args(argv)

    from loudfacts.models import load_model

    torch.manual_seed(0)
    model = load_model(args.model)
    ids, mask = padded_batch(model, args.batch)
    rome_hp = {"prefix_recipe": [[5, 3]], "v_num_grad_steps": 8} if args.rome_light else {}
    setups = {
        "patch-donor (given donor)": ("patch-donor", {"donor": "The Colosseum"}),
        "patch-donor (donor search)": ("patch-donor", {}),
        "patch-context": ("patch-context", {}),
        "hook-delta": ("hook-delta", {"rome": rome_hp}),
    }
    results = {}
    for label, (name, hp) in setups.items():
        t0 = time.perf_counter()
        edit = get_editor(name, model, **hp).edit(REQ)
        prep = time.perf_counter() - t0
        time_forward(model, ids, mask)  # warm-up
        plain, hooked = [], []
        for _ in range(args.repeats):  # interleaved so drifts in machine load hit both
            plain.append(time_forward(model, ids, mask))
            with edit.applied():
                hooked.append(time_forward(model, ids, mask))
        results[label] = {
            "prepare_seconds": prep,
            "prepare_breakdown": edit.info.get("timings", {}),
            "donor": edit.info.get("donor"),
            "plain_forward_median_s": statistics.median(plain),
            "hooked_forward_median_s": statistics.median(hooked),
            "ratio_hooked_over_plain": statistics.median(hooked) / statistics.median(plain),
        }
        print(f"{label:>28}: prepare {prep:6.2f} s, forward ratio "
              f"{results[label]['ratio_hooked_over_plain']:.3f}")
    out = {
        "benchmark": "patching",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "cpu": cpu_info(), "load_average": list(os.getloadavg())},
        "model": model.name,
        "device": str(model.device),
        "batch": list(ids.shape),
        "repeats": args.repeats,
        "rome_light": args.rome_light,
        "note": "machine shared with other jobs; ratios are from interleaved runs in one process",
        "results": results,
    }
    path = repo_path("bench", "results", "patching.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
