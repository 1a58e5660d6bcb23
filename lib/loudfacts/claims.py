"""Claims and their verdicts: one rule, paired effects, intervals, and the report's claims table.

A claim is a sentence about editing (from the seed report, ROME or CounterFact+) together with
the measure that tests it, the population and n it is measured on, the **paired** effect
(edited minus unedited on the same records, cases or probes), its 95% interval, and a verdict.
The verdict follows `VERDICT_RULE`, stated once here and printed once at the head of the
report's claims table:

    supported     the interval excludes 0 in the claimed direction;
    contradicted  the interval excludes 0 in the opposite direction;
    inconclusive  otherwise, or when fewer than `MIN_N` units back the effect.

Notebooks compute their claims with `paired_effect` / `rate_effect` and `claim`, and save them
with `save_claims("NN", rows)` (figures/NN_claims.csv and .md); `loudfacts.report` gathers every
notebook's claims into the table that opens index.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MIN_N = 10
VERDICT_RULE = (
    "Each claim's effect is paired: edited minus unedited on the same records, cases or "
    "probes. **Supported** when its 95% interval excludes 0 in the claimed direction, "
    "**contradicted** when it excludes 0 in the opposite direction, **inconclusive** "
    f"otherwise, and whenever fewer than {MIN_N} units back it (n is the number of units "
    "the interval resamples)."
)
DIRECTIONS = ("increase", "decrease")
COLUMNS = ["claim", "measure", "population", "n", "effect", "ci_low", "ci_high", "direction",
           "verdict", "section", "reproduce"]


def verdict(ci_low: float, ci_high: float, direction: str, n: int) -> str:
    """`VERDICT_RULE` applied to one interval. `direction` is the claimed sign of the effect:
    "increase" (> 0) or "decrease" (< 0)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of {DIRECTIONS}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int")
    if n < MIN_N or math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    if ci_low > ci_high:
        raise ValueError(f"interval [{ci_low}, {ci_high}] is reversed")
    above, below = ci_low > 0, ci_high < 0
    if (above and direction == "increase") or (below and direction == "decrease"):
        return "supported"
    if above or below:
        return "contradicted"
    return "inconclusive"


def bootstrap_mean(values, n_resamples: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of a percentile bootstrap of the mean; NaNs dropped; the interval
    is (nan, nan) for fewer than 2 values and (v, v) for constant ones."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n < 2:
        return float(x[0]), math.nan, math.nan, 1
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), float(x[0]), n
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    a = (1 - confidence) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), n


def paired_differences(edited, unedited, key: str, value: str):
    """edited[value] - unedited[value] on the keys both have a value for (a pandas Series
    indexed by key). Raises ValueError when a key repeats within either table."""
    import pandas as pd

    cols = {}
    for label, df in (("edited", edited), ("unedited", unedited)):
        if df[key].duplicated().any():
            dup = df.loc[df[key].duplicated(), key].iloc[0]
            raise ValueError(f"{label} table repeats {key}={dup!r}; pairs must be unique")
        cols[label] = df.set_index(key)[value].astype(float)
    both = pd.concat(cols, axis=1).dropna()
    return both["edited"] - both["unedited"]


def paired_effect(results, editor: str, metric: str, baseline: str = "unedited",
                  n_resamples: int = 1000, seed: int = 0, population: str = "known") -> dict:
    """Editor minus baseline on `metric`, paired by case_id over the known records both scored
    (CounterFact results: one row per record and editor), or over `population`'s records
    ("all": every record both scored; `metrics.population_rows`). Returns effect, ci_low,
    ci_high, n, and the two means on the same records."""
    from loudfacts.metrics import population_rows

    known = population_rows(results, population)
    a, b = known[known["editor"] == editor], known[known["editor"] == baseline]
    if a.empty or b.empty:
        missing = editor if a.empty else baseline
        raise ValueError(f"no {population} records scored for editor {missing!r}")
    diff = paired_differences(a, b, "case_id", metric)
    effect, lo, hi, n = bootstrap_mean(diff.to_numpy(), n_resamples, seed)
    ids = diff.index
    return {"effect": effect, "ci_low": lo, "ci_high": hi, "n": n,
            "edited": float(a.set_index("case_id").loc[ids, metric].astype(float).mean())
            if n else math.nan,
            "unedited": float(b.set_index("case_id").loc[ids, metric].astype(float).mean())
            if n else math.nan}


def paired_effects_table(results, metrics: Sequence[str] = ("ES", "PS", "NS", "NS+", "NS+cool"),
                         baseline: str = "unedited", n_resamples: int = 1000, seed: int = 0,
                         population: str = "known"):
    """Every editor's paired effect on every metric: rows editor, columns 'metric' as
    'effect [low, high]', plus n (records paired on the first metric). A metric paired on
    another number of records (PS_para: only records with a true paraphrase) says its own n
    in its cell."""
    import pandas as pd

    editors = [e for e in dict.fromkeys(results["editor"]) if e != baseline]
    rows = {}
    for e in editors:
        row = {}
        for m in metrics:
            r = paired_effect(results, e, m, baseline, n_resamples, seed, population)
            cell = (f"{r['effect']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                    if not math.isnan(r["ci_low"]) else f"{r['effect']:+.3f}")
            if "n" not in row:
                row["n"] = r["n"]
            elif r["n"] != row["n"]:
                cell += f" (n={r['n']})"
            row[f"Δ{m}"] = cell
        rows[e] = row
    table = pd.DataFrame(rows).T
    table.index.name = "editor"
    return table


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (for rates over few cases)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def claim(claim: str, measure: str, population: str, effect: dict, direction: str,
          section: str, reproduce: str) -> dict:
    """One row of the claims table, with its verdict by `VERDICT_RULE`. `effect` holds
    effect, ci_low, ci_high and n (as `paired_effect` returns)."""
    n = int(effect["n"])
    return {"claim": claim, "measure": measure, "population": population, "n": n,
            "effect": float(effect["effect"]), "ci_low": float(effect["ci_low"]),
            "ci_high": float(effect["ci_high"]), "direction": direction,
            "verdict": verdict(float(effect["ci_low"]), float(effect["ci_high"]), direction, n),
            "section": section, "reproduce": reproduce}


def save_claims(prefix: str, rows: Sequence[dict]) -> None:
    """figures/<prefix>_claims.csv (read by the report index) and .md."""
    import pandas as pd

    from loudfacts.plotting import save_table

    if not (len(prefix) == 2 and prefix.isdigit()):
        raise ValueError(f"prefix {prefix!r} must be a notebook's two digits, e.g. '06'")
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    bad = set(df["direction"]) - set(DIRECTIONS)
    if bad:
        raise ValueError(f"claims with unknown direction(s) {sorted(bad)}")
    save_table(df.set_index("claim"), f"{prefix}_claims", floatfmt=".3f")


def claims_markdown(frames) -> str:
    """The report's claims table (Markdown) from the notebooks' claims tables, in order."""
    import pandas as pd

    df = pd.concat(list(frames), ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    lines = ["| claim | measure | population | n | paired effect [95% CI] | verdict | section "
             "| reproduce |", "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        ci = ("" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        sign = "claimed > 0" if r["direction"] == "increase" else "claimed < 0"
        lines.append(
            f"| {r['claim']} | {r['measure']} | {r['population']} | {int(r['n'])} | "
            f"{r['effect']:+.3f}{ci} ({sign}) | **{r['verdict']}** | [{r['section']}]({r['section']}.html) | "
            f"`{r['reproduce']}` |")
    return "\n".join(lines) + "\n"
