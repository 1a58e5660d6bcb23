"""Figure helpers: one seaborn theme for the whole report, and `save_figure` with stable names.

Builders in this module (and in the topic modules) return a matplotlib Figure; notebooks show
it and call `save_figure(fig, "01_trace_louvre_hidden", caption="...")`, which writes
`figures/<name>.png` and `.svg`, records the caption (what to look at) in
`figures/captions.json` and shows it under the figure in the notebook. Names are stable so the
report and README can link them. `save_findings("01", text)` writes the two or three sentences
of what a notebook found, with this run's numbers, for the report's index.
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

import json
import os

import matplotlib.pyplot as plt

from loudfacts.paths import figures_dir

CAPTIONS = "captions.json"

EDITOR_ORDER = ["unedited", "rome", "ft", "ft-l", "patch-donor", "patch-context", "hook-delta",
                "hook-gated"]
# One colour per editor in every figure of the report (seaborn's colour-blind palette, in
# EDITOR_ORDER; the unedited model is grey). Editors not listed get the next free colours.
_COLORBLIND = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4",
               "#949494", "#ece133", "#56b4e9"]
EDITOR_COLORS = {"unedited": "#949494", "rome": _COLORBLIND[0], "ft": _COLORBLIND[1],
                 "ft-l": _COLORBLIND[2], "patch-donor": _COLORBLIND[3],
                 "patch-context": _COLORBLIND[4], "hook-delta": _COLORBLIND[5],
                 "hook-gated": _COLORBLIND[6], "r-rome": _COLORBLIND[9],
                 "rome-quiet": _COLORBLIND[8]}


def editor_palette(editors) -> dict:
    """{editor: colour} for these editors, the same colour for an editor in every figure."""
    spare = [c for c in _COLORBLIND if c not in EDITOR_COLORS.values()]
    out = {}
    for e in editors:
        if e not in EDITOR_COLORS:
            EDITOR_COLORS[e] = spare.pop(0) if spare else "#333333"
        out[e] = EDITOR_COLORS[e]
    return out


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


def save_figure(fig, name: str, caption: str, formats=("png", "svg")) -> None:
    """Write `fig` to figures/<name>.<fmt> for each format, record its caption, and show the
    caption in the notebook (nothing is returned, so a cell ending with this call shows the
    figure and its caption, not file paths).

    Args:
        caption: what the figure shows and what to look at in it (one or two sentences,
            Markdown); required, so no figure reaches the report without one.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name {name!r} must be a plain file stem like '01_trace_louvre'")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"figure {name!r} needs a caption saying what to look at")
    for fmt in formats:
        path = figures_dir() / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    captions = read_captions()
    captions[name] = " ".join(caption.split())
    _write_json(figures_dir() / CAPTIONS, dict(sorted(captions.items())))
    _show_markdown(f"*Figure `{name}`.* {captions[name]}")


def read_captions() -> dict:
    """{figure name: caption} of every figure saved with `save_figure` in figures/."""
    path = figures_dir() / CAPTIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_findings(prefix: str, text: str, figure: str | None = None) -> None:
    """Write figures/<prefix>_findings.json: what a notebook found, in two or three sentences
    with this run's numbers, and its key figure; the report's index shows both.

    Args:
        prefix: the notebook's number, "01".
        text: the findings (Markdown), composed from this run's numbers.
        figure: name of the key figure (saved with `save_figure`; it must have a caption).
    """
    if not (isinstance(prefix, str) and len(prefix) == 2 and prefix.isdigit()):
        raise ValueError(f"findings prefix {prefix!r} must be a notebook number like '01'")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"findings of notebook {prefix} are empty")
    if figure is not None and figure not in read_captions():
        raise ValueError(f"key figure {figure!r} of notebook {prefix} was not saved with "
                         "save_figure (no caption recorded)")
    path = figures_dir() / f"{prefix}_findings.json"
    _write_json(path, {"text": " ".join(text.split()), "figure": figure})
    _show_markdown("**Findings.** " + text.strip())


def clear_outputs(prefix: str) -> int:
    """Remove a notebook's figures, tables, findings and captions (`NN_*` in figures/) before
    it runs again, so figures/ holds exactly what the last run wrote. Returns files removed."""
    if not (isinstance(prefix, str) and len(prefix) == 2 and prefix.isdigit()):
        raise ValueError(f"prefix {prefix!r} must be a notebook number like '01'")
    removed = 0
    for path in figures_dir().glob(f"{prefix}_*"):
        if path.is_file():
            path.unlink()
            removed += 1
    captions = read_captions()
    kept = {k: v for k, v in captions.items() if not k.startswith(f"{prefix}_")}
    if kept != captions:
        _write_json(figures_dir() / CAPTIONS, kept)
    return removed


def read_findings(prefix: str) -> dict | None:
    """{"text", "figure"} written by `save_findings(prefix, ...)`, or None."""
    try:
        data = json.loads((figures_dir() / f"{prefix}_findings.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and data.get("text") else None
    except (OSError, ValueError):
        return None


def _write_json(path, data) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _show_markdown(text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(Markdown(text))


def save_table(df, name: str, floatfmt: str = ".3f") -> None:
    """Write a result table to figures/<name>.csv and .md (the report index embeds some)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"table name {name!r} must be a plain file stem like '06_headline_table'")
    csv_path = figures_dir() / f"{name}.csv"
    md_path = figures_dir() / f"{name}.md"
    df.to_csv(csv_path)
    md_path.write_text(df.to_markdown(floatfmt=floatfmt) + "\n", encoding="utf-8")
