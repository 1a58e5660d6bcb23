"""The CounterFact and Specificity+ metrics: what a row holds, pure functions of probabilities,
and the summary tables with bootstrap intervals.

Metrics per record (ROME's conventions: the probability of a multi-token target is
exp(-mean token NLL), teacher-forced, via `loudfacts.scoring`):

* `ES`/`EM` efficacy on the rewrite prompt: 1[P(new) > P(true)] and P(new) - P(true).
* `PS`/`PM` the same, averaged over the paraphrase prompts.
* `PS_para` PS over the true paraphrases only (`CounterFactRecord.true_paraphrase_prompts`):
  the flattened layout's `rephrase_prompt` is often one of CounterFact's generation prompts
  ("David Robinson's greatest weakness is"); NaN for a record with none
  (`n_true_paraphrases` = 0).
* `NS`/`NM` neighbourhood: prompts about *other* subjects whose true object is the record's;
  1[P(true) > P(new)] and P(true) - P(new), averaged. Higher is better (nothing leaked).
* `NS+`/`NM+` CounterFact+ (Hoelscher-Obermaier et al. 2023, "Detecting Edit Failures in
  Large Language Models: An Improved Specificity Benchmark"): the same neighbourhood prompts,
  each prefixed by the edit statement, `"{rewrite prompt} {target_new}. " + prompt`.
* `NS+cool` the seed report's variant: prefix `"{subject} is cool. "` (a tangential mention).
* `NKL` KL(P_unedited || P_edited) in nats of the first next token on the CounterFact+ prompts,
  averaged over prompts: the paper's equation. `NKL_code` KL(P_edited || P_unedited) / vocab
  size: what the published code computes (`kl_div(..., reduction="batchmean")` on a 1-D
  vector divides by the vocabulary size); compare *that* with `../shared/data/reference`.
* `GE` ROME's generation entropy (weighted bi/trigram entropy, `loudfacts.fluency`) of greedy
  generations from the record's generation prompts, or "{subject}"-led prompts when the
  layout has none.
* `Score` harmonic mean of ES, PS, NS (per row; `summarize` also gives it over the means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


METRICS = ["ES", "EM", "PS", "PS_para", "PM", "NS", "NM", "NS+", "NM+", "NS+cool", "NKL",
           "NKL_code", "GE", "Score"]
# Version of the definitions of METRICS (and of what a row holds): part of every row's
# settings digest, so rows computed under older definitions are never reused. Bump it whenever
# a metric's definition or computation changes.
METRICS_VERSION = 2  # 2: PS_para, n_true_paraphrases, generations
BOOK = ["case_id", "subject", "relation", "target_true", "target_new", "editor", "model",
        "known", "p_true_pre", "p_new_pre", "n_paraphrases", "n_true_paraphrases",
        "n_neighbours", "n_neighbours_other_template", "n_neighbours_other_object",
        "n_generation",
        "edit_seconds", "edit_steps", "edit_reused", "eval_seconds", "edit_error",
        "settings_digest", "run_key", "commit", "machine"]
COLUMNS = BOOK + METRICS


# -- metrics on numbers ------------------------------------------------------------------------
def success_magnitude(p_a, p_b) -> tuple[float, float]:
    """Mean of 1[p_a > p_b] and of p_a - p_b (NaN for no pairs)."""
    p_a, p_b = torch.as_tensor(p_a, dtype=torch.float64), torch.as_tensor(p_b, dtype=torch.float64)
    if p_a.numel() == 0:
        return math.nan, math.nan
    return float((p_a > p_b).double().mean()), float((p_a - p_b).mean())


def kl_divergences(logp_pre: torch.Tensor, logp_post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KLs between next-token distributions.

    Args:
        logp_pre, logp_post: (n, vocab) log-probabilities of the unedited / edited model.

    Returns:
        (paper, code), each (n,): paper = KL(P_pre || P_post) in nats (the Specificity+ paper's
        equation, our `NKL`); code = KL(P_post || P_pre) / vocab (the published code's
        `kl_div(pre, post, batchmean)` on 1-D vectors, our `NKL_code`).
        A KL is never negative; the two log-probabilities come from differently batched float32
        runs, so for (nearly) equal distributions their rounding noise can sum to about -1e-8:
        each row is clamped at 0.
    """
    if logp_pre.shape != logp_post.shape or logp_pre.dim() != 2:
        raise ValueError(f"log-prob shapes differ or are not 2-D: {tuple(logp_pre.shape)} vs "
                         f"{tuple(logp_post.shape)}")
    a, b = logp_pre.double(), logp_post.double()
    paper = (a.exp() * (a - b)).sum(-1)
    code = (b.exp() * (b - a)).sum(-1) / a.shape[-1]
    return paper.clamp_min(0).float(), code.clamp_min(0).float()


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0, NaN if any is NaN."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        return math.nan
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1 / v for v in vals)


