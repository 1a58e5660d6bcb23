"""Figure helpers: one seaborn theme for the whole report, `save_figure` with stable names, and
the report's figures: causal traces and their averages, and the evaluation's (NS vs NS+, the
ladder, NKL, implications).

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from loudfacts.atomic import write_json
from loudfacts.paths import figures_dir

if TYPE_CHECKING:
    from loudfacts.averages import AverageEffects
    from loudfacts.tracing import TraceResult

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
                 "rome-quiet": _COLORBLIND[8], "rome-scaled": "#000000"}  # a baseline: black


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
    write_json(path, data, indent=1, ensure_ascii=False)


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


# -- evaluation figures (re-exported by `loudfacts.evaluation`) ---------------------------
def editor_order(editors) -> list[str]:
    """`editors` in the report's order (`EDITOR_ORDER`), others after, sorted."""
    return [e for e in EDITOR_ORDER if e in set(editors)] + \
        sorted(set(editors) - set(EDITOR_ORDER))



def plot_ns_vs_nsplus(summary, metrics=("NS", "NS+", "NS+cool")):
    """Bar chart: neighbourhood success without / with the prefixes, per editor, with the
    bootstrap 95% CIs of `summarize` as error bars."""
    import matplotlib.pyplot as plt

    s = summary[summary["metric"].isin(metrics)]
    editors = editor_order(s["editor"].unique())
    fig, ax = plt.subplots(figsize=(1.3 * len(editors) + 2, 3.8))
    width = 0.8 / len(metrics)
    import seaborn as sns

    colors = sns.color_palette(n_colors=len(metrics))
    for j, m in enumerate(metrics):
        g = s[s["metric"] == m].set_index("editor").reindex(editors)
        x = np.arange(len(editors)) + (j - (len(metrics) - 1) / 2) * width
        err = np.stack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]]).clip(min=0)
        ax.bar(x, g["mean"], width, yerr=np.nan_to_num(err), capsize=3, label=m,
               color=colors[j])
    ax.set_xticks(np.arange(len(editors)), editors, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("neighbourhood success")
    ax.legend(title="prompts", ncol=len(metrics), loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.set_title("NS (CounterFact) vs NS+ (CounterFact+: edit statement prefixed)")
    return fig


def plot_ladder(ladder_sum):
    """Line plot: mean P(target_new) on unrelated prompts for each rung of the loud-fact
    ladder, one line per editor (left), and the fraction where it becomes top-1 (right)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    steps = ["none", "statement", "mention", "tangential", "unrelated"]
    d = ladder_sum.copy()
    d["step"] = pd_categorical(d["step"], steps)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    order = editor_order(d["editor"].unique())
    pal = editor_palette(order)
    sns.pointplot(data=d, x="step", y="p_new_post", hue="editor", hue_order=order, ax=axes[0],
                  order=steps, palette=pal)
    axes[0].set_ylabel("P(target_new) after the edit")
    axes[0].set_yscale("log")
    sns.pointplot(data=d, x="step", y="top1_post", hue="editor", hue_order=order, ax=axes[1],
                  order=steps, legend=False, palette=pal)
    axes[1].set_ylabel("fraction target_new is top-1")
    axes[1].set_ylim(-0.03, 1.03)
    for ax in axes:
        ax.set_xlabel("prefix before the unrelated prompt")
        ax.tick_params(axis="x", rotation=20)
    # outside the axes, so it covers no data
    axes[0].legend(fontsize=7, ncol=len(order), loc="upper center", frameon=False,
                   bbox_to_anchor=(1.1, -0.3))
    fig.suptitle("Loud-fact ladder: leak of the new object into unrelated prompts", y=1.03)
    return fig


def pd_categorical(values, categories):
    import pandas as pd

    return pd.Categorical(values, categories=categories, ordered=True)


def plot_nkl(df, column: str = "NKL"):
    """Strip + box plot of per-record NKL (nats, log scale) per editor (known records)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = df[df["known"].astype(bool)].copy()
    d[column] = d[column].astype(float).clip(lower=1e-9)
    order = editor_order(d["editor"].unique())
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2, 3.6))
    sns.boxplot(data=d, x="editor", y=column, order=order, ax=ax, color="0.9", fliersize=0)
    # seaborn jitters the points with numpy's global generator: seed it here (and give it back)
    # so the same rows draw the same figure in every build
    state = np.random.get_state()
    np.random.seed(0)
    try:
        sns.stripplot(data=d, x="editor", y=column, order=order, ax=ax, size=3, hue="editor",
                      palette=editor_palette(order), legend=False)
    finally:
        np.random.set_state(state)
    ax.set_yscale("log")
    ax.set_ylabel(f"{column}: KL(P_unedited || P_edited), nats" if column == "NKL" else column)
    ax.tick_params(axis="x", rotation=20)
    ax.set_title("Change of the next-token distribution on CounterFact+ prompts")
    return fig


