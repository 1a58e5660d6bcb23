"""The machine's own limit, and how close each hot path gets to it, in one run.

    python bench/bench_ceiling.py [--quick] [--out PATH]

Ceiling: a large float32 matmul (2048 x 2048 x 2048, the process's torch threads), in GFLOP/s,
and bf16 where the CPU has native bf16 (`loudfacts.models.cpu_info`). Then, for each hot path,
the FLOPs it actually runs are counted with `torch.utils.flop_counter.FlopCounterMode` (the
matrix products and attention of every forward and backward pass it makes, for the layers and
tokens it really processes; element-wise work is not counted), its wall time is measured in a
separate uncounted run, and the achieved rate is given as a fraction of the ceiling. Below 50%
of the ceiling the benchmark profiles the path and lists its five most expensive operators.

Why a path sits below the ceiling: the same counted run adds up the bytes of every matrix
product's operands and result (`matmul_bytes`: each counted once per call, as if read from
memory every time; a 135M-parameter model's weights do not stay in cache between its
forward passes). Two memory limits are measured in the same run: `memory.read_gb_s`, a sum over a
256 MB tensor (what the memory delivers), and `memory.small_m_gemm`, the rate at which the
matrix library itself reads weights for products with few rows (x @ W^T with W laid out as
torch.nn.Linear keeps it, cycling through 26 blocks' worth of SmolLM2's projection shapes, 364
MB, so nothing stays in cache): the shape of FT's steps (one prompt of about 10 tokens) and of
scoring a few prompts. Each path then gets a roofline time, max(FLOPs / ceiling, bytes /
read rate), `bound` ("compute" or "memory") and `fraction_of_roofline`; and `small_m_s`, the
seconds its matrix bytes alone take at the small-row library rate, which is the floor for a
path whose products all have few rows.

Hot paths: ROME's k* + v* for one request (the reference recipe, SmolLM2 hparams), one FT
step, one FT-L step, scoring one known CounterFact record (the unedited model's probes; runs
before 2026-12-07 18:30 scored the split's first record, which the model does not know, so
they timed only its P(true)-against-P(new) check), one causal-trace grid per fact (MLP kind,
fast and reference paths, 10 noise draws), key statistics over 8k tokens, and notebook 06's
editors on its first 3 records as `bench_record.py` runs them, per known record (`--skip
record` leaves that out). Writes bench/results/ceiling.json (or --out), naming the CPU; a
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


def _matmul_ops() -> set:
    aten = torch.ops.aten
    return {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
            aten.mv.default, aten.addmv.default}


def count_flops_and_bytes(fn) -> tuple[int, int]:
    """FLOPs (`FlopCounterMode`) and the bytes of every matrix product's operands and result,
    each counted once per call, in one run of `fn`."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    ops = _matmul_ops()

    class MatmulBytes(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in ops:
                for t in (*args, out):
                    if isinstance(t, torch.Tensor):
                        MatmulBytes.n += t.numel() * t.element_size()
            return out

    with FlopCounterMode(display=False) as counter, MatmulBytes():
        fn()
    return int(counter.get_total_flops()), MatmulBytes.n


def read_bandwidth(mb: int = 256, reps: int = 5) -> float:
    """GB/s of summing a float32 tensor far larger than the caches (best of `reps`)."""
    x = torch.randn(mb * 2 ** 20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


# SmolLM2-135M's projections, (out, in): fused q/k/v, o, fused gate/up, down
BLOCK_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))


def small_m_gemm(rows=(1, 10, 16, 64, 176), blocks: int = 26, reps: int = 5) -> list[dict]:
    """The matrix library's rate for x @ W^T (W stored (out, in), as torch.nn.Linear keeps it)
    with few rows in x, reading `blocks` blocks' worth of weights in turn (364 MB for 26: more
    than the caches hold, as in a forward pass), in GB/s of weights read and GFLOP/s."""
    weights = [torch.randn(o, i) for _ in range(blocks) for o, i in BLOCK_SHAPES]
    n_bytes = sum(w.numel() * 4 for w in weights)
    out = []
    for m in rows:
        xs = {i: torch.randn(m, i) for _, i in BLOCK_SHAPES}

        def run(xs=xs):
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)

        run()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        flops = sum(2 * m * w.numel() for w in weights)
        out.append({"rows": m, "gb_s": n_bytes / best / 1e9, "gflop_s": flops / best / 1e9})
    return out


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


def roofline(flops: int, n_bytes: int, seconds: float, ceiling: float, memory: dict) -> dict:
    """Roofline time max(FLOPs / ceiling, bytes / read rate), which limit sets it, the share of
    the measured time it is, and the bytes' time at the small-row library rate (`small_m_gemm`
    at 10 rows, the least of the rates measured at few rows)."""
    compute_s = flops / (ceiling * 1e9)
    memory_s = n_bytes / (memory["read_gb_s"] * 1e9)
    small = min(r["gb_s"] for r in memory["small_m_gemm"] if r["rows"] <= 16)
    return {"matmul_bytes": n_bytes, "roofline_s": max(compute_s, memory_s),
            "bound": "compute" if compute_s >= memory_s else "memory",
            "fraction_of_roofline": max(compute_s, memory_s) / seconds,
            "small_m_s": n_bytes / (small * 1e9)}