def record_metrics(scores, logp_pre: torch.Tensor | None = None,
                   logp_post: torch.Tensor | None = None) -> dict:
    """The metrics of one edited record from its probe scores: a pure function of probabilities.

    Args:
        scores: a `cases.score` table of the record's probes under the edit (columns role, kind,
            p_new, p_true), as `cases.Case.from_counterfact` builds them: rewrite, paraphrase
            (kind "true paraphrase" for PS_para), neighbourhood, counterfact+, tangential.
        logp_pre, logp_post: (n, vocab) next-token log-probs on the counterfact+ prompts, in
            their order, without / with the edit (NKL); None or empty gives NaN.

    Returns:
        {ES, EM, PS, PM, PS_para, NS, NM, NS+, NM+, NS+cool, NKL, NKL_code, Score}; a metric
        with no probes is NaN, and Score leaves out what is missing (no neighbours: ES and PS;
        no paraphrases: ES in PS's place).
    """
    def probs(role, kind=None):
        m = scores["role"] == role
        if kind is not None:
            m = m & (scores["kind"] == kind)
        return (scores.loc[m, "p_new"].to_numpy(dtype=float, copy=True),
                scores.loc[m, "p_true"].to_numpy(dtype=float, copy=True))

    row = {}
    new, true = probs("rewrite")
    row["ES"], row["EM"] = success_magnitude(new, true)
    new, true = probs("paraphrase")
    row["PS"], row["PM"] = success_magnitude(new, true)
    new, true = probs("paraphrase", "true paraphrase")
    row["PS_para"], _ = success_magnitude(new, true)
    for name, mag, role in (("NS", "NM", "neighbourhood"), ("NS+", "NM+", "counterfact+"),
                            ("NS+cool", None, "tangential")):
        new, true = probs(role)
        s, m = success_magnitude(true, new)
        row[name] = s
        if mag:
            row[mag] = m
    if logp_pre is not None and logp_post is not None and len(logp_pre):
        paper, code = kl_divergences(logp_pre, logp_post)
        row["NKL"], row["NKL_code"] = float(paper.mean()), float(code.mean())
    else:
        row["NKL"] = row["NKL_code"] = math.nan
    ns = row["NS"] if not math.isnan(row["NS"]) else 1.0  # no neighbours: score ES, PS only
    ps = row["PS"] if not math.isnan(row["PS"]) else row["ES"]
    row["Score"] = harmonic_mean([row["ES"], ps, ns])
    return {m: row[m] for m in ("ES", "EM", "PS", "PM", "PS_para", "NS", "NM", "NS+", "NM+",
                                "NS+cool", "NKL", "NKL_code", "Score")}


# -- summaries with bootstrap CIs --------------------------------------------------------------
def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI (scipy.stats.bootstrap) of `statistic` over `values`; NaNs
    dropped; (nan, nan) for fewer than 2 values, (v, v) for constant values."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def population_rows(df, population: str = "known"):
    """The rows of a results table in a population: "known" (P(true) > P(new) before editing,
    the default), "unknown" (the others) or "all" (every row; rows without a metric, such as
    records a run did not edit, drop out of that metric's mean)."""
    if population == "all":
        return df
    if population not in ("known", "unknown"):
        raise ValueError(f"population={population!r} must be 'known', 'unknown' or 'all'")
    known = df["known"].astype(bool)
    return df[known if population == "known" else ~known]


