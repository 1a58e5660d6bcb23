"""The evaluation runner: records through an editor into JSONL rows, with resume, shards, merge
and the study's committed files.

Every edit is scored against the *unedited* model (never against an earlier edit): the edit is
computed, put in place with `edit.applied()`, probed, and undone. The unedited model's numbers
for a record are computed once and cached (keyed by the weights' digest), so evaluating seven
editors on the same records pays for the baseline once.

Records the unedited model does not know (P(true) <= P(new) on the rewrite prompt) are not
edited; they keep a row with `known=False` and empty metrics and are counted (printed, and in
`df.attrs["n_unknown"]`). That is the default population, `population="known"`. ROME and
Specificity+ used no such filter: `population="unknown"` edits only the records the unedited
model does *not* know (the known ones keep a row with empty metrics), and `population="all"`
edits every record. The study keeps the unknown records' rows in a file of their own
(`store_path(..., population="unknown")`), so that the all-records population is the known
store's known rows plus the unknown store's unknown rows (`all_records`), and no known record is
edited twice. A known record that an editor cannot edit (an `EditError`, e.g. no
donor subject for patch-donor) keeps a row with the error in `edit_error` and empty metrics,
and is counted (`df.attrs["n_edit_failed"]`, the headline's "failed edits"). `summarize` uses
known rows only; its `n` per metric leaves out failed edits.

The study (`study`, notebook 06) keeps its rows as data committed with the code, one file per
model, split and editor (`store_path`: `results/<model>/<split>/<editor>.jsonl`); each row also
names the commit and the machine that made it.

Runner: `evaluate(..., out="results/rome.jsonl")` appends one JSON line per record as soon as it
is done; a rerun skips case ids already in the file, so an interrupted run resumes. Records are
split deterministically into shards by case id (`shard_records`), the neighbourhood pool always
comes from all records, and `merge` joins shard files into the unsharded table.

A results file is trusted only as far as it can prove what made it. Its first line is a header
(`{"loudfacts_results": 1, "runs": {run_key: settings}}`) holding the settings of the run
(`run_settings`: model name and weights fingerprint, editor and its full hparams,
`METRICS_VERSION`, n_neighbours, generation settings, seed; not the batch size, which does not
change results), and every row carries its `run_key` and a `settings_digest`: the sha256 of the
run key, the record's content, the neighbourhood prompts it was scored on and whether it got GE.
A resume reuses a row only when its digest is the one this run would write; otherwise it stops
with an error naming the file and what differs. A file without the header, with a line that is
not a row of ours, or with a case id twice is refused and left untouched; only a torn last line
of an interrupted run of ours (every other line valid) is dropped before appending.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loudfacts.atomic import atomic_path
from loudfacts.digests import canonical_json, digest, digest_file, weights_fingerprint
from loudfacts.editing.base import EditError, Editor, EditRequest, get_editor
from loudfacts.jsonlines import append_line, locked
from loudfacts.cases import Case, score
from loudfacts.metrics import COLUMNS, METRICS, METRICS_VERSION, record_metrics
from loudfacts.probes import (NEIGHBOUR_TOP_UPS, UNEDITED, build_neighbourhoods,
                              generation_entropy, generation_prompts_for)

# -- sharding, resume, merge ------------------------------------------------------------------
def parse_shard(shard) -> tuple[int, int] | None:
    """"i/n" or (i, n) -> (i, n) with 0 <= i < n; None stays None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard {shard!r} must look like 'i/n', e.g. '0/4'") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def _shard_of(case_id, n: int) -> int:
    try:
        return int(case_id) % n
    except (TypeError, ValueError):
        return zlib.crc32(str(case_id).encode()) % n


def shard_records(records, shard) -> list:
    """Records whose case id falls in shard i of n (case_id mod n; crc32 for non-integer ids).

    Depends only on each record's case id, so shards are disjoint, cover every record, and do
    not change when the record list is reordered.
    """
    s = parse_shard(shard)
    if s is None:
        return list(records)
    i, n = s
    return [r for r in records if _shard_of(r.case_id, n) == i]


# -- results files: settings, digests, validation, resume, merge ---------------------------
class ResultsFileError(ValueError):
    """A results file that cannot be read, resumed or merged; the message names the file."""


RESULTS_FORMAT = 1  # version of the header line of a results file
_HEADER = "loudfacts_results"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


def run_settings(model, editor, *, n_neighbours: int = 10, generation: bool = True,
                 n_generation: int = 1, max_new_tokens: int = 30,
                 generation_records: int | None = None, seed: int | None = 0,
                 pool: str = "records", top_up: str = "none",
                 population: str = "known") -> dict:
    """Everything besides the record itself that determines an evaluation row.

    Model name and weights fingerprint, editor name and its full hyper-parameters,
    `METRICS_VERSION`, n_neighbours, the generation settings (only those that matter: none
    when generation is off), and the seed. Not the batch size: it changes how prompts are
    grouped into forwards, not the numbers. Returned as canonical JSON data (what the header
    of a results file stores and `run_key` hashes).
    """
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    generation = bool(generation)
    return json.loads(canonical_json({
        "model": model.name,
        "weights": weights_fingerprint(model),
        "editor": editor.name,
        "hparams": editor.hparams,
        "metrics_version": METRICS_VERSION,
        "n_neighbours": int(n_neighbours),
        "generation": generation,
        "n_generation": int(n_generation) if generation else None,
        "max_new_tokens": int(max_new_tokens) if generation else None,
        "generation_records": (int(generation_records)
                               if generation and generation_records is not None else None),
        "seed": seed,
        # where borrowed neighbourhood prompts come from (left out for the evaluated records
        # themselves, so the digests of runs made before this setting existed still hold)
        **({"pool": _check_pool(pool)} if pool != "records" else {}),
        # how neighbourhoods are topped up (`build_neighbourhoods`; left out when not)
        **({"neighbour_top_up": _check_top_up(top_up)} if top_up != "none" else {}),
        # which records are edited (left out for the default, the known ones)
        **({"population": _check_population(population)} if population != "known" else {}),
    }))


NEIGHBOUR_POOLS = ("records", "counterfact")
POPULATIONS = ("known", "unknown", "all")


def _check_population(population) -> str:
    if population not in POPULATIONS:
        raise ValueError(f"population={population!r} must be one of {POPULATIONS}: edit the "
                         "records the unedited model knows (P(true) > P(new) on the rewrite "
                         "prompt), those it does not know, or all of them")
    return population


def _edits(population: str, known: bool) -> bool:
    """Whether a record of this known-ness is edited and scored in this population."""
    return population == "all" or (population == "known") == bool(known)


