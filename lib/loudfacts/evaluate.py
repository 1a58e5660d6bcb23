"""Command line runner for `loudfacts.runner.evaluate`.

    python -m loudfacts.evaluate --editor rome --model smollm2-135m --n 200 \
        --out runs/rome-smollm2.jsonl [--shard 0/4] [--split edit-1k] [--no-generation]
        [--generation-records K]
    python -m loudfacts.evaluate --merge runs/rome-*.jsonl --out runs/rome.jsonl
    python -m loudfacts.evaluate --editors unedited,rome,hook-delta --n 200 --shard 0/2 \
        --out-dir runs/    # several editors, one file per editor (and shard) in --out-dir
    python -m loudfacts.evaluate --editors unedited,rome --n all --pool counterfact \
        --top-up object-then-relation --generation-records 8 --store results --shard 0/2
        # the study's committed files, results/<model>/<split>/<editor>.jsonl (notebook 06)
    python -m loudfacts.evaluate --editors unedited,rome --n all --store results \
        --launcher slurm --shards 40 --slurm-partition gpu --slurm-gpus 1 --device cuda
    python -m loudfacts.evaluate --editors unedited,rome --n all --pool counterfact \
        --top-up object-then-relation --generation-records 8 --store results \
        --population unknown --shard 0/2
        # the records the unedited model does not know, into results/<model>/<split>/unknown/
        # (with the known ones: the all-records population, loudfacts.runner.all_records)
        # one Slurm job per shard (submitit), merged into --store when all finish
        # (--launcher local: the same jobs as local processes; see loudfacts.launch)
    python -m loudfacts.evaluate --editors rome-quiet --set quiet_factor=4.0 --set seed=0 \
        --n 1000 --no-generation --pool counterfact --top-up object-then-relation \
        --store results --shard 0/2
        # an editor under hyper-parameter overrides (--set, JSON values): its variant file,
        # results/<model>/<split>/variants/<editor>/quiet_factor=4.0,seed=0.jsonl, the rows
        # that loudfacts.runner.variant_study reads (notebooks 06 and 07)

Rows are appended to `--out` one record at a time, so rerunning the same command after an
interruption continues where it stopped. A rerun with other settings (another editor, its
hyper-parameters, model weights, --n-neighbours, generation settings, --seed, or other
records) stops with an error naming the file and what differs, instead of reusing rows; so
does a file that was not written by this runner, which is never changed. With `--shard i/n`
each job evaluates the records whose case id is i mod n (the neighbourhood pool is still all
`--n` records, so shard results merge into exactly the unsharded table). `--merge` copies the
rows of the shard files unchanged (full float precision) into `--out`. At the end a summary
with bootstrap 95% CIs on the known records is printed (and written next to `--out` as
`<out>.summary.csv`). Bad input (an empty or unreadable records file, a missing merge input)
exits with status 2 and a message naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "python -m loudfacts.evaluate"


def _n_records(text: str):
    """--n: a positive number of records, or 'all'."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of records") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"{n} is not a positive number of records (use 'all' for every record)")
    return n


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} is below {minimum}")
        return v

    return parse


