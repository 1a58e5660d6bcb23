"""Benchmark: seconds per fact for a full causal-trace grid, fast path vs ROME's reference loop
vs the PyPI package causal-tracer (1.1.0), on the embedded model and a ~10-token prompt.

    python bench/bench_tracing.py [--samples 10,1] [--kinds hidden,mlp,attn] [--no-causal-tracer]
                                  [--no-flops]

Writes bench/results/tracing.json: per kind, wall and CPU seconds of each implementation, the
speed-up of the fast path over the reference (`speedup_vs_naive`, at the first sample count),
over causal-tracer, and the largest difference between the fast and the reference grids (same
noise). Implementations: `fast` (the default: restored rows run only the positions from the
restored token on, against stored keys/values, all layers of one token in one pass),
`fast_full` (the previous fast path: every restored row runs every position, one pass per
layer), `reference` (ROME's loop), causal-tracer. The second sample count (1) is what the
report's averages use. CPU seconds are the process's CPU time: on a shared machine they are
closer than wall time to what a free machine would take with the same thread count. Ratios are
measured in one run.

The file also names the CPU (`loudfacts.models.cpu_info`) and, unless `--no-flops`, gives the
FLOPs each implementation runs at the first sample count (matrix products and attention,
`FlopCounterMode`, as in bench_ceiling.py) and the machine's float32 matmul ceiling. The ratio of
the reference's FLOPs to the fast path's is the speed-up the fast path would reach at equal
FLOP rates: the target of 10x over the reference is out of reach without fewer FLOPs when that
ratio is below 10.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from loudfacts.models import cpu_info, load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ceiling import count_flops, matmul_ceiling  # noqa: E402  (the same FLOP count and ceiling)
from loudfacts.tracing import noise_scale, trace

PROMPT = "The Colosseum is located in the city of"
SUBJECT = "Colosseum"
OUT = Path(__file__).resolve().parent / "results" / "tracing.json"


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


_PLAIN = {}


def _plain_hf(model):
    """A plain Hugging Face copy of the embedded model (the float32 cache), without the bridge:
    causal-tracer finds layers by module path ("model.layers.0.mlp"), which the bridge renames."""
    if "hf" not in _PLAIN:
        from transformers import AutoModelForCausalLM

        from loudfacts.paths import cache_dir

        copies = sorted(cache_dir("models").glob("smollm2-135m-f32-*"))
        if not copies:
            raise FileNotFoundError("no float32 copy of the embedded model in data/cache/models")
        hf = AutoModelForCausalLM.from_pretrained(copies[-1], dtype=torch.float32).eval()
        _PLAIN["hf"] = hf
    return _PLAIN["hf"]


def _causal_tracer(model, kind, samples, window, noise):
    """The same trace with causal-tracer 1.1.0, run unmodified on a plain HF copy."""
    from causal_tracer import CausalTracer

    tracer = CausalTracer(_plain_hf(model), model.tokenizer, noise=noise, device=model.device)
    ct_kind = {"hidden": "hidden", "mlp": "mlp", "attn": "attention"}[kind]
    return tracer.calculate_hidden_flow(
        PROMPT, subject=SUBJECT, kind=ct_kind, samples=samples,
        window=1 if kind == "hidden" else window,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default="10,1", help="noise draws, comma-separated")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--kinds", default="hidden,mlp,attn")
    ap.add_argument("--no-causal-tracer", action="store_true")
    ap.add_argument("--no-flops", action="store_true",
                    help="skip counting FLOPs (counting reruns each implementation once)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    sample_counts = [int(x) for x in str(args.samples).split(",")]

    model = load_model()
    scale = noise_scale(model)
    n_tok = len(model.encode(PROMPT))
    result = {
        "benchmark": "causal tracing, one fact, full (layer x token) grid",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "cpu": cpu_info(),
        },
        "model": model.name,
        "prompt": PROMPT,
        "subject": SUBJECT,
        "n_tokens": n_tok,
        "n_layers": model.n_layers,
        "samples": sample_counts[0],
        "window": args.window,
        "noise": scale,
        "kinds": {},
        "speedup_vs_naive": {},
        "by_samples": {},
        "notes": (
            "fast = loudfacts.tracing.trace(method='fast'); fast_full = method='fast-full'; "
            "reference = method='reference' "
            "(ROME's loop: one forward of 1 clean + samples corrupted rows per (layer, token)); "
            "causal_tracer = PyPI causal-tracer 1.1.0 CausalTracer.calculate_hidden_flow with the "
            "same noise scale (its own random draws, so its grid agrees only up to sampling "
            "noise). speedup ratios use CPU seconds; wall seconds are also given."
        ),
    }
    if not args.no_flops:
        result["machine"]["float32_matmul_gflop_s"] = matmul_ceiling()
    if not args.no_causal_tracer:
        try:  # load outside the timed region
            _plain_hf(model)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded in the json
            result["causal_tracer_load_error"] = f"{type(exc).__name__}: {exc}"
    for n_samples in sample_counts:
        kw = {"samples": n_samples, "window": args.window, "noise": scale, "cache": False}
        per_kind = {}
        for kind in kinds:
            entry = {}
            fast, fw, fc = _timed(lambda k=kind, kw=kw: trace(model, PROMPT, SUBJECT, kind=k, **kw))
            full, uw, uc = _timed(lambda k=kind, kw=kw: trace(model, PROMPT, SUBJECT, kind=k,
                                                       method="fast-full", **kw))
            ref, rw, rc = _timed(lambda k=kind, kw=kw: trace(model, PROMPT, SUBJECT, kind=k,
                                                      method="reference", **kw))
            entry["fast"] = {"wall_s": fw, "cpu_s": fc}
            entry["fast_full"] = {"wall_s": uw, "cpu_s": uc}
            entry["reference"] = {"wall_s": rw, "cpu_s": rc}
            entry["max_abs_diff_fast_vs_reference"] = float(np.abs(fast.scores - ref.scores).max())
            entry["max_abs_diff_fast_full_vs_reference"] = float(
                np.abs(full.scores - ref.scores).max())
            entry["clean_prob"], entry["corrupt_prob"] = fast.clean_prob, fast.corrupt_prob
            entry["target"] = fast.target
            entry["speedup_vs_naive_cpu"] = rc / fc
            entry["speedup_vs_naive_wall"] = rw / fw
            entry["speedup_of_fast_over_fast_full_cpu"] = uc / fc
            if not args.no_flops and n_samples == sample_counts[0]:
                flops = {m: count_flops(lambda k=kind, kw=kw, m=m: trace(
                    model, PROMPT, SUBJECT, kind=k, method=m, **kw))
                    for m in ("fast", "fast-full", "reference")}
                ceiling = result["machine"]["float32_matmul_gflop_s"]
                for m, (sec, key) in {"fast": (fw, "fast"), "fast-full": (uw, "fast_full"),
                                      "reference": (rw, "reference")}.items():
                    entry[key]["gflop"] = flops[m] / 1e9
                    entry[key]["fraction_of_ceiling_wall"] = flops[m] / sec / 1e9 / ceiling
                entry["flop_ratio_reference_over_fast"] = flops["reference"] / flops["fast"]
            if not args.no_causal_tracer and n_samples == sample_counts[0]:
                try:
                    flow, cw, cc = _timed(lambda k=kind, n=n_samples: _causal_tracer(
                        model, k, n, args.window, scale))
                    ct_scores = flow.scores.numpy().T  # causal-tracer: (tokens, layers)
                    entry["causal_tracer"] = {
                        "version": __import__("causal_tracer").__version__,
                        "wall_s": cw,
                        "cpu_s": cc,
                        "speedup_of_fast_cpu": cc / fc,
                        "answer": flow.answer,
                        "high_score": float(flow.high_score),
                        "low_score": float(flow.low_score),
                        "grid_shape": list(ct_scores.shape),
                        "correlation_with_fast": float(np.corrcoef(
                            ct_scores.ravel(), fast.scores.ravel())[0, 1])
                        if ct_scores.shape == fast.scores.shape else None,
                    }
                except Exception as exc:  # noqa: BLE001 - record, do not hide, why it did not run
                    entry["causal_tracer"] = {"error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()[-2000:]}
            per_kind[kind] = entry
            print(f"samples={n_samples}", kind, json.dumps(entry, indent=1, default=float),
                  flush=True)
        result["by_samples"][str(n_samples)] = per_kind
        if n_samples == sample_counts[0]:
            result["kinds"] = per_kind
            result["speedup_vs_naive"] = {k: e["speedup_vs_naive_cpu"] for k, e in per_kind.items()}

    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