def _check_pool(pool) -> str:
    if pool not in NEIGHBOUR_POOLS:
        raise ValueError(f"pool={pool!r} must be one of {NEIGHBOUR_POOLS}: the evaluated records "
                         "themselves, or all of CounterFact (loudfacts.data.neighbour_pool)")
    return pool


def _check_top_up(top_up) -> str:
    if top_up not in NEIGHBOUR_TOP_UPS:
        raise ValueError(f"top_up={top_up!r} must be one of {NEIGHBOUR_TOP_UPS} "
                         "(loudfacts.probes.build_neighbourhoods)")
    return top_up


def run_key(settings: dict) -> str:
    """sha256 of the canonical JSON of `run_settings(...)`."""
    return digest(settings)


def record_content(rec) -> dict:
    return rec.to_dict() if hasattr(rec, "to_dict") else dict(vars(rec))


def row_digest(key: str, rec, neighbours, with_generation: bool) -> str:
    """A row's `settings_digest`: sha256 of the run key, the record's own content, the
    neighbourhood prompts it is scored on (they depend on the pool of records) and whether it
    gets GE (which depends on its place among `generation_records`)."""
    return digest({"run": key, "record": record_content(rec),
                    "neighbours": [list(pt) for pt in neighbours],
                    "generation": bool(with_generation)})


def settings_diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += settings_diff(old.get(k, "<absent>"), new.get(k, "<absent>"),
                                  f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: file {old!r}, this run {new!r}"]


@dataclass
class _ResultsFile:
    path: Path
    runs: dict  # run_key -> settings
    rows: list
    torn_at: int | None  # byte offset of a torn last line (an interrupted write), or None


def _not_ours(path, why: str) -> ResultsFileError:
    return ResultsFileError(f"{path} is not a results file written by loudfacts.evaluate "
                            f"({why}); it is left as it is: give another file")


def _row_problem(row, runs: dict) -> str | None:
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in ("case_id", "editor", "model", "run_key", "settings_digest")
               if k not in row]
    if missing:
        return f"no {', '.join(missing)}"
    if row["run_key"] not in runs:
        return f"run_key {str(row['run_key'])[:12]!r} is not in the header"
    s = runs[row["run_key"]]
    if (row["editor"], row["model"]) != (s.get("editor"), s.get("model")):
        return "its editor or model differs from its run's"
    return None


def read_results_file(path) -> _ResultsFile:
    """Parse and validate a whole results file without changing it.

    Raises:
        ResultsFileError: no such file, no header line, a line that is not a row of ours, a
            case id twice (all naming the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"{path}: no such results file")
    raw = path.read_bytes()
    torn_at = None
    if raw and not raw.endswith(b"\n"):
        torn_at = raw.rfind(b"\n") + 1
        raw = raw[:torn_at]
    lines = raw.split(b"\n")[:-1]
    if not lines:
        raise _not_ours(path, "it is empty" if path.stat().st_size == 0
                        else "it has no complete header line")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not (isinstance(header, dict) and header.get(_HEADER) == RESULTS_FORMAT
            and isinstance(header.get("runs"), dict)):
        raise _not_ours(path, "line 1 is not its header")
    runs = header["runs"]
    rows, seen = [], {}
    for i, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _not_ours(path, f"line {i} is not JSON: {e}") from None
        problem = _row_problem(row, runs)
        if problem:
            raise _not_ours(path, f"line {i} is not a result row: {problem}")
        k = (row["editor"], case_key(row["case_id"]))
        if k in seen:
            raise ResultsFileError(
                f"{path}: case id {row['case_id']!r} (editor {row['editor']!r}) appears twice, "
                f"on lines {seen[k]} and {i}; a results file holds one row per record. It is "
                "left as it is: delete it (or the extra line) to go on")
        seen[k] = i
        rows.append(row)
    return _ResultsFile(path, runs, rows, torn_at)


def case_key(case_id):
    """Sort / identity key of a case id: ints before strings, each in their order."""
    return (0, case_id, "") if isinstance(case_id, int) else (1, 0, str(case_id))


def read_results(path) -> list[dict]:
    """Rows of a results .jsonl file written by `evaluate` (or `merge`), after validating it.

    Never changes the file. A torn last line (a run killed mid-write) is left out here and
    dropped by the next `evaluate` on the file before it appends.

    Raises:
        ResultsFileError: no such file, or not a results file of ours (see `evaluate`).
    """
    f = read_results_file(path)
    if f.torn_at is not None:
        print(f"{f.path}: its last line is torn (an interrupted write); not read")
    return f.rows


def _write_new(path: Path, runs: dict, rows=()) -> None:
    """Write a results file (header, then rows) to a temporary file and move it into place."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "w") as f:
        f.write(json.dumps({_HEADER: RESULTS_FORMAT, "written_by": "loudfacts.evaluate",
                            "runs": runs}, sort_keys=True) + "\n")
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")


_locked = locked  # the results files' writers and readers share one lock
_append = append_line


