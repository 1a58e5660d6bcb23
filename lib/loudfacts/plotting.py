"""Figure helpers: one seaborn theme for the whole report, and `save_figure` with stable names.

Builders in this module (and in the topic modules) return a matplotlib Figure; notebooks show
it and call `save_figure(fig, "01_trace_louvre_hidden")`, which writes `figures/<name>.png` and
`.svg`. Names are stable so the report and README can link them.
"""

from __future__ import annotations

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    try:  # headless runs (papermill, CI) need a non-interactive backend
        import IPython

        if IPython.get_ipython() is None:
            matplotlib.use("Agg")
    except ImportError:
        matplotlib.use("Agg")

import matplotlib.pyplot as plt

from loudfacts.paths import figures_dir

EDITOR_ORDER = ["unedited", "rome", "ft", "ft-l", "patch-donor", "patch-context", "hook-delta"]


def set_theme() -> None:
    """The report's one style: seaborn whitegrid, readable font sizes, no top/right spines."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.hashsalt": "loudfacts",  # deterministic SVG ids
        }
    )


def save_figure(fig, name: str, formats=("png", "svg")) -> list[str]:
    """Write `fig` to figures/<name>.<fmt> for each format; return the paths written."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name {name!r} must be a plain file stem like '01_trace_louvre'")
    out = []
    for fmt in formats:
        path = figures_dir() / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        out.append(str(path))
    return out


def save_table(df, name: str, floatfmt: str = ".3f") -> list[str]:
    """Write a result table to figures/<name>.csv and .md (the report index embeds some)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"table name {name!r} must be a plain file stem like '06_headline_table'")
    csv_path = figures_dir() / f"{name}.csv"
    md_path = figures_dir() / f"{name}.md"
    df.to_csv(csv_path)
    md_path.write_text(df.to_markdown(floatfmt=floatfmt) + "\n", encoding="utf-8")
    return [str(csv_path), str(md_path)]
