"""Command line runner for `loudfacts.evaluation.evaluate`.

    python -m loudfacts.evaluate --editor rome --model smollm2-135m --n 200 \
        --out results/rome-smollm2.jsonl [--shard 0/4] [--split edit-1k] [--no-generation]
        [--generation-records K]
    python -m loudfacts.evaluate --merge results/rome-*.jsonl --out results/rome.jsonl
    python -m loudfacts.evaluate --editors unedited,rome,hook-delta --n 200 --shard 0/2 \
        --out-dir results/    # several editors, one file per editor (and shard) in --out-dir

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


def main(argv=None) -> int:
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
    ap.add_argument("--batch-size", type=_count(1), default=32)
    ap.add_argument("--no-generation", action="store_true", help="skip GE (generation is slow)")
    ap.add_argument("--generation-records", type=_count(0), default=None, metavar="K",
                    help="GE only for the first K records (default: all)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSONL",
                    help="merge these shard files into --out instead of evaluating")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.editors:
        if not args.out_dir or args.out or args.merge:
            ap.error("--editors writes one file per editor: give --out-dir (not --out/--merge)")
    elif not args.out:
        ap.error("--out is required (or --editors with --out-dir)")
    if args.shard is not None and not args.merge:
        from loudfacts.evaluation import parse_shard

        try:
            parse_shard(args.shard)
        except ValueError as e:
            ap.error(f"--shard: {e}")

    from loudfacts.data import DataNotFoundError, RecordsFileError
    from loudfacts.evaluation import ResultsFileError

    try:
        return _run_editors(args) if args.editors else _run(args)
    except (ResultsFileError, RecordsFileError, DataNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from loudfacts.evaluation import merge_rows, summarize, to_frame, write_results

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
        from loudfacts.evaluation import evaluate
        from loudfacts.models import load_model

        torch.manual_seed(args.seed)
        model = load_model(args.model)
        records = load_counterfact(args.split, n=args.n)
        if args.threads:
            torch.set_num_threads(args.threads)
        df = evaluate(model, args.editor, records, out=out, shard=args.shard,
                      n_neighbours=args.n_neighbours, batch_size=args.batch_size,
                      generation=not args.no_generation,
                      generation_records=args.generation_records,
                      max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                      seed=args.seed, pool=args.pool)
    summary = summarize(df)
    print(summary.to_string(index=False))
    summary.to_csv(str(out) + ".summary.csv", index=False)
    return 0


def _run_editors(args) -> int:
    """Several editors in one process, in order, each to its own file in --out-dir."""
    import torch

    from loudfacts.data import load_counterfact
    from loudfacts.evaluation import (
        evaluate,
        parse_shard,
        results_path,
        shard_path,
        split_label,
    )
    from loudfacts.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    records = load_counterfact(args.split, n=args.n)
    shard = parse_shard(args.shard)
    tag = f"[shard {shard[0]}/{shard[1]}]" if shard else "[all]"
    for name in args.editors.split(","):
        path = results_path(model, name, split=split_label(args.split), n=args.n,
                            n_neighbours=args.n_neighbours, generation=not args.no_generation,
                            generation_records=args.generation_records,
                            max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                            seed=args.seed, root=args.out_dir, pool=args.pool)
        if shard:
            path = shard_path(path, *shard)
        evaluate(model, name, records, out=path, shard=args.shard,
                 n_neighbours=args.n_neighbours, batch_size=args.batch_size,
                 generation=not args.no_generation, generation_records=args.generation_records,
                 max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                 seed=args.seed, progress=tag, pool=args.pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