def _create_new(path: Path, runs: dict) -> bool:
    """Create a results file holding only its header, unless `path` exists (another process
    may have just created it: never replace it). True when this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    _write_new(tmp, runs)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def open_for_resume(out: Path, settings: dict, key: str, digests: dict) -> dict:
    """The rows of `out` by case id, after checking they were made under `settings` and that
    the rows of the records to do have the `digests` this run would write; a new file (its
    header) when `out` does not exist. The file is changed only after every check passed."""
    if _create_new(out, {key: settings}):
        return {}
    with open(out, "r+b") as fh, _locked(fh):  # no other writer appends while we read
        return _resume_checked(out, fh, settings, key, digests)


def open_row_store(path: Path, settings: dict, key: str, digests: dict, *, fresh: bool,
                   what: str) -> dict:
    """`open_for_resume` on a rows file kept beside the study's (the ladder's, the
    generations'): deleted first when `fresh` (saying so, as `what`), its folder created."""
    if fresh and path.exists():
        path.unlink()
        print(f"{what}: fresh run: deleted {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_for_resume(path, settings, key, digests)


def _resume_checked(out: Path, fh, settings: dict, key: str, digests: dict) -> dict:
    f = read_results_file(out)
    if set(f.runs) != {key}:
        diffs = []
        for other in f.runs.values():
            diffs = settings_diff(other, settings)
            if diffs:
                break
        same_pair = all((s.get("editor"), s.get("model")) ==
                        (settings["editor"], settings["model"]) for s in f.runs.values())
        raise ResultsFileError(
            f"{out} holds results made under other settings than this run's, so its rows "
            f"cannot be reused: {'; '.join(diffs) or 'it holds several runs (a merged file)'}. "
            + ("" if same_pair else "Use one file per editor and model. ")
            + "Give another out file (`results_path` names one per settings), or delete this "
            "one to recompute (for the committed study rows: `make report FRESH=1`).")
    done = {r["case_id"]: r for r in f.rows}
    stale = [c for c, d in digests.items() if c in done and done[c]["settings_digest"] != d]
    if stale:
        raise ResultsFileError(
            f"{out}: the rows of case ids {stale[:10]}{' ...' if len(stale) > 10 else ''} "
            f"({len(stale)} of {len(digests)}) were computed from other record contents or "
            "neighbourhood prompts than this run's (their settings_digest differs: a changed "
            "records file, or another set of records to borrow neighbours from). Give another "
            "out file, or delete this one to recompute.")
    if f.torn_at is not None:  # every other line is a valid row of ours: safe to cut
        fh.truncate(f.torn_at)
        print(f"{out}: dropped a torn last line (an interrupted write)")
    return done


def to_frame(rows: Iterable[dict]):
    import pandas as pd

    df = pd.DataFrame(list(rows))
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    if len(df):
        df["known"] = df["known"].astype(bool)
    df.attrs["n_unknown"] = int((~df["known"]).sum()) if len(df) else 0
    df.attrs["n_known"] = int(df["known"].sum()) if len(df) else 0
    df.attrs["n_edit_failed"] = int(df["edit_error"].notna().sum()) if len(df) else 0
    return df


def merge_rows(paths) -> tuple[dict, list[dict]]:
    """The rows of several results files (shards), exactly as written, sorted by (editor,
    case_id), and the union of their headers' runs.

    Raises:
        ResultsFileError: a missing or foreign file, a torn last line (resume that shard
            first), a case id in two files, one editor under two settings, or no rows at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ResultsFileError("merge: no results files given")
    runs, rows, where, by_editor, empty = {}, [], {}, {}, []
    for p in paths:
        f = read_results_file(p)
        if f.torn_at is not None:
            raise ResultsFileError(f"{p}: its last line is torn (an interrupted run): rerun "
                                   "that run's command to finish it, then merge")
        if not f.rows:
            empty.append(str(p))
        for r in f.rows:
            k = (r["editor"], case_key(r["case_id"]))
            if k in where:
                raise ResultsFileError(
                    f"merge: case id {r['case_id']!r} of editor {r['editor']!r} is in both "
                    f"{where[k]} and {p}; shard files are disjoint, so merge each shard once")
            where[k] = p
            first = by_editor.setdefault(r["editor"], (r["run_key"], p))
            if first[0] != r["run_key"]:
                diffs = settings_diff(runs[first[0]], f.runs[r["run_key"]])
                raise ResultsFileError(
                    f"merge: editor {r['editor']!r} has rows made under different settings in "
                    f"{first[1]} and {p} ({'; '.join(diffs)}); merge one run's shards only")
            runs[r["run_key"]] = f.runs[r["run_key"]]
            rows.append(r)
    if not rows:
        raise ResultsFileError(f"merge: no result rows in {', '.join(map(str, paths))}")
    if empty:
        print(f"merge: {len(empty)} of {len(paths)} files hold no rows: {', '.join(empty)}")
    rows.sort(key=lambda r: (r["editor"], case_key(r["case_id"])))
    return runs, rows


def write_results(path, runs: dict, rows: list[dict]) -> Path:
    """Write `merge_rows` output as one results file (lossless: floats as Python writes them).

    Refuses to overwrite a file that is not a results file of ours.
    """
    path = Path(path)
    if path.exists():
        read_results_file(path)  # raises for a foreign file: never overwrite it
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, runs, rows)
    return path


def merge(parts) -> pd.DataFrame:  # noqa: F821
    """Join shard results (paths to results files and/or DataFrames) into one table sorted by
    (editor, case_id). The files are validated as in `merge_rows`; a case id in two parts is
    an error, never silently dropped."""
    paths = [p for p in parts if isinstance(p, (str, Path))]
    frames = [p for p in parts if not isinstance(p, (str, Path))]
    rows = merge_rows(paths)[1] if paths else []
    for fr in frames:
        rows += fr.to_dict("records")
    if frames:
        seen = set()
        for r in rows:
            k = (r["editor"], case_key(r["case_id"]))
            if k in seen:
                raise ResultsFileError(f"merge: case id {r['case_id']!r} of editor "
                                       f"{r['editor']!r} is in two of the parts")
            seen.add(k)
        rows.sort(key=lambda r: (r["editor"], case_key(r["case_id"])))
    return to_frame(rows)


@dataclass
class _Plan:
    """What `evaluate` will do: the records, the shard's records to do, their neighbourhoods,
    the run's settings and key, and the digest each row of the shard will carry."""
    records: list
    todo: list
    neighbourhoods: dict
    tiers: dict
    with_ge: set
    settings: dict
    rkey: str
    digests: dict
    n_generation: int
    max_new_tokens: int


def plan_run(model, editor, records, *, n_neighbours, generation, n_generation, max_new_tokens,
          generation_records, pool, top_up, seed, shard, population="known") -> _Plan:
    records = list(records)
    ids: set = set()
    for r in records:
        if r.case_id in ids:
            raise ValueError(f"records hold case id {r.case_id!r} more than once; every record "
                             "needs its own case id (rows and shards are keyed by it)")
        ids.add(r.case_id)
    n_neighbours = _check_int("n_neighbours", n_neighbours, 0)
    n_generation = _check_int("n_generation", n_generation, 0)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    generation_records = _check_int("generation_records", generation_records, 0,
                                    allow_none=True)
    pool_name = "records"
    if pool is None or isinstance(pool, str):
        pool_name = _check_pool("records" if pool is None else pool)
        if pool_name == "counterfact":
            from loudfacts.data import neighbour_pool

            # all of CounterFact first, in its fixed order, then any evaluated record not in
            # it: a record's neighbourhood does not depend on which other records are evaluated
            # (so rows of the first 50 records stay valid when the study grows to 1,000)
            cf = list(neighbour_pool())
            in_cf = {r.case_id for r in cf}
            pool = cf + [r for r in records if r.case_id not in in_cf]
        else:
            pool = records
    pool = list(pool)
    top_up = _check_top_up(top_up)
    tiers: dict = {}
    neighbourhoods = build_neighbourhoods(records, pool, n_neighbours, top_up=top_up,
                                          tiers=tiers)
    todo = shard_records(records, shard)
    with_ge = {r.case_id for r in (records if generation_records is None
                                   else records[:generation_records])}
    settings = run_settings(model, editor, n_neighbours=n_neighbours, generation=generation,
                            n_generation=n_generation, max_new_tokens=max_new_tokens,
                            generation_records=generation_records, seed=seed,
                            pool=pool_name, top_up=top_up, population=population)
    rkey = run_key(settings)
    digests = {r.case_id: row_digest(rkey, r, neighbourhoods[r.case_id],
                                     generation and r.case_id in with_ge) for r in todo}
    return _Plan(records, todo, neighbourhoods, tiers, with_ge, settings, rkey, digests,
                 n_generation, max_new_tokens)


# -- the evaluation loop -----------------------------------------------------------------------
def evaluate(
    model,
    editor,
    records,
    *,
    out=None,
    n_neighbours: int = 10,
    batch_size: int = 32,
    generation: bool = True,
    n_generation: int = 1,
    max_new_tokens: int = 30,
    generation_records: int | None = None,
    pool=None,
    top_up: str = "none",
    shard=None,
    seed: int | None = 0,
    progress: bool | str = True,
    population: str = "known",
):
    """Edit each record's fact, score it against the unedited model, undo it.

    An editor that computes several edits together (`Editor.batches_edits`: FT and FT+L) gets
    the requests of the next `EDIT_BATCH` records it will edit in one `edit_many` call; each
    record's row then counts its share of that call as `edit_seconds`. `batched_edits(False)`
    edits one record at a time instead. A batched edit equals the one-at-a-time edit up to
    float rounding, and the rounding follows the batch: a resumed or sharded run, which
    batches other records together, reproduces such rows to that level (FT's: the golden
    test's 3e-3 bound), not bit for bit.

    Args:
        model: a LoadedModel.
        editor: an `Editor` or an editor name ("rome", "ft", ..., "unedited").
        records: normalised CounterFact records (`loudfacts.data.CounterFactRecord`).
        out: a .jsonl results file: rows are appended as they finish, and a rerun reuses the
            rows already there (resume) when they were made under the same settings (each
            row's `settings_digest` is the one this run would write); the returned table
            holds the file's rows for `records`. See the module docstring for what is refused.
        n_neighbours: neighbourhood prompts per record (own ones first, then borrowed).
        batch_size: forward batch size for scoring.
        generation: compute GE (greedy generations, the slow part); NaN when False.
        n_generation / max_new_tokens: generation prompts per record and their length.
        generation_records: compute GE only for the first this many of `records` (the same
            ones in every shard); None: all. Greedy generation costs several times the rest
            of a record's evaluation on a CPU.
        pool: records to borrow neighbourhood prompts from: a list of records, "records"
            (default: `records` themselves) or "counterfact" (every record of both 10k
            CounterFact splits, `loudfacts.data.neighbour_pool`, as the published runs draw
            from all of CounterFact). A string pool is part of the run's settings.
        top_up: "none" or "object-then-relation": how records with few neighbourhood prompts
            are topped up (`build_neighbourhoods`); part of the run's settings when not "none".
            Rows count the prompts of each extra tier (`n_neighbours_other_template`,
            `n_neighbours_other_object`).
        shard: "i/n" to evaluate only shard i of n (neighbourhoods still come from `pool`).
        seed: each record is evaluated under `torch.manual_seed` of this seed and its case id
            (CPU generator forked, so the caller's random state is untouched), so a resumed
            run gives the rows an uninterrupted one gives; None leaves the generator alone.
        progress: tqdm bar and a printed count of unknown records; a string instead prints
            one line per record starting with it (for worker processes whose output is
            relayed, where a bar would not render).
        population: which records are edited and scored: "known" (default: P(true) > P(new)
            before editing), "unknown" (only the others) or "all" (no filter, as ROME and
            Specificity+). A record outside it keeps a row (its `known`, P(true) and P(new))
            with empty metrics. Part of the run's settings when not "known".

    Returns:
        DataFrame, one row per record (columns `COLUMNS`), attrs n_known / n_unknown.

    Raises:
        ResultsFileError: `out` is not a results file of ours, was made under other settings
            (the message says which differ), or holds rows for other records or neighbourhoods.
        ValueError: `records` repeat a case id, a count is not a valid integer, or
            `population` is not one of `POPULATIONS`.
    """
    from tqdm.auto import tqdm

    population = _check_population(population)
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    if not isinstance(editor, Editor):
        raise TypeError(f"editor must be an Editor or a name, got {type(editor).__name__}")
    plan = plan_run(model, editor, records, n_neighbours=n_neighbours, generation=generation,
                 n_generation=n_generation, max_new_tokens=max_new_tokens,
                 generation_records=generation_records, pool=pool, top_up=top_up, seed=seed,
                 shard=shard, population=population)
    batch_size = _check_int("batch_size", batch_size, 1)
    records, todo, neighbourhoods, tiers = plan.records, plan.todo, plan.neighbourhoods, plan.tiers
    settings, rkey, digests, with_ge = plan.settings, plan.rkey, plan.digests, plan.with_ge
    n_generation, max_new_tokens = plan.n_generation, plan.max_new_tokens
    empty = [r.case_id for r in records if not neighbourhoods[r.case_id]]
    if empty and progress:
        print(f"evaluate: {len(empty)} record(s) have no neighbourhood prompt (NS, NS+ and "
              f"NKL are NaN for them): case ids {empty[:10]}{' ...' if len(empty) > 10 else ''}")
    done: dict = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        done = open_for_resume(out, settings, rkey, digests)
    key = UNEDITED.digest(model)
    rows = []
    lines = progress if isinstance(progress, str) else None
    bar = tqdm(todo, desc=f"evaluate {editor.name}", disable=not progress or lines is not None,
               leave=False)
    # editors that compute several edits together get the next EDIT_BATCH records' at once
    batching = bool(getattr(editor, "batches_edits", False)) and _BATCHING["on"]
    ready: dict = {}  # case id -> its edit (or EditError), computed ahead
    ahead: set = set()
    for i, rec in enumerate(bar, 1):
        if rec.case_id in done:
            rows.append(done[rec.case_id])
            continue
        if batching and rec.case_id not in ahead:
            chunk = [r for r in todo[i - 1:i - 1 + EDIT_BATCH] if r.case_id not in done]
            ready = _edits_ahead(model, editor, chunk, key, batch_size, population)
            ahead.update(r.case_id for r in chunk)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(_record_seed(seed, rec.case_id))
            row = _evaluate_record(model, editor, rec, neighbourhoods[rec.case_id], key,
                                   tiers=tiers[rec.case_id],
                                   batch_size=batch_size,
                                   generation=generation and rec.case_id in with_ge,
                                   n_generation=n_generation, max_new_tokens=max_new_tokens,
                                   population=population, ready=ready.pop(rec.case_id, None))
        row.update(settings_digest=digests[rec.case_id], run_key=rkey, **_provenance(model))
        if out is not None:
            _append(out, row)
        rows.append(row)
        if lines is not None:
            if not _edits(population, row["known"]):
                took = ("known" if row["known"] else "not known") + ": not edited"
            elif row.get("edit_error"):
                took = f"edit failed: {row['edit_error']}"
            else:
                took = f"edit {row['edit_seconds']:.1f} s, eval {row['eval_seconds']:.1f} s"
            print(f"{lines} {editor.name} {i}/{len(todo)} case {rec.case_id}: {took}",
                  flush=True)
    df = to_frame(rows)
    if progress:
        failed = df.attrs["n_edit_failed"]
        n_k, n_u = df.attrs["n_known"], df.attrs["n_unknown"]
        what = {"known": f"{n_k} known records evaluated, {n_u} excluded as not known "
                         "(P(true) <= P(new) unedited)",
                "unknown": f"{n_u} records not known (P(true) <= P(new) unedited) evaluated, "
                           f"{n_k} known ones left to the known population's rows",
                "all": f"{len(df)} records evaluated ({n_k} known, {n_u} not known)"}[population]
        print(f"evaluate({editor.name}): {what}"
              + (f"; the editor could not edit {failed} of them (EditError, "
                 "column edit_error)" if failed else ""))
    return df


def _provenance(model) -> dict:
    """Which code and machine made a row: `commit` (`loudfacts.paths.git_commit`) and
    `machine` (the CPU as `loudfacts.models.cpu_info` names it, or the CUDA device). Not part
    of any digest: the numbers do not depend on them beyond float rounding, the seconds do."""
    from loudfacts.models import cpu_info
    from loudfacts.paths import git_commit

    dev = getattr(model, "device", None)
    if dev is not None and torch.device(dev).type == "cuda":
        machine = torch.cuda.get_device_name(torch.device(dev))
    else:
        cpu = cpu_info()
        machine = f"{cpu['name'] or 'unknown CPU'} ({cpu['capability']})"
    return {"commit": git_commit(), "machine": machine}


EDIT_BATCH = 16  # records looked ahead for an editor that edits several together
_BATCHING = {"on": True}


@contextlib.contextmanager
def batched_edits(enabled: bool):
    """Inside the block, `evaluate` lets an editor with `batches_edits` compute the edits of
    the next `EDIT_BATCH` records together (True, the default) or edits one record at a time
    (False, as before batching; for benchmarks and comparisons)."""
    before, _BATCHING["on"] = _BATCHING["on"], bool(enabled)
    try:
        yield
    finally:
        _BATCHING["on"] = before


def _edits_ahead(model, editor, records, key, batch_size: int, population: str) -> dict:
    """{case id: edit or EditError} for those of `records` this population edits, computed
    together by `editor.edit_many` (each on the unedited model, as `editor.edit` would; the
    caller's random state untouched). Known-ness comes from the unedited model's memoised
    probabilities, which the records' own evaluation then reads again."""
    requests, ids = [], []
    for rec in records:
        request = EditRequest.from_record(rec)
        p_true, p_new = UNEDITED.target_probs(model, key, [request.text] * 2,
                                              [rec.target_true, rec.target_new], batch_size)
        if _edits(population, bool(p_true > p_new)):
            requests.append(request)
            ids.append(rec.case_id)
    if not requests:
        return {}
    with torch.random.fork_rng(devices=[]):
        got = editor.edit_many(requests)
    return dict(zip(ids, got))


def _record_seed(seed: int, case_id) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode())) % (2**63)