def measure(name: str, fn, ceiling: float, units: int = 1, unit: str = "call",
            reps: int = 1, profile_below: float = GOAL, warm: bool = True,
            memory: dict | None = None) -> dict:
    if warm:
        fn()  # warm-up (caches, prefixes, statistics)
    flops, n_bytes = count_flops_and_bytes(fn)
    seconds = timed(fn, reps)
    rate = flops / seconds / 1e9
    row = {"path": name, "flops": flops, "seconds": seconds, "units": units, "unit": unit,
           "seconds_per_unit": seconds / units, "gflops_per_unit": flops / units / 1e9,
           "gflop_s": rate, "fraction_of_ceiling": rate / ceiling}
    if memory is not None:
        row.update(roofline(flops, n_bytes, seconds, ceiling, memory))
    if row["fraction_of_ceiling"] < profile_below:
        row["top_ops"] = top_ops(fn)
    print(f"{name:28s} {seconds:7.2f} s  {flops / 1e9:8.1f} GFLOP  {rate:6.1f} GFLOP/s  "
          f"{row['fraction_of_ceiling']:5.0%} of the ceiling")
    if memory is not None:
        print(f"    {n_bytes / 1e9:.2f} GB of matrix operands: {row['bound']}-bound roofline "
              f"{row['roofline_s']:.2f} s ({row['fraction_of_roofline']:.0%} of the time); at "
              f"the small-row library rate {row['small_m_s']:.2f} s")
    for op in row.get("top_ops", []):
        print(f"    {op['op']:40s} {op['share']:5.1%}  ({op['calls']} calls)")
    return row


def measure_record(model, ceiling: float, memory: dict, n: int = 3) -> dict:
    """Notebook 06's editors on its first `n` records, as `bench_record.py` runs them (its
    settings, a fresh scratch folder, ROME's v* computed, not read), per known record."""
    import tempfile

    from bench_record import notebook_settings

    from loudfacts import evaluation as ev

    editors, opts = notebook_settings(n)
    known = {}

    def run():
        clear_components_memo()
        ev.UNEDITED.__init__()
        with tempfile.TemporaryDirectory() as root:
            frames = ev.study(model, editors, workers=1, root=root, **opts)
        known["n"] = int(frames["unedited"]["known"].sum())

    run()  # warm-up, and how many of the records are known
    return measure(f"notebook 06's editors, {n} records", run, ceiling,
                   units=max(known["n"], 1), unit="known record", memory=memory)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer noise draws and tokens")
    ap.add_argument("--skip", nargs="*", default=[], choices=["trace-reference", "trace-fast", "record"],
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
    memory = {"read_gb_s": read_bandwidth(), "small_m_gemm": small_m_gemm()}
    print(f"memory: read {memory['read_gb_s']:.1f} GB/s; x @ W^T reads weights at " + ", ".join(
        f"{r['gb_s']:.1f} GB/s ({r['gflop_s']:.0f} GFLOP/s) with {r['rows']} rows"
        for r in memory["small_m_gemm"]))
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
            "memory": memory,
            "goal_fraction": GOAL,
            "note": "FLOPs are counted by FlopCounterMode (matmuls and attention, forward and "
                    "backward); element-wise work is not counted, so a path dominated by it "
                    "shows a low fraction and its top operators say so. matmul_bytes adds up "
                    "every matrix product's operands and result once per call; roofline_s is "
                    "max(flops / float32 ceiling, matmul_bytes / memory.read_gb_s); small_m_s "
                    "is matmul_bytes at the matrix library's 10-to-16-row rate "
                    "(memory.small_m_gemm), the floor where every product has few rows.",
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

    rows.append(measure("ROME k* + v* (one edit)", rome_v, ceiling, memory=memory))
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
                      unit="step", memory=memory)
        rows.append(row)
        save(rows)

    from loudfacts import evaluation as ev
    from loudfacts.data import load_counterfact

    recs = load_counterfact("edit-1k", n=8)
    unedited = get_editor("unedited", model)
    # a record the model knows: an unknown one is scored only for P(true) against P(new)
    table = ev.evaluate(model, unedited, recs, pool=recs, n_neighbours=5, generation=False,
                        progress=False)
    known_ids = {int(c) for c in table.loc[table["known"].astype(bool), "case_id"]}
    record = next(r for r in recs if r.case_id in known_ids)

    def score_record():
        # the unedited model's probabilities are memoised per process: start empty each time
        ev.UNEDITED.__init__()
        ev.evaluate(model, unedited, [record], pool=recs, n_neighbours=5, generation=False,
                    progress=False)

    rows.append(measure("score one known CounterFact record", score_record, ceiling,
                        memory=memory))
    rows[-1]["case_id"] = record.case_id
    save(rows)

    from loudfacts.tracing import trace

    samples = 3 if args.quick else 10
    for method in [m for m in ("fast", "reference") if f"trace-{m}" not in args.skip]:
        rows.append(measure(f"causal trace ({method}, mlp)", lambda method=method: trace(
            model, "The Colosseum is located in the city of", "Colosseum", kind="mlp",
            samples=samples, window=10, cache=False, method=method), ceiling,
            unit=f"fact, {samples} draws", warm=method == "fast", memory=memory))
        save(rows)

    from loudfacts.stats import second_moment

    n_tok = 2048 if args.quick else 8192
    rows.append(measure("key statistics", lambda: second_moment(
        model, [rome.layer], n_tokens=n_tok, seq_len=1024, use_cache=False, progress=False),
        ceiling, units=n_tok, unit="token", memory=memory))
    save(rows)

    if "record" not in args.skip:
        rows.append(measure_record(model, ceiling, memory))

    save(rows, done=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
