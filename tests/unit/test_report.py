"""The report runner: parameters, rendering, the index, and failures that name the cell."""

from pathlib import Path

import yaml

from loudfacts.report import load_params, main

NB_OK = '''# %% [markdown]
# # 01 · A passing section
#
# It sets a number and saves nothing.

# %% tags=["parameters"]
n = 1

# %%
print("value", n * 2)
'''

NB_FAIL = '''# %% [markdown]
# # 02 · A failing section

# %% tags=["parameters"]
n = 1

# %%
x = n + 1

# %%
raise RuntimeError("boom in cell")
'''


def test_params_merge_common_and_notebook_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"common": {"seed": 0, "n": 1}, "01_topic": {"n": 5}}))
    assert load_params(f, "01_topic") == {"seed": 0, "n": 5}
    assert load_params(f, "02_other") == {"seed": 0, "n": 1}


def test_failed_cell_gives_nonzero_exit_naming_notebook_and_cell(tmp_path, capsys, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "01_ok.py").write_text(NB_OK)
    (nbs / "02_fail.py").write_text(NB_FAIL)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"01": {"n": 21}}))
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    out = tmp_path / "report"
    rc = main(["--params", str(params), "--out", str(out), "--notebooks", str(nbs), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "02_fail" in err and "RuntimeError" in err and "boom in cell" in err
    assert "cell 3" in err  # the third code cell (after the injected parameters) failed
    index = (out / "index.md").read_text()
    assert "01 · A passing section" in index and "FAILED" in index
    executed = Path(out / "executed" / "01_ok.ipynb").read_text()
    assert "value 42" in executed  # the parameter file's value reached the notebook
    html = (out / "01_ok.html").read_text()
    assert "value 42" in html and "print(" not in html  # code hidden from readers


NB_FIG = '''# %% [markdown]
# # 03 · A section with a figure
#
# What does a line look like?

# %% tags=["parameters"]
caption = "A rising line: look at its slope."

# %%
import matplotlib.pyplot as plt
from loudfacts.plotting import save_figure, save_findings

fig, ax = plt.subplots()
ax.plot([0, 1], [0, 2])
save_figure(fig, "03_line", caption=caption)
save_findings("03", f"The slope is {2 / 1:.1f}.", figure="03_line")
'''


def test_index_shows_key_figure_caption_and_findings(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "03_fig.py").write_text(NB_FIG)
    figs = tmp_path / "figures"
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(figs))
    figs.mkdir()
    (figs / "03_stale.png").write_bytes(b"old")  # from an earlier run: removed before running
    out = tmp_path / "report"
    from loudfacts.report import build

    runs = build(None, out, notebooks_dir=nbs, log_output=False)
    assert runs[0].ok, runs[0].error
    assert not (figs / "03_stale.png").exists()
    index = (out / "index.md").read_text()
    assert "03_line.png" in index and "look at its slope" in index
    assert "**What it shows.** The slope is 2.0." in index
    assert "look at its slope" in (out / "index.html").read_text()


def test_a_figure_without_caption_fails_the_notebook(tmp_path, monkeypatch):
    import pytest

    from loudfacts.plotting import save_figure
    from loudfacts.report import build

    with pytest.raises(ValueError, match="needs a caption"):
        save_figure(None, "03_x", caption=" ")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    # a figure written behind save_figure's back has no caption: the run is marked failed
    (nbs / "04_raw.py").write_text(NB_FIG.replace("03", "04").replace(
        'save_figure(fig, "04_line", caption=caption)', 'fig.savefig(str(__import__("loudfacts.paths").paths.figures_dir() / "04_line.png"))').replace(
        ', figure="04_line"', ""))
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    runs = build(None, tmp_path / "report", notebooks_dir=nbs, log_output=False)
    assert not runs[0].ok and "04_line" in runs[0].error and "caption" in runs[0].error


def test_params_that_no_notebook_takes_or_of_the_wrong_type_are_errors(tmp_path, capsys):
    import pytest

    from loudfacts.report import ParamsError, build

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "01_ok.py").write_text(NB_OK)
    params = tmp_path / "p.yaml"
    for data, match in [({"01": {"m": 2}}, r"'m'.*01_ok"),
                        ({"01_ok": {"n": True}}, r"'n' for notebook 01_ok is bool"),
                        ({"common": {"n": "2"}}, r"'n' for notebook 01_ok is str")]:
        params.write_text(yaml.safe_dump(data))
        with pytest.raises(ParamsError, match=match):
            build(params, tmp_path / "out", notebooks_dir=nbs, log_output=False)
    params.write_text("common:\n  n: [1\n")
    rc = main(["--params", str(params), "--out", str(tmp_path / "out"), "--notebooks",
               str(nbs), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and str(params) in err and "line 3, column 1" in err
    assert not (tmp_path / "out").exists()


def test_index_html_is_rendered_from_index_md():
    from loudfacts.report import index_html

    page = index_html("# Title\n\n*caption* with `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<em>caption</em>" in page and "<code>code</code>" in page
    assert "<table>" in page and "<td>2</td>" in page
    assert "*caption*" not in page and "`code`" not in page


def test_committed_index_html_matches_committed_index_md():
    from loudfacts.paths import REPO_ROOT
    from loudfacts.report import index_html

    md = REPO_ROOT / "report" / "index.md"
    assert (REPO_ROOT / "report" / "index.html").read_text() == index_html(md.read_text())


def test_rendered_pages_drop_logs_and_progress_widgets_but_keep_results(tmp_path):
    import nbformat

    from loudfacts.report import WIDGET_MIME, render_html, strip_logs

    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("work()")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="edits: 100%|#####| 6/6 LOGLINE"),
        nbformat.v4.new_output("stream", name="stdout", text="ES 0.91 RESULTLINE"),
        nbformat.v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "w1"},
                                                     "text/plain": "WIDGETTEXT"}),
        nbformat.v4.new_output("display_data", data={"text/plain": "TABLETEXT"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), code]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    render_html(path, tmp_path / "nb.html")
    html = (tmp_path / "nb.html").read_text()
    assert "RESULTLINE" in html and "TABLETEXT" in html
    assert "LOGLINE" not in html and "WIDGETTEXT" not in html
    again = nbformat.read(path, as_version=4)  # the executed notebook itself keeps its logs
    assert strip_logs(again) == 2 and strip_logs(again) == 0


def test_nkl_strip_plot_is_the_same_figure_every_build():
    """seaborn jitters strip plots with numpy's global generator: plot_nkl seeds it, so the
    committed figure does not move between builds, and leaves the caller's state alone."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from loudfacts.plotting import plot_nkl

    df = pd.DataFrame({"editor": ["rome"] * 6 + ["ft"] * 6, "known": True,
                       "NKL": np.linspace(1e-4, 1e-1, 12)})

    def offsets():
        fig = plot_nkl(df)
        pts = np.concatenate([c.get_offsets() for c in fig.axes[0].collections
                              if len(c.get_offsets())])
        plt.close(fig)
        return pts

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = offsets()
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(7)
    assert np.array_equal(offsets(), first)
    assert len(first) == 12 and not np.allclose(first[:, 0], np.round(first[:, 0]))  # jittered