def _evaluate_record(model, editor, rec, neighbours, key, *, batch_size, generation,
                     n_generation, max_new_tokens, tiers=(), population="known",
                     ready=None) -> dict:
    request = EditRequest.from_record(rec)
    row = {"case_id": rec.case_id, "subject": rec.subject, "relation": rec.relation,
           "target_true": rec.target_true, "target_new": rec.target_new,
           "editor": editor.name, "model": model.name,
           "n_paraphrases": len(rec.paraphrase_prompts),
           "n_true_paraphrases": len(rec.true_paraphrase_prompts),
           "n_neighbours": len(neighbours),
           "n_neighbours_other_template": sum(t == 2 for t in tiers),
           "n_neighbours_other_object": sum(t == 3 for t in tiers)}
    p_true, p_new = UNEDITED.target_probs(model, key, [request.text] * 2,
                                          [rec.target_true, rec.target_new], batch_size)
    row.update(p_true_pre=p_true, p_new_pre=p_new, known=bool(p_true > p_new))
    if not _edits(population, row["known"]):
        return {**row, **{m: None for m in METRICS}, "edit_seconds": None, "eval_seconds": None,
                "n_generation": 0}
    case = Case.from_counterfact(rec, neighbours=neighbours, ladder=False)
    cfplus = [p.prompt for p in case.of_role("counterfact+")]
    logp_pre = UNEDITED.next_logprobs(model, key, cfplus, batch_size)
    t0 = time.perf_counter()
    try:
        if isinstance(ready, EditError):  # computed ahead with other records' edits
            raise ready
        edit = editor.edit(request) if ready is None else ready
    except EditError as e:  # this editor cannot write this fact: counted, not scored
        return {**row, **{m: None for m in METRICS}, "edit_seconds": None,
                "eval_seconds": None, "n_generation": 0, "edit_error": str(e)}
    # an edit computed ahead with others counts its share of their time (`Editor.edit_many`);
    # plus what a read-back part of the edit took when computed (ROME's k*/v* from its cache)
    took = time.perf_counter() - t0 if ready is None else float(edit.info.get("seconds", 0.0))
    row["edit_seconds"] = took + float(edit.info.get("reused_seconds", 0.0))
    # hook-delta borrows ROME's optimised δ when ROME computed it first (see RomeEditor)
    row["edit_reused"] = bool(edit.info.get("reused", False))
    # optimisation steps the edit ran (ROME's v*, fine-tuning), where the editor has them
    steps = edit.info.get("v_steps", edit.info.get("steps_run"))
    row["edit_steps"] = int(steps) if steps is not None else None
    t0 = time.perf_counter()
    gen_prompts = generation_prompts_for(rec, n_generation) if generation else []
    with edit.applied():
        scores = score(model, case.probes, batch_size, next_token_of=cfplus)
        logp_post = (torch.stack([scores.attrs["next_token"][p] for p in cfplus]) if cfplus
                     else None)
        row.update(record_metrics(scores, logp_pre, logp_post))
        row["GE"], row["generations"] = (generation_entropy(model, gen_prompts, max_new_tokens)
                                         if gen_prompts else (None, []))
    row["n_generation"] = len(gen_prompts)
    row["eval_seconds"] = time.perf_counter() - t0
    return row


