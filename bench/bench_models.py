"""Model loading times: tiny test models (target < 1 s each) and the embedded model, first
load (GGUF dequantisation) vs later loads (float32 copy from the cache).

    python bench/bench_models.py      -> bench/results/models.json
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from loudfacts.models import load_model, tiny_model

OUT = Path(__file__).resolve().parent / "results" / "models.json"


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> dict:
    tiny_model("llama")  # the shared tokenizer is trained once per process
    tiny = {}
    for family in ("llama", "gpt2", "gptj", "neox"):
        tiny[family] = round(min(timed(partial(tiny_model, family))[1] for _ in range(3)), 3)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LOUDFACTS_CACHE"] = cache
        _, cold = timed(load_model)          # GGUF -> float32, then written to the cache
        _, warm = timed(load_model)          # from the float32 copy
        del os.environ["LOUDFACTS_CACHE"]
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "tiny_model_seconds": tiny,
        "tiny_target_seconds": 1.0,
        "tiny_all_under_target": all(v < 1.0 for v in tiny.values()),
        "embedded_first_load_seconds": round(cold, 1),
        "embedded_cached_load_seconds": round(warm, 1),
        "cached_speedup": round(cold / warm, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
