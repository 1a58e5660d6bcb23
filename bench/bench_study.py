"""What the study costs: seconds per record and editor, from the committed rows.

    .venv/bin/python bench/bench_study.py [--results results] [--split edit-1k]

Reads every editor's rows in `results/<model>/<split>/` (notebook 06's study; each row keeps
the seconds its edit and its evaluation took, measured in a one-thread worker process, so they
are CPU-seconds), and the wall time of the last `make report` from `report/run.json`. Writes
`bench/results/study.json`: per editor, the mean edit and evaluation seconds per known record
(evaluation with and without GE apart, since greedy generation dominates it), the CPU-hours of
the rows, and what every editor on all 1,000 records of edit-1k and on all of CounterFact
(21,919 records) would cost on this CPU at these rates. The rows name the machine that made
them where they have the field (`machine`); rows made before it existed do not. Rows come from
several CPU kinds, whose speeds differ by several times, so each editor's seconds are also given
per machine (`by_machine`), with the projection for every machine whose rows cover every editor.
Each variant file (`variants/<editor>/<key>=<value>,....jsonl`: an editor under hyper-parameter
overrides, such as rome-quiet at λ = 4) gets the same rates under `variants`, outside the
projection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from loudfacts.evaluation import read_results  # noqa: E402
from loudfacts.models import cpu_info  # noqa: E402

COUNTERFACT_RECORDS = 21_919


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and np.isnan(x))]
    return float(np.mean(xs)) if xs else None


def _rates(known) -> dict:
    """Mean seconds per known record of these rows (edit, evaluation without and with GE)."""
    ge = [r for r in known if (r.get("n_generation") or 0) > 0]
    no_ge = [r for r in known if not (r.get("n_generation") or 0)]
    return {"known": len(known),
            "edit_s_per_known_record": _mean(r.get("edit_seconds") for r in known),
            "eval_s_per_known_record_without_ge": _mean(r.get("eval_seconds") for r in no_ge),
            "eval_s_per_known_record_with_ge": _mean(r.get("eval_seconds") for r in ge),
            "records_with_ge": len(ge)}


def _file_entry(rows: list[dict]) -> dict:
    """One results file's rates: pooled, per machine, and the CPU-hours of its known rows."""
    known = [r for r in rows if r.get("known")]
    secs = sum(float(r.get("edit_seconds") or 0) + float(r.get("eval_seconds") or 0)
               for r in known)
    by_machine = {}
    for r in known:
        by_machine.setdefault(str(r.get("machine") or "not recorded"), []).append(r)
    reuses = bool(_mean(r.get("edit_reused") for r in known) or 0)
    return {
        "records": len(rows), **_rates(known),
        "reuses_rome_v_star": reuses,
        "cpu_hours_of_these_rows": secs / 3600,
        "machines": sorted({str(r.get("machine")) for r in rows if r.get("machine")}),
        "by_machine": {m: {**_rates(rs), "reuses_rome_v_star": reuses}
                       for m, rs in sorted(by_machine.items())},
    }


def _projection(editors: dict, share: float) -> dict | None:
    """CPU-hours of every editor (evaluation without GE) on edit-1k and all of CounterFact, from
    per-editor rates {name: {edit_s..., eval_s..., reuses_rome_v_star}}; None if any editor has
    no rate."""
    if any(e["edit_s_per_known_record"] is None or e["eval_s_per_known_record_without_ge"] is None
           for e in editors.values()):
        return None
    rome_edit = (editors.get("rome") or {}).get("edit_s_per_known_record") or 0.0

    def own_edit(e):  # an editor that reuses ROME's v* counts its seconds in its rows too
        s = e["edit_s_per_known_record"] or 0.0
        return max(s - rome_edit, 0.0) if e["reuses_rome_v_star"] and "rome" in editors else s

    per_record = sum(own_edit(e) + (e["eval_s_per_known_record_without_ge"] or 0)
                     for e in editors.values()) * share
    return {"edit-1k (1,000 records)": per_record * 1000 / 3600,
            f"all of CounterFact ({COUNTERFACT_RECORDS:,} records)":
                per_record * COUNTERFACT_RECORDS / 3600}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="edit-1k")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "study.json")
    args = ap.parse_args(argv)
    folder = args.results / args.model / args.split
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        print(f"bench_study: no result rows in {folder}", file=sys.stderr)
        return 2
    editors, total_s, known_share = {}, 0.0, []
    for path in files:
        editors[path.stem] = _file_entry(read_results(path))
        known_share.append(editors[path.stem]["known"] / editors[path.stem]["records"])
        total_s += editors[path.stem]["cpu_hours_of_these_rows"] * 3600
    # an editor under hyper-parameter overrides (variants/<editor>/<key>=<value>,....jsonl):
    # its own rates, outside the projection (the study's editors are the report's)
    variants = {f"{p.parent.name}/{p.stem}": _file_entry(read_results(p))
                for p in sorted((folder / "variants").glob("*/*.jsonl"))}
    share = float(np.mean(known_share))
    machines = sorted({m for e in editors.values() for m in e["by_machine"]})
    per_machine = {}
    for m in machines:
        if all(m in e["by_machine"] for e in editors.values()):
            got = _projection({n: e["by_machine"][m] for n, e in editors.items()}, share)
            if got is not None:
                per_machine[m] = got
    run_card = {}
    card_path = ROOT / "report" / "run.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())["card"]
        run_card = {k: card.get(k) for k in ("commit", "date", "cpu", "wall time")}
    out = {
        "benchmark": "study",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_info()},
        "rows": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "note": "Seconds are measured per row in one-thread worker processes (CPU-seconds); "
                "unknown records cost only the unedited check and are not counted. "
                "Projections use the known share of these rows and evaluation without GE; "
                "an editor that reuses ROME's v* (hook-delta) has ROME's seconds in its rows, "
                "and they are counted once (with ROME). The pooled rates mix the machines that "
                "made the rows; by_machine gives each machine's own.",
        "editors": editors,
        "cpu_hours_of_all_rows": total_s / 3600,
        "variants": variants,
        "known_share": share,
        "projection_cpu_hours_every_editor_without_ge": _projection(editors, share),
        "projection_cpu_hours_by_machine": per_machine,
        "last_report_run": run_card,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for name, e in editors.items():
        print(f"{name:14s} {e['known']:4d} known: edit {e['edit_s_per_known_record'] or 0:6.1f} s, "
              f"eval {e['eval_s_per_known_record_without_ge'] or 0:5.1f} s "
              f"(with GE {e['eval_s_per_known_record_with_ge'] or 0:5.1f} s)")
    for name, e in variants.items():
        print(f"{name}: {e['known']} known: edit {e['edit_s_per_known_record'] or 0:.1f} s, "
              f"eval {e['eval_s_per_known_record_without_ge'] or 0:.1f} s, "
              f"{e['cpu_hours_of_these_rows']:.2f} CPU-hours")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