def evaluate_in_workers(model, editors, *, split: str, n: int, workers: int = 2,
                        n_neighbours: int = 10, generation: bool = True,
                        generation_records: int | None = None, n_generation: int = 1,
                        max_new_tokens: int = 30, batch_size: int = 32, seed: int = 0,
                        root=None, pool: str = "records") -> dict:
    """`evaluate` for several editors on the first `n` records of `split`, in `workers`
    processes (`python -m loudfacts.evaluate --editors ... --shard i/workers`).

    Each worker loads the model once, takes shard i of the records and evaluates every editor
    on it in the given order (so hook-delta reuses ROME's v* inside the worker), with one
    thread: on a 2-core CPU two one-thread processes edit and score more records per minute
    than one two-thread process, whose small batches do not keep both cores busy. Rows are
    appended to one file per editor and shard (`results_path(...)` with `-shard{i}of{n}`), so a
    rerun resumes. Worker output (one line per record) is relayed as it comes.

    Returns:
        {editor name: merged DataFrame of all shards} (rows sorted by case id).

    Raises:
        loudfacts.workers.WorkerError: a worker failed (its exit status and last lines).
    """
    from loudfacts.workers import run_workers

    names = [e if isinstance(e, str) else e.name for e in editors]
    settings = {"split": split_label(split), "n": n, "n_neighbours": n_neighbours,
                "generation": generation, "generation_records": generation_records,
                "max_new_tokens": max_new_tokens, "n_generation": n_generation, "seed": seed,
                "pool": _check_pool(pool)}
    paths = {name: results_path(model, name, root=root, **settings) for name in names}
    out_dir = next(iter(paths.values())).parent
    args = _worker_args(model, names, split=split, n=n, n_neighbours=n_neighbours,
                        generation=generation, generation_records=generation_records,
                        n_generation=n_generation, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, seed=seed, pool=pool, top_up="none")
    args += ["--out-dir", str(out_dir)]
    run_workers("loudfacts.evaluate", args, workers, part_flag="--shard")
    return {name: merge([shard_path(paths[name], i, workers) for i in range(workers)])
            for name in names}


