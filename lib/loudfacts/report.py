"""Rebuild the rendered report: execute every notebook with papermill, render it, index it.

    python -m loudfacts.report                              # params/report.yaml, all notebooks
    python -m loudfacts.report --params params/smoke.yaml --out /tmp/smoke
    python -m loudfacts.report --params params/gpu.yaml --only 06

The jupytext `.py` files are the source: each notebook is read from `notebooks/NN_topic.py`,
executed by papermill (parameters from the YAML file: a `common:` section merged with the
section named after the notebook, e.g. `01_causal_tracing:`), written to
`<out>/executed/NN_topic.ipynb`, rendered to `<out>/NN_topic.html` with code hidden and setup
cells removed, and listed in `<out>/index.md` and `<out>/index.html` with its headline figure
and wall time, under a run card (model, commit, parameters, date, total time).

A failing cell stops that notebook; the others still run, and the command exits non-zero,
naming each failed notebook and cell.

The parameter file is checked before anything runs (exit status 2, naming the file): YAML
errors with their line and column; a section that names no notebook; a key that the notebook's
parameters cell does not declare (papermill would inject it and the notebook would silently
run on its default); and a value whose type differs from the declared default's (`true` for an
int is an error: bool is not an int; an int is accepted for a float; null is accepted anywhere,
as the repo's "default / all" value). A `common:` key must be declared by at least one
notebook; notebooks that do not declare it are run without it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from loudfacts.paths import REPO_ROOT, git_commit

KERNEL = "loudfacts"
REMOVE_TAGS = {"remove-cell", "colab-setup"}


@dataclass
class NotebookRun:
    stem: str
    title: str = ""
    summary: str = ""
    seconds: float = 0.0
    ok: bool = True
    error: str = ""
    figure: str | None = None
    caption: str = ""
    findings: str = ""
    parameters: dict = field(default_factory=dict)


class ParamsError(ValueError):
    """A parameter file that cannot be used; the message names the file (and key, notebook)."""


def read_params_file(path) -> dict:
    """The parameter file as {section: {key: value}}.

    Raises:
        ParamsError: the file is missing, not YAML (with line and column), not a mapping of
            sections, or a section is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"parameter file {path}: cannot be read ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"parameter file {path} is not valid YAML{where}: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"parameter file {path} must hold a mapping of sections, got "
                          f"{type(data).__name__}")
    for section, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise ParamsError(f"parameter file {path}: section {section!r} must be a mapping of "
                              f"parameters, got {type(values).__name__}")
    return data


def load_params(path: Path, stem: str) -> dict:
    """`common` merged with the notebook's own section (by full stem or its NN prefix)."""
    if path is None:
        return {}
    data = read_params_file(path)
    params = dict(data.get("common") or {})
    for key in (stem[:2], stem):
        params.update(data.get(key) or {})
    return params


_ANY = object()  # a declared default that is not a literal: any value is accepted


def declared_parameters(source: Path) -> dict:
    """{name: default} of the notebook's parameters cell (tagged "parameters"); a default that
    is not a literal maps to a marker that accepts any value. Empty without such a cell."""
    import ast

    import jupytext

    nb = jupytext.read(source)
    out: dict = {}
    for cell in nb.cells:
        if "parameters" not in cell.metadata.get("tags", []):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as e:
            raise ParamsError(f"{source}: its parameters cell is not Python ({e})") from None
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Name):
                    try:
                        out[t.id] = ast.literal_eval(stmt.value)
                    except (ValueError, TypeError, SyntaxError):
                        out[t.id] = _ANY
    return out


def _type_problem(default, value) -> str | None:
    """Why `value` cannot stand in for a parameter declared with `default` (None if it can)."""
    if default is _ANY or default is None or value is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if ok:
        return None
    return (f"is {type(value).__name__} {value!r}, but the notebook declares "
            f"{type(default).__name__} (default {default!r})")