def summarize(df, metrics=None, n_resamples: int = 1000, seed: int = 0,
              population: str = "known"):
    """Mean and bootstrap 95% CI per editor and metric, on the known records only (or on
    `population`: see `population_rows`).

    Returns:
        DataFrame with columns editor, metric, mean, ci_low, ci_high, n. `Score` here is the
        harmonic mean of the *means* of ES, PS, NS (ROME's aggregate), bootstrapped jointly.
    """
    import pandas as pd

    metrics = [m for m in (metrics or METRICS) if m in df.columns]
    known = population_rows(df, population)
    rows = []
    for editor, g in known.groupby("editor", sort=False):
        for m in metrics:
            if m == "Score":
                es, ps, ns = (g[c].astype(float).fillna(g["ES"].astype(float)).to_numpy()
                              for c in ("ES", "PS", "NS"))
                mean = harmonic_mean([es.mean(), ps.mean(), ns.mean()]) if len(g) else math.nan
                lo, hi = _score_ci(es, ps, ns, n_resamples, seed)
                n = len(g)
            else:
                x = g[m].astype(float).to_numpy()
                x = x[~np.isnan(x)]
                mean = float(x.mean()) if len(x) else math.nan
                lo, hi = bootstrap_ci(x, n_resamples=n_resamples, seed=seed)
                n = len(x)
            rows.append({"editor": editor, "metric": m, "mean": mean, "ci_low": lo,
                         "ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=["editor", "metric", "mean", "ci_low", "ci_high", "n"])


def _score_ci(es, ps, ns, n_resamples, seed):
    from scipy.stats import bootstrap

    if len(es) < 2:
        return math.nan, math.nan

    def stat(a, b, c, axis=-1):
        means = np.stack([a.mean(axis=axis), b.mean(axis=axis), c.mean(axis=axis)])
        with np.errstate(divide="ignore"):
            h = 3 / (1 / means).sum(axis=0)
        return np.where((means <= 0).any(axis=0), 0.0, h)

    if np.allclose([es.std(), ps.std(), ns.std()], 0):
        point = float(stat(es, ps, ns))
        return point, point
    res = bootstrap((es, ps, ns), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wide_table(summary):
    """`summarize` output as one row per editor: 'mean [low, high]' strings per metric."""
    import pandas as pd

    cells = {}
    for _, r in summary.iterrows():
        txt = f"{r['mean']:.3g}"
        if not math.isnan(r["ci_low"]):
            txt += f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        cells.setdefault(r["editor"], {})[r["metric"]] = txt
    return pd.DataFrame(cells).T


def _published_algorithm(name: str, model: str) -> str:
    """The published CSVs' algorithm labels as the paper names them: its "FT" rows are the
    norm-constrained FT-L, and the row named after the model is the unedited model."""
    if name == "FT":
        return "FT-L (CSV: FT)"
    if name == model:
        return "unedited"
    return name


def compare_with_reference(summary, reference_models=("gpt2-xl", "gpt-j-6B"),
                           all_summary=None, label: str = "ours",
                           all_label: str = "ours (all records)"):
    """Our NS/NS+/NM/NM+/NKL_code means next to the published Specificity+ means.

    Returns a DataFrame: source (model), algorithm, and columns NS, NS+, NM, NM+, NKL_code.
    The published KL is the code's quantity (KL(post || pre) / vocab), so it sits next to our
    `NKL_code`, not `NKL`. Our rows come from `summary` (source `label`); with `all_summary`
    (a `summarize(..., population="all")`: no known filter, as the published runs) they are
    followed by those, with source `all_label`.
    """
    import pandas as pd

    from loudfacts.data import load_reference

    names = {("N", "S"): "NS", ("N+", "S"): "NS+", ("N", "M"): "NM", ("N+", "M"): "NM+",
             ("N", "KL"): "NKL_code (N)", ("N+", "KL"): "NKL_code"}
    rows = []
    for ref in reference_models:
        try:
            tab = load_reference(ref)
        except FileNotFoundError as e:
            print(f"reference {ref}: {e}")
            continue
        for alg, g in tab.groupby("algorithm", sort=False):
            row = {"source": ref, "algorithm": _published_algorithm(alg, ref)}
            for _, r in g.iterrows():
                row[names[(r["prompt_type"], r["metric"])]] = r["value"]
            rows.append(row)
    for source, summ in ((label, summary), (all_label, all_summary)):
        if summ is None:
            continue
        ours = summ.pivot(index="editor", columns="metric", values="mean")
        for editor, r in ours.iterrows():
            rows.append({"source": source, "algorithm": editor,
                         **{c: r.get(c, math.nan)
                            for c in ("NS", "NS+", "NM", "NM+", "NKL_code")}})
    return pd.DataFrame(rows)


# Editors evaluated in the tables but left out of the report's headline, with the reason.
HEADLINE_EXCLUDED = {
    "patch-context": ("it writes no fact: the stated fact never reaches the subject's state "
                      "that it borrows (notebook 04's context sweep)"),
}


def headline_table(summary, results, implications=None, ladder_sum=None,
                   exclude: dict | None = None):
    """One row per editor for the report's headline: ES, PS, PS on true paraphrases (with its
    n), NS, NS+, NS+cool and NKL as
    'mean [95% CI]', the implication follow-through (share of implied probes where the new
    implied object wins after the edit, over all kinds, from `implication_summary`, with its
    denominator), the loud-fact top-1 rate (share of unrelated prompts after "{subject} is
    cool." whose greedy answer becomes the new object, from `ladder_summary`), the number of
    known records and the mean seconds per edit.

    Args:
        summary: `summarize(results)`.
        results: the per-record table (for edit seconds and counts).
        implications: `implication_summary(...)` output, or None.
        exclude: {editor: reason} left out of the table (default `HEADLINE_EXCLUDED`); the
            editors dropped and their reasons are in `table.attrs["excluded"]`.
    """
    import pandas as pd

    from loudfacts.plotting import editor_order

    cols = ["ES", "PS", "PS_para", "NS", "NS+", "NS+cool", "NKL"]
    cols = [c for c in cols if c != "PS_para" or c in set(summary["metric"])]
    wide = wide_table(summary[summary["metric"].isin(cols)])
    table = wide.reindex(columns=cols)
    if "PS_para" in cols:  # few records have one: its n beside it
        n_para = summary[summary["metric"] == "PS_para"].set_index("editor")["n"]
        table = table.rename(columns={"PS_para": "PS (true paraphrases)"})
        table["PS (true paraphrases)"] = pd.Series({
            e: f"{v} (n={int(n_para.get(e, 0))})" for e, v in
            table["PS (true paraphrases)"].items()})
    known = results[results["known"].astype(bool)]
    table["known records"] = known.groupby("editor")["case_id"].nunique()
    if "edit_error" in known and known["edit_error"].notna().any():
        table["failed edits"] = known.groupby("editor")["edit_error"].count()  # non-null
    secs = known.groupby("editor")["edit_seconds"].mean()
    reused = (known.groupby("editor")["edit_reused"].mean() if "edit_reused" in known
              else secs * 0)
    table["s / edit"] = pd.Series({
        e: f"{secs[e]:.1f}" + (" (reuses rome's v*)" if reused.get(e, 0) > 0.5 else "")
        for e in secs.index})
    if implications is not None and len(implications):
        weighted = implications.assign(hits=implications["implied_post"] * implications["probes"])
        per_editor = weighted.groupby("editor")[["hits", "probes"]].sum()
        table["implied (05, all kinds)"] = pd.Series({
            e: f"{r['hits'] / r['probes']:.2f} ({round(r['hits'])}/{int(r['probes'])} probes)"
            for e, r in per_editor.iterrows()})
    if ladder_sum is not None and len(ladder_sum):
        tang = ladder_sum[ladder_sum["step"] == "tangential"].set_index("editor")
        table["loud top-1 (tangential)"] = pd.Series({
            e: f"{r['top1_post']:.2f} (of {int(r['n'])} prompts)" for e, r in tang.iterrows()})
    exclude = HEADLINE_EXCLUDED if exclude is None else exclude
    dropped = {e: exclude[e] for e in table.index if e in exclude}
    table = table.reindex([e for e in editor_order(table.index) if e not in dropped])
    table.index.name = "editor"
    table = pd.DataFrame(table)
    table.attrs["excluded"] = dropped
    return table