# -- the study's committed rows ---------------------------------------------------------------
def store_path(model, editor, split: str, root=None, population: str = "known") -> Path:
    """Where the study keeps one editor's rows: `results/<model>/<split>/<editor>.jsonl`, and
    for another population than the known records `results/<model>/<split>/<population>/
    <editor>.jsonl`.

    One file per model, split and editor, whatever the number of records: the file's header
    holds the run's settings (hparams, metric version, neighbourhood and generation settings),
    every row its digest, so a bigger study appends to the same file and a changed setting is
    refused (`study`). `root` defaults to `loudfacts.paths.results_dir()` (`results/`, or
    `$LOUDFACTS_RESULTS`).
    """
    from loudfacts.paths import results_dir

    name = editor if isinstance(editor, str) else editor.name
    parts = (_safe_name_part("model name", model.name.replace("/", "_")),
             _safe_name_part("split", split_label(split)))
    if _check_population(population) != "known":
        parts += (population,)
    root = Path(root).joinpath(*parts) if root else results_dir(*parts)
    return root / f"{_safe_name_part('editor name', name)}.jsonl"


def fresh_requested() -> bool:
    """`LOUDFACTS_FRESH` is set to 1/true/yes (`make report FRESH=1`)."""
    return os.environ.get("LOUDFACTS_FRESH", "").strip().lower() in ("1", "true", "yes")


def study(model, editors, *, split: str, n: int | None, workers: int = 1, root=None,
          fresh: bool | None = None, n_neighbours: int = 10, generation: bool = True,
          generation_records: int | None = None, n_generation: int = 1,
          max_new_tokens: int = 30, batch_size: int = 32, seed: int = 0,
          pool: str = "counterfact", top_up: str = "none", progress: bool = True,
          compute: bool = True, population: str = "known") -> dict:
    """Every editor on the first `n` records of `split`, reusing the committed rows.

    Each editor's rows live in `store_path(...)` (`results/<model>/<split>/<editor>.jsonl`,
    committed to git). Rows already there for these records, made under these settings, are
    reused; only the missing ones are computed and appended as each finishes (in `workers`
    one-thread processes that append to the same file under a lock, or in this process), so an
    interrupted run loses nothing and a fresh clone recomputes nothing it has rows for.

    A file made under other settings (another hparams digest, metric version, neighbourhood
    or generation setting), or holding a row of one of these records made from other
    contents, is never mixed in: the run stops with a `ResultsFileError` naming the file and
    what differs. `fresh=True` (default: `fresh_requested()`, i.e. `make report FRESH=1`)
    deletes these editors' files first and recomputes every row.

    `compute=False` only reads: a record with no row under these settings raises a
    `ResultsFileError` naming the files and the runner command that would compute them
    (a notebook that reads another notebook's rows must not silently start hours of edits).

    `population` ("known", "unknown", "all"; see `evaluate`) picks which records are edited;
    each has its own files (`store_path`). `all_records` joins the known and unknown ones.

    Returns:
        {editor: DataFrame of the rows of these records, in their order}; each frame's attrs
        also hold `path`, `reused` and `computed` (row counts).
    """
    from loudfacts.data import load_counterfact

    fresh = fresh_requested() if fresh is None else bool(fresh)
    if fresh and not compute:
        raise ValueError("study(fresh=True, compute=False): a fresh run deletes the rows it "
                         "would then need to compute; pass fresh=False to read the stored rows")
    records = load_counterfact(split, n=n, verbose=False)
    names = [e if isinstance(e, str) else e.name for e in editors]
    opts = dict(n_neighbours=n_neighbours, generation=generation, n_generation=n_generation,
                max_new_tokens=max_new_tokens, generation_records=generation_records,
                pool=pool, top_up=top_up, seed=seed, population=_check_population(population))
    paths, have = {}, {}
    for name in names:
        path = store_path(model, name, split, root, population)
        if fresh and path.exists():
            path.unlink()
            print(f"study: fresh run: deleted {path}")
        plan = plan_run(model, get_editor(name, model), records, shard=None, **opts)
        if not compute and not path.exists():  # reading only: create nothing
            have[name] = set()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            have[name] = set(open_for_resume(path, plan.settings, plan.rkey, plan.digests))
        paths[name] = path
    missing = {name: sum(r.case_id not in have[name] for r in records) for name in names}
    if progress:
        print(f"study: {len(records)} records of {split}; rows to compute per editor: "
              + ", ".join(f"{k} {v}" for k, v in missing.items()))
    if any(missing.values()) and not compute:
        todo = [name for name in names if missing[name]]
        args = _worker_args(model, todo, split=split, n=n, batch_size=batch_size, **opts)
        raise ResultsFileError(
            f"study(compute=False): {len(records)} records of {split} asked for, but rows are "
            "missing under these settings: " + ", ".join(
                f"{name} {missing[name]} ({paths[name]})" for name in todo)
            + ". Compute them first: python -m loudfacts.evaluate " + " ".join(args)
            + " --store " + str(Path(root) if root else _store_root(paths[todo[0]], population)))
    if any(missing.values()):
        todo = [name for name in names if missing[name]]
        if workers > 1:
            from loudfacts.workers import run_workers

            args = _worker_args(model, todo, split=split, n=n, batch_size=batch_size,
                                **{k: v for k, v in opts.items()})
            args += ["--store", str(Path(root) if root else _store_root(paths[todo[0]],
                                                                          population))]
            run_workers("loudfacts.evaluate", args, workers, part_flag="--shard")
        else:
            for name in todo:
                evaluate(model, name, records, out=paths[name], batch_size=batch_size,
                         progress=progress, **opts)
    out = {}
    order = {r.case_id: i for i, r in enumerate(records)}
    for name in names:
        rows = [r for r in read_results(paths[name]) if r["case_id"] in order]
        rows.sort(key=lambda r: order[r["case_id"]])
        if len(rows) != len(records):
            raise ResultsFileError(f"{paths[name]}: {len(records) - len(rows)} of the "
                                   f"{len(records)} records have no row after the run")
        df = to_frame(rows)
        df.attrs.update(path=str(paths[name]), computed=missing[name],
                        reused=len(records) - missing[name])
        out[name] = df
    return out


