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