def _override(text: str) -> tuple[str, object]:
    """--set KEY=VALUE: the key and the value read as JSON (a bare word stays a string)."""
    import json

    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def parse_args(argv):
    """The runner's arguments, checked (exits with status 2 and a message on bad ones)."""
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editor", default="rome", help="editor name (rome, ft, ft-l, patch-donor, "
                    "patch-context, hook-delta, unedited)")
    ap.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    ap.add_argument("--split", default="edit-1k", help="CounterFact split or JSON path")
    ap.add_argument("--n", type=_n_records, default=200,
                    help="first N records of the split (a positive number, or 'all')")
    ap.add_argument("--out", default=None, help="results .jsonl (appended; resumable)")
    ap.add_argument("--editors", default=None,
                    help="comma-separated editors evaluated in this order in one process "
                         "(needs --out-dir)")
    ap.add_argument("--out-dir", default=None,
                    help="folder for one results file per editor (named by its settings)")
    ap.add_argument("--max-new-tokens", type=_count(1), default=30, help="GE generation length")
    ap.add_argument("--n-generation", type=_count(0), default=1, help="GE prompts per record")
    ap.add_argument("--threads", type=_count(1), default=None,
                    help="torch threads (default: torch's)")
    ap.add_argument("--shard", default=None, help="i/n: evaluate shard i of n")
    ap.add_argument("--n-neighbours", type=_count(0), default=10)
    ap.add_argument("--pool", choices=["counterfact", "records"], default="counterfact",
                    help="where borrowed neighbourhood prompts come from: all of CounterFact "
                         "(both 10k splits; default, as the published runs) or the evaluated "
                         "records themselves")
    ap.add_argument("--top-up", choices=["none", "object-then-relation"], default="none",
                    help="top up records with few neighbourhood prompts: same true object "
                         "under another template, then the same template with another true "
                         "object (loudfacts.probes.build_neighbourhoods)")
    ap.add_argument("--population", choices=["known", "unknown", "all"], default="known",
                    help="which records are edited: those the unedited model knows (P(true) > "
                         "P(new); default), those it does not, or all (no filter, as ROME and "
                         "Specificity+); the others keep a row with empty metrics. With "
                         "--store, a population other than known has its own files, "
                         "DIR/<model>/<split>/<population>/<editor>.jsonl")
    ap.add_argument("--store", default=None, metavar="DIR",
                    help="with --editors: append to the study's files "
                         "DIR/<model>/<split>/<editor>.jsonl (e.g. results/), shared by all "
                         "shards under a lock, instead of one file per shard in --out-dir")
    ap.add_argument("--launcher", choices=["local", "slurm"], default=None,
                    help="with --editors and --shards N: run N shard jobs as local processes "
                         "or a Slurm job array (submitit), then merge them into --store or "
                         "--out-dir (loudfacts.launch)")
    ap.add_argument("--shards", type=_count(1), default=None, help="number of shard jobs")
    ap.add_argument("--staging", default=None, metavar="DIR",
                    help="where shard jobs write their files (default <store or out-dir>/.shards)")
    ap.add_argument("--slurm-partition", default=None)
    ap.add_argument("--slurm-gpus", type=_count(0), default=0, help="GPUs per job")
    ap.add_argument("--slurm-cpus", type=_count(1), default=1, help="CPUs per job")
    ap.add_argument("--slurm-mem-gb", type=_count(1), default=None)
    ap.add_argument("--slurm-time-min", type=_count(1), default=240, help="time limit per job")
    ap.add_argument("--device", default=None,
                    help="model device: cpu, cuda, or auto (default: the model's default)")
    ap.add_argument("--batch-size", type=_count(1), default=32)
    ap.add_argument("--no-generation", action="store_true", help="skip GE (generation is slow)")
    ap.add_argument("--generation-records", type=_count(0), default=None, metavar="K",
                    help="GE only for the first K records (default: all)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSONL",
                    help="merge these shard files into --out instead of evaluating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_override,
                    help="an editor hyper-parameter override (the value is read as JSON: 4.0, "
                         "true, [1, 2], else a string); repeatable; needs --editors: with "
                         "--store the rows go to the editors' variant files "
                         "(runner.variant_path), with --out-dir under variants/<key>=<value>,.../")
    args = ap.parse_args(argv)
    args.overrides = {}
    for key, value in args.set:
        if key in args.overrides:
            ap.error(f"--set {key}: given twice")
        args.overrides[key] = value
    if args.overrides and not args.editors:
        ap.error("--set writes an editor's variant files: give --editors (with --store or "
                 "--out-dir)")
    if args.overrides and args.population != "known":
        ap.error("--set: variant files hold the known population only")
    if args.editors:
        if (not args.out_dir) == (not args.store) or args.out or args.merge:
            ap.error("--editors writes one file per editor: give --out-dir or --store "
                     "(one of them, not --out/--merge)")
    elif args.store:
        ap.error("--store needs --editors")
    elif not args.out:
        ap.error("--out is required (or --editors with --out-dir)")
    if (args.launcher is None) != (args.shards is None):
        ap.error("--launcher and --shards go together")
    if args.launcher and (not args.editors or args.shard is not None):
        ap.error("--launcher runs shard jobs of an --editors run: give --editors, not --shard")
    if args.shard is not None and not args.merge:
        from loudfacts.runner import parse_shard

        try:
            parse_shard(args.shard)
        except ValueError as e:
            ap.error(f"--shard: {e}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    from loudfacts.data import DataNotFoundError, RecordsFileError
    from loudfacts.runner import ResultsFileError
    from loudfacts.launch import LaunchError

    try:
        if args.launcher:
            return _launch(args, argv)
        if args.editors:
            run_editors(args)
            return 0
        return _run(args)
    except (ResultsFileError, RecordsFileError, DataNotFoundError, LaunchError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from loudfacts.metrics import summarize
    from loudfacts.runner import merge_rows, to_frame, write_results

    out = Path(args.out)
    if args.merge:
        runs, rows = merge_rows(args.merge)
        write_results(out, runs, rows)
        df = to_frame(rows)
        print(f"merged {len(args.merge)} files -> {out}: {len(df)} rows, "
              f"{df.attrs['n_known']} known, {df.attrs['n_unknown']} not known")
    else:
        import torch

        from loudfacts.data import load_counterfact
        from loudfacts.runner import evaluate
        from loudfacts.models import load_model

        torch.manual_seed(args.seed)
        model = load_model(args.model, **_device(args))
        records = load_counterfact(args.split, n=args.n)
        if args.threads:
            torch.set_num_threads(args.threads)
        df = evaluate(model, args.editor, records, out=out, shard=args.shard,
                      n_neighbours=args.n_neighbours, batch_size=args.batch_size,
                      generation=not args.no_generation,
                      generation_records=args.generation_records,
                      max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                      seed=args.seed, pool=args.pool, top_up=args.top_up,
                      population=args.population)
    summary = summarize(df, population=args.population)
    print(summary.to_string(index=False))
    summary.to_csv(str(out) + ".summary.csv", index=False)
    return 0


def _device(args) -> dict:
    return {"device": args.device} if args.device else {}


def _launch(args, argv) -> int:
    """--launcher: one job per shard writing to the staging folder, then the merge."""
    from loudfacts.launch import executor, merge_into, run_shards, strip_options

    dest = Path(args.store or args.out_dir)
    staging = Path(args.staging) if args.staging else dest / ".shards"
    ex = executor(args.launcher, staging / "logs", partition=args.slurm_partition,
                  gpus=args.slurm_gpus, cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb,
                  time_min=args.slurm_time_min)
    base = strip_options(argv)
    print(f"{PROG}: {args.shards} shard jobs ({args.launcher}), files in {staging}", flush=True)
    # per shard: {editor: its file, "@editor": the file to merge into}
    written = run_shards(ex, base, args.shards, staging,
                         ("store", str(dest)) if args.store else ("out-dir", str(dest)))
    for name in args.editors.split(","):
        parts = [Path(w[name]) for w in written]
        target = Path(written[0]["@" + name])
        kept, added = merge_into(target, parts)
        print(f"{PROG}: {name}: merged {args.shards} shards into {target} ({kept} rows kept, "
              f"{added} added)")
    return 0


def run_editors(args, merged_root=None) -> dict:
    """Several editors in one process, in order, each to its own file in --out-dir (or the
    study's files in --store).

    Returns:
        {editor: the file its rows went to}; with `merged_root` (a launcher's destination:
        --store or --out-dir of the launching command) also {"@" + editor: the file the
        shards are merged into}.
    """
    import torch

    from loudfacts.data import load_counterfact
    from loudfacts.editing.base import get_editor
    from loudfacts.runner import (
        evaluate,
        parse_shard,
        results_path,
        shard_path,
        split_label,
        store_path,
        variant_path,
        variant_tag,
    )
    from loudfacts.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model, **_device(args))
    records = load_counterfact(args.split, n=args.n)
    shard = parse_shard(args.shard)
    tag = f"[shard {shard[0]}/{shard[1]}]" if shard else "[all]"
    written = {}

    def settings_path(name, root):
        """The results file named after this run's settings, under `root`."""
        return results_path(model, name, split=split_label(args.split), n=args.n,
                            n_neighbours=args.n_neighbours, generation=not args.no_generation,
                            generation_records=args.generation_records,
                            max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                            seed=args.seed, root=root, pool=args.pool, top_up=args.top_up,
                            population=args.population)

    overrides = args.overrides

    def stored(name, root):
        """The study's file of `name` under `root`, or its variant file under --set."""
        if overrides:
            return variant_path(model, name, overrides, args.split, root)
        return store_path(model, name, args.split, root, args.population)

    def out_file(name, out_dir):
        """The --out-dir file of `name` (under --set: in `variants/<key>=<value>,.../`)."""
        if overrides:
            out_dir = Path(out_dir) / "variants" / variant_tag(overrides)
        return settings_path(name, out_dir)

    for name in args.editors.split(","):
        try:
            editor = get_editor(name, model, **overrides) if overrides else name
        except ValueError as e:  # an unknown hyper-parameter or a bad value
            raise SystemExit(f"{PROG}: error: --set {overrides}: {e}") from None
        if args.store:  # every shard appends to the study's file (under a lock)
            path = stored(name, args.store)
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = out_file(name, args.out_dir)
            if shard:
                path = shard_path(path, *shard)
        evaluate(model, editor, records, out=path, shard=args.shard,
                 n_neighbours=args.n_neighbours, batch_size=args.batch_size,
                 generation=not args.no_generation, generation_records=args.generation_records,
                 max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                 seed=args.seed, progress=tag, pool=args.pool, top_up=args.top_up,
                 population=args.population)
        written[name] = str(path)
        if merged_root is not None:
            written["@" + name] = str(
                stored(name, merged_root[1]) if merged_root[0] == "store"
                else out_file(name, merged_root[1]))
    return written


if __name__ == "__main__":
    sys.exit(main())
