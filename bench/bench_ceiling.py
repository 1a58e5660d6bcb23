"""The machine's own limit, and how close each hot path gets to it, in one run.

    python bench/bench_ceiling.py [--quick] [--out PATH]

Ceiling: a large float32 matmul (2048 x 2048 x 2048, the process's torch threads), in GFLOP/s,
and bf16 where the CPU has native bf16 (`loudfacts.models.cpu_info`). Then, for each hot path,
the FLOPs it actually runs are counted with `torch.utils.flop_counter.FlopCounterMode` (the
matrix products and attention of every forward and backward pass it makes, for the layers and
tokens it really processes; element-wise work is not counted), its wall time is measured in a
separate uncounted run, and the achieved rate is given as a fraction of the ceiling. Below 50%
of the ceiling the benchmark profiles the path and lists its five most expensive operators.

Hot paths: ROME's k* + v* for one request (the reference recipe, SmolLM2 hparams), one FT
step, one FT-L step, scoring one CounterFact record (the unedited model's probes), one
causal-trace grid per fact (MLP kind, fast and reference paths, 10 noise draws), and key
statistics over 8k tokens. Writes bench/results/ceiling.json (or --out), naming the CPU; a
second CPU kind's run goes to its own file (`--out bench/results/ceiling-<kind>.json`), so that
each kind's ratios stay those of one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

# time fresh optimisations: ROME's on-disk components cache off
os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"

from loudfacts.editing import EditRequest, get_editor  # noqa: E402
from loudfacts.editing.rome import clear_components_memo  # noqa: E402
from loudfacts.models import cpu_info, load_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ceiling.json"
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")
GOAL = 0.5


def matmul_ceiling(dtype=torch.float32, n: int = 2048, reps: int = 8) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best / 1e9


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn, reps: int = 1) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def top_ops(fn, k: int = 5) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total, "calls": e.count} for e in rows[:k]]


def measure(name: str, fn, ceiling: float, units: int = 1, unit: str = "call",
            reps: int = 1, profile_below: float = GOAL, warm: bool = True) -> dict:
    if warm:
        fn()  # warm-up (caches, prefixes, statistics)
    flops = count_flops(fn)
    seconds = timed(fn, reps)
    rate = flops / seconds / 1e9
    row = {"path": name, "flops": flops, "seconds": seconds, "units": units, "unit": unit,
           "seconds_per_unit": seconds / units, "gflops_per_unit": flops / units / 1e9,
           "gflop_s": rate, "fraction_of_ceiling": rate / ceiling}
    if row["fraction_of_ceiling"] < profile_below:
        row["top_ops"] = top_ops(fn)
    print(f"{name:28s} {seconds:7.2f} s  {flops / 1e9:8.1f} GFLOP  {rate:6.1f} GFLOP/s  "
          f"{row['fraction_of_ceiling']:5.0%} of the ceiling")
    for op in row.get("top_ops", []):
        print(f"    {op['op']:40s} {op['share']:5.1%}  ({op['calls']} calls)")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer noise draws and tokens")
    ap.add_argument("--skip", nargs="*", default=[], choices=["trace-reference", "trace-fast"],
                    help="leave out these paths (the reference trace takes minutes)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT})")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cpu = cpu_info()
    ceiling = matmul_ceiling()
    ceilings = {"float32_gflop_s": ceiling}
    if cpu["native_bf16"]:
        ceilings["bfloat16_gflop_s"] = matmul_ceiling(torch.bfloat16)
    print(f"CPU {cpu['name']} ({cpu['capability']}), {torch.get_num_threads()} threads: "
          f"float32 matmul ceiling {ceiling:.1f} GFLOP/s")
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    rows = []

    def save(rows, done=False):
        """Write what is measured so far (an interrupted run keeps its rows)."""
        out = {
            "benchmark": "ceiling",
            "complete": done,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "args": {"quick": args.quick, "skip": args.skip},
            "machine": {"platform": platform.platform(), "cpu": cpu,
                        "cpu_count": os.cpu_count(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()},
            "ceiling": ceilings,
            "goal_fraction": GOAL,
            "note": "FLOPs are counted by FlopCounterMode (matmuls and attention, forward and "
                    "backward); element-wise work is not counted, so a path dominated by it "
                    "shows a low fraction and its top operators say so.",
            "paths": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")

    rome = get_editor("rome", model)
    rome.second_moment()
    rome.context_templates()
    steps = {}

    def rome_v():
        clear_components_memo()
        steps["n"] = len(rome.components(REQ)["v_history"])

    rows.append(measure("ROME k* + v* (one edit)", rome_v, ceiling))
    rows[-1]["v_forward_passes"] = steps["n"]
    save(rows)

    for name in ("ft", "ft-l"):
        ed = get_editor(name, model)
        info = {}

        def ft_edit(ed=ed, info=info):
            e = ed.edit(REQ)
            info["steps"] = int(e.info.get("steps_run", 0) or 0)

        ft_edit()
        row = measure(f"{name.upper()} edit", ft_edit, ceiling, units=max(1, info["steps"]),
                      unit="step")
        rows.append(row)
        save(rows)

    from loudfacts import evaluation as ev
    from loudfacts.data import load_counterfact

    recs = load_counterfact("edit-1k", n=8)
    unedited = get_editor("unedited", model)
    def score_record():
        # the unedited model's probabilities are memoised per process: start empty each time
        ev.UNEDITED.__init__()
        ev.evaluate(model, unedited, recs[:1], pool=recs, n_neighbours=5, generation=False,
                    progress=False)

    rows.append(measure("score one CounterFact record", score_record, ceiling))
    save(rows)

    from loudfacts.tracing import trace

    samples = 3 if args.quick else 10
    for method in [m for m in ("fast", "reference") if f"trace-{m}" not in args.skip]:
        rows.append(measure(f"causal trace ({method}, mlp)", lambda method=method: trace(
            model, "The Colosseum is located in the city of", "Colosseum", kind="mlp",
            samples=samples, window=10, cache=False, method=method), ceiling,
            unit=f"fact, {samples} draws", warm=method == "fast"))
        save(rows)

    from loudfacts.stats import second_moment

    n_tok = 2048 if args.quick else 8192
    rows.append(measure("key statistics", lambda: second_moment(
        model, [rome.layer], n_tokens=n_tok, seq_len=1024, use_cache=False, progress=False),
        ceiling, units=n_tok, unit="token"))

    save(rows, done=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