def _store_root(path: Path, population: str) -> Path:
    """The --store folder of a study file (`store_path`'s root)."""
    return path.parents[3 if population != "known" else 2]


def all_records(model, editors, *, split: str, n: int, compute: bool = True, **settings):
    """Every editor on the first `n` records of `split` with no known filter (as ROME and
    Specificity+ evaluate): the known records' rows from the study's files, the others' from
    its unknown-population files (`study(population="unknown")`, computed when missing unless
    `compute=False`). One DataFrame, one row per record and editor; `known` keeps its meaning
    (P(true) > P(new) before editing), and every row of an edit that went through has metrics.
    `settings` are the study's own (see `study`); fresh runs go through `study`.

    Raises:
        ResultsFileError: with `compute=False`, a record has no row (the message names the
            command that computes it); or a row is missing after the run.
    """
    import pandas as pd

    known = study(model, editors, split=split, n=n, compute=compute, fresh=False,
                  population="known", **settings)
    unknown = study(model, editors, split=split, n=n, compute=compute, fresh=False,
                    population="unknown", **settings)
    frames = []
    for name in known:
        k, u = known[name], unknown[name]
        if k["case_id"].tolist() != u["case_id"].tolist() or \
                k["known"].tolist() != u["known"].tolist():
            raise ResultsFileError(f"{k.attrs['path']} and {u.attrs['path']} disagree on which "
                                   "records the unedited model knows; recompute one of them")
        # record order kept: each record's row from the file whose population edited it
        frames.append(pd.concat([k[k["known"]], u[~u["known"]]]).sort_index(kind="stable"))
    out = pd.concat(frames, ignore_index=True)
    first = out[out["editor"] == out["editor"].iloc[0]] if len(out) else out
    out.attrs.update(n_records=len(first), n_known=int(first["known"].sum()))
    return out


def variant_path(model, editor: str, overrides: dict, split: str, root=None) -> Path:
    """Where the study keeps the rows of an editor under hyper-parameter overrides:
    `results/<model>/<split>/variants/<editor>/<key>=<value>,....jsonl` (keys sorted; values as
    canonical JSON). The file's header still holds the full hyper-parameters, and a row is
    reused only when its digest matches (`evaluate`)."""
    if not overrides:
        raise ValueError("variant_path: no overrides; the editor's own rows are at store_path")
    base = store_path(model, editor, split, root)
    return base.parent / "variants" / base.stem / f"{variant_tag(overrides)}.jsonl"


def variant_tag(overrides: dict) -> str:
    """`<key>=<value>,...` of hyper-parameter overrides (keys sorted, values as canonical
    JSON), safe as a file name."""
    tag = ",".join(f"{k}={canonical_json(v)}" for k, v in sorted(overrides.items()))
    tag = re.sub(r"[^A-Za-z0-9._+=,-]", "_", tag)
    if ".." in tag or tag.startswith("."):
        raise ValueError(f"overrides {overrides!r} cannot name a results file ({tag!r})")
    return tag


def variant_study(model, editor: str, overrides: dict, *, split: str, n: int, root=None,
                  n_neighbours: int = 10, pool: str = "counterfact", top_up: str = "none",
                  seed: int = 0, batch_size: int = 32, progress: bool = True,
                  compute: bool = True):
    """`editor` with hyper-parameter `overrides` on the first `n` records of `split`, with the
    study's neighbourhoods and without GE, its rows kept in `variant_path(...)` and reused
    (only missing rows are computed, in this process). For run-to-run variation (ROME's random
    context prefixes: `{"prefix_seed": 1}`) and strength sweeps.

    `compute=False` only reads, as `study(compute=False)`: the file's settings and the rows'
    digests are checked as for a run, and a record with no row raises a `ResultsFileError`
    naming the file, how many rows are missing and the command that computes them (a notebook
    that shows another notebook's long runs must not silently start hours of edits).

    Returns:
        DataFrame of the rows of these records, in their order (attrs `path`, `reused`,
        `computed`).
    """
    from loudfacts.data import load_counterfact

    records = load_counterfact(split, n=n, verbose=False)
    path = variant_path(model, editor, overrides, split, root)
    ed = get_editor(editor, model, **overrides)
    opts = dict(n_neighbours=n_neighbours, generation=False, n_generation=1, max_new_tokens=30,
                generation_records=None, pool=pool, top_up=top_up, seed=seed)
    if not compute:
        plan = plan_run(model, ed, records, shard=None, **opts)
        have = (open_for_resume(path, plan.settings, plan.rkey, plan.digests)
                if path.exists() else {})  # reading only: create nothing
        missing = [r.case_id for r in records if r.case_id not in have]
        if missing:
            import shlex

            args = _worker_args(model, [editor], split=split, n=n, batch_size=batch_size, **opts)
            for k, v in sorted(overrides.items()):
                args += ["--set", f"{k}={canonical_json(v)}"]
            args += ["--store", str(path.parents[4])]
            raise ResultsFileError(
                f"variant_study(compute=False): {editor} with {overrides} has no row for "
                f"{len(missing)} of the first {len(records)} records of {split} (first missing: "
                f"case id {missing[0]!r}) in {path}. Compute them first (resumable; add "
                "--shard i/k to run k processes side by side): python -m loudfacts.evaluate "
                + " ".join(shlex.quote(a) for a in args))
        df = to_frame(have[r.case_id] for r in records)
        df.attrs.update(path=str(path), reused=len(records), computed=0)
        return df
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = {r.case_id for r in records}
    had = len({r["case_id"] for r in read_results(path)} & ids) if path.exists() else 0
    df = evaluate(model, ed, records, out=path, batch_size=batch_size, progress=progress, **opts)
    df.attrs.update(path=str(path), reused=had, computed=len(records) - had)
    return df