def check_params(path, notebooks) -> None:
    """Check a parameter file against the notebooks' parameters cells (see the module
    docstring for the rules).

    Raises:
        ParamsError: naming the file, the key and the notebook.
    """
    data = read_params_file(path)
    declared = {nb.stem: declared_parameters(nb) for nb in notebooks}
    known = {"common"} | set(declared) | {stem[:2] for stem in declared}
    for section in data:
        if section not in known:
            raise ParamsError(f"parameter file {path}: section {section!r} names no notebook "
                              f"(notebooks: {', '.join(sorted(declared))})")
    common = data.get("common") or {}
    for key in common:
        if not any(key in names for names in declared.values()):
            raise ParamsError(f"parameter file {path}: common key {key!r} is a parameter of "
                              "no notebook")
    for stem, names in declared.items():
        for section in (stem[:2], stem):
            for key in data.get(section) or {}:
                if key not in names:
                    raise ParamsError(
                        f"parameter file {path}: [{section}] sets {key!r}, which notebook "
                        f"{stem} does not declare in its parameters cell (declared: "
                        f"{', '.join(sorted(names)) or 'none'})")
        for key, value in _notebook_params(data, stem).items():
            if key in names:
                problem = _type_problem(names[key], value)
                if problem:
                    raise ParamsError(f"parameter file {path}: {key!r} for notebook {stem} "
                                      f"{problem}")


def _notebook_params(data: dict, stem: str) -> dict:
    params = dict(data.get("common") or {})
    for key in (stem[:2], stem):
        params.update(data.get(key) or {})
    return params


def find_notebooks(notebooks_dir: Path, only=None) -> list[Path]:
    sources = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.py"))
    if only:
        wanted = set(only)
        sources = [p for p in sources if p.stem[:2] in wanted or p.stem in wanted]
        if not sources:
            raise SystemExit(f"--only {only}: no notebook in {notebooks_dir} matches")
    return sources


def _title_and_summary(nb) -> tuple[str, str]:
    title, summary = "", ""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for block in cell.source.split("\n\n"):
            block = block.strip()
            if not block or block.startswith("[![") or block.startswith("<a"):
                continue
            if block.startswith("#") and not title:
                title = block.lstrip("#").strip().splitlines()[0]
                continue
            if title and not summary:
                summary = " ".join(block.split())
                break
        if title and summary:
            break
    return title, summary


def _headline_figure(stem: str, figures_dir: Path) -> str | None:
    """The key figure named in the notebook's findings, else its `NN_headline*` figure, else
    its first `NN_*` PNG."""
    from loudfacts.plotting import read_findings

    prefix = stem[:2]
    found = read_findings(prefix)
    if found and found.get("figure") and (figures_dir / f"{found['figure']}.png").exists():
        return f"{found['figure']}.png"
    headline = sorted(figures_dir.glob(f"{prefix}_headline*.png"))
    figs = headline or sorted(figures_dir.glob(f"{prefix}_*.png"))
    return figs[0].name if figs else None


def missing_captions(prefix: str, figures_dir: Path) -> list[str]:
    """Figures `NN_*.png` of a notebook that have no caption in figures/captions.json."""
    from loudfacts.plotting import read_captions

    captions = read_captions()
    return sorted(p.stem for p in figures_dir.glob(f"{prefix}_*.png") if p.stem not in captions)


def execute(source: Path, out: Path, params: dict, kernel: str, log_output: bool) -> NotebookRun:
    import jupytext
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    run = NotebookRun(stem=source.stem, parameters=params)
    nb = jupytext.read(source)
    nb.metadata.setdefault(
        "kernelspec", {"name": kernel, "display_name": kernel, "language": "python"}
    )
    run.title, run.summary = _title_and_summary(nb)
    tmp_dir = out / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    src_ipynb = tmp_dir / f"{source.stem}.ipynb"
    jupytext.write(nb, src_ipynb)
    executed = out / "executed" / f"{source.stem}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src_ipynb),
            str(executed),
            parameters=params,
            kernel_name=kernel,
            language="python",
            cwd=str(source.parent),
            progress_bar=sys.stderr.isatty(),
            log_output=log_output,
            request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as e:
        run.ok = False
        run.error = f"cell {e.exec_count or e.cell_index}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, bad parameters, ...
        run.ok = False
        run.error = f"{type(e).__name__}: {e}"
    run.seconds = time.perf_counter() - t0
    return run


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_logs(nb) -> int:
    """Remove what a reader of the rendered page does not need: stderr streams (progress bars,
    warnings, library logs) and progress widgets. The executed notebook keeps them. Returns
    the number of outputs removed."""
    removed = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        keep = []
        for out in cell.get("outputs", []):
            log = out.get("output_type") == "stream" and out.get("name") == "stderr"
            widget = (out.get("output_type") == "display_data"
                      and WIDGET_MIME in out.get("data", {}))
            if log or widget:
                removed += 1
            else:
                keep.append(out)
        cell["outputs"] = keep
    return removed


