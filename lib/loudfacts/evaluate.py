"""Command line runner for `loudfacts.evaluation.evaluate`.

    python -m loudfacts.evaluate --editor rome --model smollm2-135m --n 200 \
        --out results/rome-smollm2.jsonl [--shard 0/4] [--split edit-1k] [--no-generation]
        [--generation-records K]
    python -m loudfacts.evaluate --merge results/rome-*.jsonl --out results/rome.jsonl
    python -m loudfacts.evaluate --editors unedited,rome,hook-delta --n 200 --shard 0/2 \
        --out-dir results/    # several editors, one file per editor (and shard) in --out-dir

Rows are appended to `--out` one record at a time, so rerunning the same command after an
interruption continues where it stopped. With `--shard i/n` each job evaluates the records
whose case id is i mod n (the neighbourhood pool is still all `--n` records, so shard results
merge into exactly the unsharded table). At the end a summary with bootstrap 95% CIs on the
known records is printed (and written next to `--out` as `<out>.summary.csv`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loudfacts.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editor", default="rome", help="editor name (rome, ft, ft-l, patch-donor, "
                    "patch-context, hook-delta, unedited)")
    ap.add_argument("--model", default=None, help="model name (default: the embedded smollm2-135m)")
    ap.add_argument("--split", default="edit-1k", help="CounterFact split or JSON path")
    ap.add_argument("--n", type=int, default=200, help="first N records of the split")
    ap.add_argument("--out", default=None, help="results .jsonl (appended; resumable)")
    ap.add_argument("--editors", default=None,
                    help="comma-separated editors evaluated in this order in one process "
                         "(needs --out-dir)")
    ap.add_argument("--out-dir", default=None,
                    help="folder for one results file per editor (named by its settings)")
    ap.add_argument("--max-new-tokens", type=int, default=30, help="GE generation length")
    ap.add_argument("--n-generation", type=int, default=1, help="GE prompts per record")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--shard", default=None, help="i/n: evaluate shard i of n")
    ap.add_argument("--n-neighbours", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-generation", action="store_true", help="skip GE (generation is slow)")
    ap.add_argument("--generation-records", type=int, default=None, metavar="K",
                    help="GE only for the first K records (default: all)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSONL",
                    help="merge these shard files into --out instead of evaluating")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.editors:
        if not args.out_dir or args.out or args.merge:
            ap.error("--editors writes one file per editor: give --out-dir (not --out/--merge)")
        return _run_editors(args)
    if not args.out:
        ap.error("--out is required (or --editors with --out-dir)")

    from loudfacts.evaluation import merge, read_results, summarize, to_frame  # noqa: F401

    out = Path(args.out)
    if args.merge:
        df = merge(args.merge)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        df.to_json(tmp, orient="records", lines=True)
        tmp.replace(out)
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
                      max_new_tokens=args.max_new_tokens, n_generation=args.n_generation)
    summary = summarize(df)
    print(summary.to_string(index=False))
    summary.to_csv(str(out) + ".summary.csv", index=False)
    return 0


def _run_editors(args) -> int:
    """Several editors in one process, in order, each to its own file in --out-dir."""
    import torch

    from loudfacts.data import load_counterfact
    from loudfacts.evaluation import evaluate, parse_shard, results_path, shard_path
    from loudfacts.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    records = load_counterfact(args.split, n=args.n)
    shard = parse_shard(args.shard)
    tag = f"[shard {shard[0]}/{shard[1]}]" if shard else "[all]"
    for name in args.editors.split(","):
        path = results_path(model, name, split=args.split, n=args.n,
                            n_neighbours=args.n_neighbours, generation=not args.no_generation,
                            generation_records=args.generation_records,
                            max_new_tokens=args.max_new_tokens, root=args.out_dir)
        if shard:
            path = shard_path(path, *shard)
        evaluate(model, name, records, out=path, shard=args.shard,
                 n_neighbours=args.n_neighbours, batch_size=args.batch_size,
                 generation=not args.no_generation, generation_records=args.generation_records,
                 max_new_tokens=args.max_new_tokens, n_generation=args.n_generation,
                 progress=tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
