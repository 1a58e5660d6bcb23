"""Run the evaluation runner's shards as jobs, then merge them: local processes or a Slurm job
array, both through submitit.

    python -m loudfacts.evaluate --editors unedited,rome --split edit-1k --n all \\
        --store results --launcher slurm --shards 40 --slurm-partition gpu --slurm-gpus 1

Each job runs `python -m loudfacts.evaluate` with the same arguments and `--shard i/n`, and
writes its own file per editor (`<staging>/<editor>-...-shard{i}ofN.jsonl`; staging defaults
to `<store or out-dir>/.shards/`, ignored by git), so jobs never share a file on a cluster
file system. When every job has finished, the shard files are merged: into the study's file
per editor (`--store`: rows already there are kept, new ones added, a row that differs from the
one there is an error) or into one unsharded file per editor (`--out-dir`). Resubmitting the
same command resumes: each shard reuses the rows its file already holds.

`--launcher local` runs the same jobs as local processes (submitit's LocalExecutor), which is
what the tests use; `--launcher slurm` submits a job array (submitit's SlurmExecutor through
AutoExecutor), with the partition, GPUs, CPUs, memory and time limit from the `--slurm-*`
options.
"""

from __future__ import annotations

from pathlib import Path

LAUNCHERS = ("local", "slurm")
# runner options the launcher consumes or replaces in each job's arguments: name -> has a value
_LAUNCH_OPTS = {"--launcher": True, "--shards": True, "--staging": True, "--store": True,
                "--out-dir": True, "--slurm-partition": True, "--slurm-gpus": True,
                "--slurm-cpus": True, "--slurm-mem-gb": True, "--slurm-time-min": True,
                "--shard": True}


class LaunchError(RuntimeError):
    """A shard job failed, or the shards could not be merged."""


def strip_options(argv, opts=None) -> list[str]:
    """`argv` without the options in `opts` ({name: takes a value}), in `--opt v` or
    `--opt=v` form."""
    opts = _LAUNCH_OPTS if opts is None else opts
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in opts:
            skip = opts[name] and "=" not in tok
            continue
        out.append(tok)
    return out


def _job(argv: list[str], merged_root: tuple[str, str]) -> dict:
    """One shard: the runner in this process (what each submitit job executes). Returns
    {editor: the shard's file, "@editor": the file it is merged into}."""
    from loudfacts.evaluate import parse_args, run_editors

    return run_editors(parse_args(argv), merged_root)


def executor(launcher: str, folder: Path, *, partition: str | None = None, gpus: int = 0,
             cpus: int = 1, mem_gb: int | None = None, time_min: int = 240):
    """A submitit executor: LocalExecutor for "local", a Slurm job array for "slurm"."""
    import submitit

    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} must be one of {LAUNCHERS}")
    if launcher == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=time_min)
        return ex
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = {"timeout_min": time_min, "cpus_per_task": cpus, "name": "loudfacts-evaluate"}
    if partition:
        params["slurm_partition"] = partition
    if gpus:
        params["gpus_per_node"] = gpus
    if mem_gb:
        params["mem_gb"] = mem_gb
    ex.update_parameters(**params)
    return ex


def run_shards(ex, base_argv: list[str], shards: int, staging: Path,
               merged_root: tuple[str, str]) -> list[dict]:
    """Submit one job per shard (a job array) and wait for all of them.

    Returns:
        per shard, what `loudfacts.evaluate.run_editors` returned: {editor: its file, ...}.

    Raises:
        LaunchError: a job failed (its shard and submitit's message, with the log folder).
    """
    staging.mkdir(parents=True, exist_ok=True)
    argvs = [base_argv + ["--out-dir", str(staging), "--shard", f"{i}/{shards}"]
             for i in range(shards)]
    jobs = ex.map_array(_job, argvs, [merged_root] * shards)
    failed, written = [], []
    for i, job in enumerate(jobs):
        try:
            written.append(job.result())
        except Exception as e:  # noqa: BLE001 - reported with the shard, then raised
            failed.append(f"shard {i}/{shards} (job {job.job_id}): {str(e).strip()[-400:]}")
    if failed:
        raise LaunchError(f"{len(failed)} of {shards} shard jobs failed (logs in "
                          f"{ex.folder}):\n" + "\n".join(failed))
    return written


def merge_into(target: Path, shard_files: list[Path]) -> tuple[int, int]:
    """Merge shard files into `target` (created when missing): rows already in `target` are
    kept, the shards' other rows added, all under one run's settings.

    Returns:
        (rows kept, rows added).

    Raises:
        ResultsFileError: the shards or `target` were made under other settings, or a case id
            has different rows in `target` and in a shard.
    """
    from loudfacts.runner import (
        ResultsFileError,
        case_key,
        read_results_file,
        settings_diff,
        merge_rows,
        write_results,
    )

    runs, rows = merge_rows(shard_files)
    if target.exists():
        old = read_results_file(target)
        if old.torn_at is not None:
            raise ResultsFileError(f"{target}: its last line is torn (an interrupted write): "
                                   "resume the run that wrote it before merging into it")
        if set(old.runs) != set(runs):
            diffs = []
            for a in old.runs.values():
                for b in runs.values():
                    diffs = settings_diff(a, b) or diffs
            raise ResultsFileError(
                f"{target} holds rows made under other settings than the shards' "
                f"({'; '.join(diffs) or 'other runs'}); merge into another file, or delete it")
        have = {r["case_id"]: r for r in old.rows}
    else:
        have = {}
    added = []
    for r in rows:
        if r["case_id"] in have:
            if have[r["case_id"]]["settings_digest"] != r["settings_digest"]:
                raise ResultsFileError(
                    f"{target}: case id {r['case_id']!r} has a row made from other contents "
                    "than the shards' row (settings_digest differs); delete one of them")
            continue
        added.append(r)
    merged = sorted(list(have.values()) + added, key=lambda r: case_key(r["case_id"]))
    write_results(target, runs, merged)
    return len(have), len(added)