def render_html(executed: Path, target: Path) -> None:
    """The executed notebook as a page: prose, figures, tables and printed results; no code
    inputs, no cells tagged for removal, no logs (`strip_logs`)."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(executed, as_version=4)
    strip_logs(nb)
    # Drop papermill's "injected-parameters" cell from the rendered view too: readers see the
    # run card printed by the notebook instead.
    remover = TagRemovePreprocessor(
        remove_cell_tags=REMOVE_TAGS | {"injected-parameters"}, enabled=True
    )
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    exporter.register_preprocessor(remover, enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")


def _git_commit() -> str:
    return git_commit.__wrapped__()  # not the per-process cache: the commit can change


def _cpu_line() -> str:
    """The CPU kind and what the run chose from it, for the run card."""
    import torch

    from loudfacts.models import cpu_info

    cpu = cpu_info()
    return (f"{cpu['name'] or 'unknown'} (torch capability {cpu['capability']}, native bf16: "
            f"{'yes' if cpu['native_bf16'] else 'no'}); {torch.get_num_threads()} torch threads "
            "per process; float32 everywhere (no reduced-precision option keeps ROME's δ within "
            "1e-3, bench/results/rome.json)")


def _display_path(path) -> str:
    if path is None:
        return "(notebook defaults)"
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _fmt_seconds(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


HEADLINE_TABLE = "06_headline_table"
PUBLISHED_TABLE = "06_published_comparison"
PAIRED_EFFECTS_TABLE = "06_paired_effects"
LIMITATIONS = [
    "One small model: SmolLM2-135M-Instruct (30 layers, d_model 576), not GPT-2 XL or GPT-J. "
    "The edit layer, the sizes of effects and what the model knows differ; it knows no "
    "spouses, so symmetric cases use antonyms.",
    "Small populations: every claim states its n, and the verdict rule calls a claim "
    "inconclusive below its minimum n. The published Specificity+ runs use all of CounterFact "
    "(about 20k records) without a known filter; ours use the known records of the first "
    "records of one split.",
    "Neighbourhood prompts: the flattened CounterFact layout has one per record; the rest are "
    "borrowed from other CounterFact records (both 10k splits) with the same relation and true "
    "object. A record whose relation and object few records share is topped up with prompts "
    "of the same object under another template, then of the same template with another true "
    "object (scored against that object): published CounterFact has 10 same-relation, "
    "same-object prompts per record (notebook 06 prints the counts per tier).",
    "Paraphrases: most `rephrase_prompt`s of the flattened layout are generation-style prompts "
    "(\"X's greatest weakness is\"), not ROME-form paraphrases; PS is computed on them as given. "
    "PS_para scores the true paraphrases only (column PS_para, \"PS (true paraphrases)\" in "
    "the headline; a record's count is n_true_paraphrases, and records with none are left out).",
    "GE in the headline is computed on lower-cased, greedily decoded 30-token generations for "
    "a few records; the published GE samples 100 tokens. Notebook 06 also computes GE as "
    "ROME's code does, on a few known records, beside a sampling-noise control (the unedited "
    "model at another sampler seed).",
    "Intervals are 95% percentile bootstraps over records or cases; the published "
    "Specificity+ intervals are 99% hierarchical bootstraps.",
    "Causal-trace averages use 3 noise draws on each of 200 known facts (ROME: 10 draws over "
    "1,000 facts on GPT-2 XL); the edit layer comes from windowed MLP "
    "restoration (notebook 01 shows the criteria with and without windows that contain MLP 0).",
    "The headline comes from one seed. ROME, whose random context prefixes are the only "
    "randomness in the evaluation, was rerun at more prefix seeds on the first records; notebook 06 "
    "gives the spread of its effects beside their 95% intervals.",
]


def headline_excluded(figures: Path) -> dict[str, str]:
    """{editor: reason} for the editors notebook 06 ran but left out of its headline table
    (`loudfacts.metrics.HEADLINE_EXCLUDED`). The editors that ran are read from the rows
    of `06_paired_effects.csv` (one per edited editor, written by the same run); {} when that
    table is missing."""
    import csv

    effects = Path(figures) / f"{PAIRED_EFFECTS_TABLE}.csv"
    if not effects.exists():
        return {}
    with effects.open(newline="", encoding="utf-8") as f:
        ran = [row.get("editor") for row in csv.DictReader(f)]
    from loudfacts.metrics import HEADLINE_EXCLUDED

    return {e: HEADLINE_EXCLUDED[e] for e in dict.fromkeys(ran) if e in HEADLINE_EXCLUDED}


def write_index(out: Path, runs: list[NotebookRun], card: dict, figures_rel: str,
                headline: str | None = None, excluded: dict | None = None) -> None:
    """index.md and index.html: headline table, run card, then one entry per notebook.

    `excluded`: {editor: reason} for editors that ran but are not in the headline table (see
    `headline_excluded`); a line under the table names each with its reason.
    """
    lines = [
        "# Loud facts: locating, editing and stress-testing facts in a language model",
        "",
        "This report is generated by `make report` (papermill executes every notebook, then "
        "this index is written); do not edit it by hand.",
        "",
    ]
    from loudfacts.paths import figures_dir

    claims = _claims_frames(figures_dir())
    if claims:
        from loudfacts.claims import VERDICT_RULE, claims_markdown

        lines += [
            "## Claims: what replicated on this model",
            "",
            VERDICT_RULE,
            "",
            claims_markdown(claims).strip(),
            "",
        ]
    if headline:
        lines += [
            "## Headline: every editor on the embedded model",
            "",
            headline.strip(),
            "",
        ]
        if excluded:
            lines += ["Left out of this table: " + "; ".join(
                f"{e} — {why}" for e, why in excluded.items()) + ".", ""]
        lines += [
            f"From notebook 06 (`figures/{HEADLINE_TABLE}.csv`); 95% bootstrap intervals in "
            "brackets. ES/PS: efficacy and paraphrase success; NS: neighbourhood specificity "
            "(ROME); NS+: the same with the edit statement prepended (CounterFact+); NKL: "
            "KL(P_unedited || P_edited) on CounterFact+ prompts. The hook editors "
            "(patch-donor, hook-delta, hook-gated) change the model only at the edited "
            "subject's positions, so on neighbourhood prompts, which never mention it, their NS "
            "equals the unedited model's by construction; their NS+ and NS+cool, whose prompts "
            "do mention it, are the test.",
            "",
        ]
    published = figures_dir() / f"{PUBLISHED_TABLE}.md"
    if published.exists():
        lines += [
            "## Beside the published Specificity+ numbers",
            "",
            published.read_text().strip(),
            "",
            "Published rows: apartresearch/specificityplus `results/combined/*/mean.csv`, over "
            "all of CounterFact with no known filter; its \"FT\" rows are the paper's FT-L. "
            "Ours: the known records of notebook 06. NKL_code is the code's KL(P_edited || "
            "P_unedited) / vocabulary size. Compare the pattern (does NS+ fall below NS, for "
            "which methods), not the levels: see the limitations below.",
            "",
        ]
    lines += ["## Limitations", ""] + [f"- {item}" for item in LIMITATIONS] + [""]
    lines += [
        "## Run card",
        "",
        "| | |",
        "|---|---|",
    ]
    for k, v in card.items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "## Sections", ""]
    for r in runs:
        status = "" if r.ok else f" — **FAILED** ({r.error})"
        lines += [
            f"### [{r.title or r.stem}]({r.stem}.html){status}",
            "",
            f"`notebooks/{r.stem}.py` · executed notebook: [executed/{r.stem}.ipynb]"
            f"(executed/{r.stem}.ipynb) · wall time {_fmt_seconds(r.seconds)}",
            "",
        ]
        if r.summary:
            lines += [r.summary, ""]
        if r.findings:
            lines += [f"**What it shows.** {r.findings}", ""]
        if r.figure:
            lines += [f"![{r.stem} key figure]({figures_rel}/{r.figure})", ""]
            if r.caption:
                lines += [f"*Figure `{Path(r.figure).stem}`.* {r.caption}", ""]
    (out / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (out / "index.html").write_text(index_html("\n".join(lines) + "\n"), encoding="utf-8")


def _claims_frames(figures: Path) -> list:
    """Every notebook's claims table (figures/NN_claims.csv), in notebook order."""
    import pandas as pd

    return [pd.read_csv(p) for p in sorted(Path(figures).glob("[0-9][0-9]_claims.csv"))]