def plot_implications(summary):
    """Fraction of probes where the new implied object beats the old one, before (grey) and
    after each editor's edit, per kind of implication."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from loudfacts.implications import IMPLICATION_KINDS

    kinds = [k for k in IMPLICATION_KINDS if k in set(summary["kind"])]
    order = editor_order(summary["editor"].unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], kinds):
        g = summary[summary["kind"] == k]
        sns.barplot(data=g, x="editor", y="implied_post", order=order, ax=ax, hue="editor",
                    palette=editor_palette(order), legend=False)
        ax.axhline(g["implied_pre"].mean(), color="0.4", ls="--", lw=1, label="before edit")
        ax.scatter(range(len(order)), g.set_index("editor").reindex(order)["efficacy"],
                   marker="x", color="k", zorder=3, label="edit efficacy")
        ax.set_title(k)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=35)
    axes[0][0].set_ylabel("P(new implied) > P(old implied)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Does the edit carry over to facts it implies?", y=1.04)
    return fig


# -- causal-tracing figures ----------------------------------------------------------------
_CMAP = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
_KIND_LABEL = {"hidden": "single restored layer (hidden state)", "mlp": "restored MLP",
               "attn": "restored attention"}


def plot_trace(result: TraceResult, ax=None, title: str | None = None, colorbar: bool = True):
    """ROME-style heatmap of one trace: tokens down, layers across, restored probability as
    colour; subject tokens marked with '*'. Returns the Figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(result.tokens) + 1.2))
    else:
        fig = ax.figure
    grid = result.scores.T  # (tokens, layers)
    im = ax.pcolormesh(grid, cmap=_CMAP.get(result.kind, "Purples"),
                       vmin=min(result.corrupt_prob, grid.min()), vmax=max(grid.max(), 1e-9))
    ax.invert_yaxis()
    s0, s1 = result.subject_span
    labels = [repr(t)[1:-1] + ("*" if s0 <= i < s1 else "") for i, t in enumerate(result.tokens)]
    ax.set_yticks(np.arange(len(labels)) + 0.5)
    ax.set_yticklabels(labels)
    step = max(1, result.n_layers // 6)
    ax.set_xticks(np.arange(0, result.n_layers, step) + 0.5)
    ax.set_xticklabels(range(0, result.n_layers, step))
    ax.set_xlabel("layer" + (f" (window {result.settings.get('window')})"
                             if result.kind != "hidden" else ""))
    sev = result.settings.get("severed")
    ax.set_title(title or (_KIND_LABEL.get(result.kind, result.kind)
                           + (f", {sev} severed" if sev else "")), fontsize=10)
    ax.grid(False)
    if colorbar:
        cb = fig.colorbar(im, ax=ax)
        cb.set_label(f"p({result.target.strip()})")
    return fig


def plot_traces(results: Sequence[TraceResult], suptitle: str | None = None):
    """Several traces of one fact side by side (e.g. hidden, MLP, attention)."""
    import matplotlib.pyplot as plt

    n_tok = len(results[0].tokens)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 0.35 * n_tok + 1.6),
                             squeeze=False)
    for i, (r, ax) in enumerate(zip(results, axes[0])):
        plot_trace(r, ax=ax)
        if i:
            ax.set_yticklabels([])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_severed(results: dict, token: int | None = None, ax=None):
    """Indirect effect of restoring the hidden state at one token, layer by layer, with the
    MLP or attention of the layers above severed (ROME's Figure 2-style bars as lines).

    Args:
        results: label -> TraceResult (kind "hidden", severed None / "mlp" / "attn").
        token: the token column (default: the last subject token).
    """
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    t = first.subject_span[1] - 1 if token is None else token
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    colors = {None: "tab:purple", "mlp": "tab:green", "attn": "tab:red"}
    for label, r in results.items():
        ax.plot(np.arange(r.n_layers), r.indirect_effect[:, t], marker="o", ms=3, label=label,
                color=colors.get(r.settings.get("severed"), None))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer of the restored hidden state")
    ax.set_ylabel("indirect effect")
    ax.set_title(f"restoring {first.tokens[t]!r} with modules above severed", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_average_effects(avg: AverageEffects, kinds: Sequence[str] | None = None):
    """ROME's average indirect effect figure: token class x layer heatmap per kind."""
    from loudfacts.tracing import TOKEN_CLASSES

    import matplotlib.pyplot as plt

    kinds = list(kinds or avg.effects)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.2), squeeze=False)
    for i, (kind, ax) in enumerate(zip(kinds, axes[0])):
        grid = avg.effects[kind]
        im = ax.pcolormesh(np.nan_to_num(grid), cmap=_CMAP.get(kind, "Purples"))
        ax.invert_yaxis()
        ax.set_yticks(np.arange(len(TOKEN_CLASSES)) + 0.5)
        ax.set_yticklabels(
            [f"{c} (n={n})" for c, n in zip(TOKEN_CLASSES, avg.counts[kind])] if i == 0 else []
        )
        n_layers = grid.shape[1]
        step = max(1, n_layers // 6)
        ax.set_xticks(np.arange(0, n_layers, step) + 0.5)
        ax.set_xticklabels(range(0, n_layers, step))
        ax.set_xlabel("layer")
        ax.set_title(f"average indirect effect, {kind}", fontsize=10)
        ax.grid(False)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{avg.settings['model']}: {avg.n_facts} known facts, "
                 f"{avg.settings['samples']} noise samples")
    fig.tight_layout()
    return fig


def plot_average_lines(avg: AverageEffects, token_class: str = "last subject token", ax=None):
    """Average indirect effect at one token class, layer by layer, one line per kind."""
    from loudfacts.tracing import TOKEN_CLASSES

    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    i = TOKEN_CLASSES.index(token_class)
    colors = {"hidden": "tab:purple", "mlp": "tab:green", "attn": "tab:red"}
    for kind, grid in avg.effects.items():
        ax.plot(np.arange(grid.shape[1]), grid[i], marker="o", ms=3, label=kind,
                color=colors.get(kind))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("average indirect effect")
    ax.set_title(f"{token_class} ({avg.n_facts} facts)", fontsize=10)
    ax.legend(fontsize=8)
    return fig