def read_study(model, editors, *, split: str, n: int, **settings):
    """The stored rows of `editors` on the first `n` records of `split`, as one DataFrame.

    `study(..., fresh=False, compute=False)`: rows are read, never computed, and a missing or
    stale row stops with the runner command that would make it. `settings` are the study's
    own (n_neighbours, generation_records, top_up, pool, seed, ...): they are part of every
    row's settings, so they must be the ones the rows were made with (notebook 06's).
    """
    import pandas as pd

    stored = study(model, editors, split=split, n=n, fresh=False, compute=False,
                   progress=False, **settings)
    return pd.concat(stored.values(), ignore_index=True)


STUDY_EFFECT_METRICS = ("ES", "PS", "PS_para", "NS", "NS+", "NS+cool", "NKL")


def study_effects(model, editors, *, split: str, n: int, metrics=STUDY_EFFECT_METRICS,
                  n_resamples: int = 1000, seed: int = 0, save_as: str | None = None,
                  **settings):
    """Each editor minus the unedited model on the study's stored rows (`read_study`): the
    paired effect on every metric over the known records both scored, with a 95% bootstrap
    interval (`claims.paired_effects_table`). For notebooks whose own cases are a handful of
    illustrations: the same editors on the study's hundreds of records, read, not recomputed.
    `seed` is also the rows' seed (part of their settings). With `save_as` (a figure-table
    name such as "02_study_effects") it prints how many records are known and saves the table
    (`plotting.save_table`)."""
    from loudfacts import claims as cl

    names = ["unedited"] + [e for e in editors if e != "unedited"]
    rows = read_study(model, names, split=split, n=n, seed=seed, **settings)
    table = cl.paired_effects_table(rows, metrics=metrics, n_resamples=n_resamples, seed=seed)
    table.attrs["n_records"] = n
    table.attrs["n_known"] = int(rows.loc[rows["editor"] == "unedited", "known"].sum())
    if save_as:
        from loudfacts.plotting import save_table

        print(f"{table.attrs['n_known']} known of the first {n} records of {split}")
        save_table(table, save_as)
    return table


def study_effects_sentence(table, split: str, metrics=("ES", "PS", "NS", "NS+")) -> str:
    """One sentence of a notebook's findings from a `study_effects` table."""
    parts = "; ".join(f"{e}: " + ", ".join(f"{m} {table.loc[e, 'Δ' + m]}" for m in metrics)
                      for e in table.index)
    return (f" On the study's {int(table['n'].max())} known records of {split} (notebook 06's "
            f"rows; first {table.attrs['n_records']}), edited minus unedited with 95% "
            f"intervals: {parts}.")


def _worker_args(model, names, *, split, n, n_neighbours, generation, generation_records,
                 n_generation, max_new_tokens, batch_size, seed, pool, top_up,
                 population="known") -> list[str]:
    """`python -m loudfacts.evaluate` arguments for these settings (workers add --shard)."""
    args = ["--editors", ",".join(names), "--model", model.name, "--split", str(split),
            "--n", "all" if n is None else str(n), "--n-neighbours", str(n_neighbours),
            "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens),
            "--n-generation", str(n_generation), "--seed", str(seed), "--threads", "1",
            "--pool", pool, "--top-up", top_up]
    if not generation:
        args.append("--no-generation")
    if population != "known":
        args += ["--population", population]
    if generation_records is not None:
        args += ["--generation-records", str(generation_records)]
    return args


def shard_path(path, i: int, n: int) -> Path:
    """The file of shard i of n of a results file: `name-shard{i}of{n}.jsonl`."""
    path = Path(path)
    return path.with_name(f"{path.stem}-shard{i}of{n}{path.suffix}")


def split_label(split) -> str:
    """A file-name-safe label for a records split: the split name, or for a JSON file given by
    path its stem and the digest of its content."""
    from loudfacts.data import COUNTERFACT_SPLITS

    split = str(split)
    if split in COUNTERFACT_SPLITS:
        return split
    path = Path(split)
    if path.is_file():
        stem = re.sub(r"[^A-Za-z0-9._+-]", "_", path.stem).lstrip(".") or "records"
        return f"{stem}-{digest_file(path, 8)}"
    return split


def _safe_name_part(what: str, value: str) -> str:
    value = str(value)
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} cannot be part of a results file name: use letters, "
                         "digits and ._+- only (no path separators, no '..'); for a records "
                         "file given by path use split_label(path)")
    return value


def results_path(model, editor, *, split: str, n: int | None, n_neighbours: int,
                 generation: bool, generation_records: int | None = None,
                 max_new_tokens: int = 30, n_generation: int = 1, seed: int | None = 0,
                 root=None, pool: str = "records", top_up: str = "none",
                 population: str = "known") -> Path:
    """Cache file for `evaluate(out=...)`: one name per model, editor and its hyper-parameters,
    records and settings, so a rerun with the same settings resumes/reuses and any change
    starts a new file. The name reads `{editor}-{split}-n{n}-k{k}-{ge}-{digest}.jsonl`, where the
    digest covers `run_settings(...)` (weights fingerprint, full hparams, metric version,
    generation settings, seed) together with split and n.

    Raises:
        ValueError: `split` (or the editor's name) holds a path separator or '..', or `n` is
            not a positive integer or None.
    """
    from loudfacts.paths import cache_dir

    if isinstance(editor, str):
        editor = get_editor(editor, model)
    split = _safe_name_part("split", split)
    name = _safe_name_part("editor name", editor.name)
    n = _check_int("n", n, 1, allow_none=True)
    settings = run_settings(model, editor, n_neighbours=n_neighbours, generation=generation,
                            n_generation=n_generation, max_new_tokens=max_new_tokens,
                            generation_records=generation_records, seed=seed, pool=pool,
                            top_up=top_up, population=population)
    key = digest({"run": run_key(settings), "split": split, "n": n}, 12)
    ge = "noge" if not generation else (
        ("ge" if generation_records is None else f"ge{int(generation_records)}")
        + f"t{int(max_new_tokens)}")
    stem = f"{name}-{split}-n{'all' if n is None else n}-k{int(n_neighbours)}-{ge}-{key}"
    root = Path(root) if root else cache_dir("evaluation", model.name.replace("/", "_"))
    return root / f"{stem}.jsonl"