def index_html(markdown_text: str) -> str:
    """index.html rendered from index.md's text by a Markdown library (markdown-it, with
    tables), so the two pages cannot drift apart."""
    import markdown_it

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(markdown_text)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>loudfacts report</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem;line-height:1.5}img{max-width:100%}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2rem .5rem}</style></head><body>\n"
        + body + "</body></html>\n"
    )


def build(
    params_file: Path | None,
    out: Path,
    only=None,
    notebooks_dir: Path = REPO_ROOT / "notebooks",
    kernel: str = KERNEL,
    log_output: bool = True,
) -> list[NotebookRun]:
    from loudfacts.paths import figures_dir

    out = Path(out)
    sources = find_notebooks(notebooks_dir, only)
    declared = {}
    if params_file is not None:  # before anything runs: a bad file fails the whole build
        check_params(params_file, find_notebooks(notebooks_dir))
        declared = {s.stem: declared_parameters(s) for s in sources}
    out.mkdir(parents=True, exist_ok=True)
    runs: list[NotebookRun] = []
    t_start = time.perf_counter()
    for i, source in enumerate(sources, 1):
        params = load_params(params_file, source.stem)
        if params_file is not None:  # common keys this notebook does not take stay out
            params = {k: v for k, v in params.items() if k in declared[source.stem]}
        print(f"[report] {i}/{len(sources)} {source.stem} with {params}", flush=True)
        from loudfacts.plotting import clear_outputs

        clear_outputs(source.stem[:2])  # figures/ keeps only what this run writes
        run = execute(source, out, params, kernel, log_output)
        executed = out / "executed" / f"{source.stem}.ipynb"
        if executed.exists():
            render_html(executed, out / f"{source.stem}.html")
        run.figure = _headline_figure(source.stem, figures_dir())
        from loudfacts.plotting import read_captions, read_findings

        if run.figure:
            run.caption = read_captions().get(Path(run.figure).stem, "")
        found = read_findings(source.stem[:2])
        run.findings = found["text"] if found else ""
        if run.ok:
            missing = missing_captions(source.stem[:2], figures_dir())
            if missing:  # every figure in the report says what to look at
                run.ok = False
                run.error = f"figures without a caption: {', '.join(missing)}"
        runs.append(run)
        state = "ok" if run.ok else f"FAILED at {run.error}"
        print(f"[report] {source.stem}: {state} ({_fmt_seconds(run.seconds)})", flush=True)
    total = time.perf_counter() - t_start
    common = load_params(params_file, "common") if params_file else {}
    card = {
        "model": common.get("model_name", "smollm2-135m"),
        "commit": _git_commit(),
        "parameters": _display_path(params_file),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"python {platform.python_version()}",
        "cpu": _cpu_line(),
        "wall time": " · ".join(f"{r.stem[:2]}: {_fmt_seconds(r.seconds)}" for r in runs)
        + f" · total {_fmt_seconds(total)}",
    }
    try:
        figures_rel = os.path.relpath(figures_dir(), out)
    except ValueError:
        figures_rel = str(figures_dir())
    # A partial run (--only) must not overwrite the full run's index and run card.
    partial = only is not None
    headline_md = figures_dir() / f"{HEADLINE_TABLE}.md"
    headline = headline_md.read_text() if headline_md.exists() else None
    if not partial:
        excluded = headline_excluded(figures_dir()) if headline else {}
        write_index(out, runs, card, figures_rel, headline, excluded)
    (out / ("run-partial.json" if partial else "run.json")).write_text(
        json.dumps({"card": card, "notebooks": [asdict(r) for r in runs]}, indent=2, default=str)
        + "\n"
    )
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loudfacts.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO_ROOT / "params" / "report.yaml",
                    help="papermill parameter file (default params/report.yaml)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "report",
                    help="output folder (default report/)")
    ap.add_argument("--only", nargs="+", help="run only these notebooks (NN prefixes or stems)")
    ap.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks",
                    help="folder of NN_topic.py notebooks")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default loudfacts)")
    ap.add_argument("--quiet", action="store_true", help="do not stream cell outputs")
    args = ap.parse_args(argv)
    if not args.quiet:
        import logging

        # papermill reports each cell ("Executing Cell 3") and, with log_output, its output
        # through the "papermill" logger at INFO level.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("papermill").setLevel(logging.INFO)
    if args.params and not args.params.exists():
        ap.error(f"parameter file {args.params} does not exist")
    try:
        runs = build(args.params, args.out, args.only, args.notebooks, args.kernel,
                     log_output=not args.quiet)
    except ParamsError as e:
        print(f"[report] error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in runs if not r.ok]
    for r in failed:
        print(f"[report] FAILED: notebook {r.stem}, {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
