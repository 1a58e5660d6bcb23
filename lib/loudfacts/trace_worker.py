"""One worker process of `averages.average_effects(..., workers=n)`: `python -m
loudfacts.trace_worker` traces every n-th (fact, kind) item of a job file and appends its
records to the one records file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loudfacts.jsonlines import append_line
from loudfacts.averages import average_record, average_settings, averages_file_key, average_record_key
from loudfacts.tracing import trace, weights_fingerprint


def _worker_main(argv=None) -> int:
    """Worker of `average_effects(..., workers=n)`: trace every n-th item of a job file."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m loudfacts.trace_worker")
    ap.add_argument("--model", required=True)
    ap.add_argument("--todo", required=True, type=Path)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--noise", type=float, required=True)
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--first-token", action="store_true")
    ap.add_argument("--occurrence", type=int, default=None)
    ap.add_argument("--key", required=True, help="cache key the parent computed")
    ap.add_argument("--out", required=True, type=Path, help="the per-fact records file")
    ap.add_argument("--part", required=True, help="i/n: this worker takes items i, i+n, ...")
    args = ap.parse_args(argv)
    i, n = (int(x) for x in args.part.split("/"))
    torch.set_num_threads(1)
    from loudfacts.models import load_model

    model = load_model(args.model)
    settings = average_settings(model, args.samples, args.noise, args.window, args.seed,
                                 args.first_token, args.occurrence)
    weights = weights_fingerprint(model)
    if averages_file_key(settings, weights) != args.key:
        print(f"worker {i}/{n}: {args.model} loads with other weights or settings than the "
              "caller's model (cache key differs); refusing to trace", flush=True)
        return 2
    items = json.loads(args.todo.read_text())[i::n]
    for k, item in enumerate(items, 1):
        t0 = time.perf_counter()
        content = item["fact"]
        if average_record_key(content, item["kind"], settings, weights) != item["key"]:
            print(f"worker {i}/{n}: item {item['id']} has a key that does not match its "
                  "content; skipped", flush=True)
            continue
        res = trace(model, content["prompt"], content["subject"], kind=item["kind"],
                    target=content["target"], samples=args.samples, noise=args.noise,
                    window=args.window, seed=args.seed, cache=False,
                    occurrence=args.occurrence, first_token=args.first_token)
        rec = average_record(res, content, item["id"], item["kind"], item["key"])
        append_line(args.out, rec)  # every worker appends to the one file, under its lock
        print(f"[trace worker {i}/{n}] {k}/{len(items)} {content['subject']!r} {item['kind']}: "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_worker_main())
