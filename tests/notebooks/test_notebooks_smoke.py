"""Every notebook runs end to end under papermill with params/smoke.yaml."""

from pathlib import Path

import pytest
import yaml

from loudfacts.report import build

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))

pytestmark = pytest.mark.notebooks
WITH_ROME = {"05", "06"}


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_parameters(source, tmp_path, monkeypatch):
    # Smoke figures go to a scratch folder: the committed figures/ are the report's.
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    params = ROOT / "params" / "smoke.yaml"
    if source.stem[:2] in WITH_ROME:
        # their claims cells compare ROME with the unedited model: run them with ROME too
        data = yaml.safe_load(params.read_text())
        eds = data[source.stem]["editors"]
        data[source.stem]["editors"] = eds[:1] + ["rome"] + [e for e in eds[1:] if e != "rome"]
        if "results_root" in data[source.stem]:  # 06's rows: a fresh folder per test run
            data[source.stem]["results_root"] = str(tmp_path / "results")
        params = tmp_path / "smoke.yaml"
        params.write_text(yaml.safe_dump(data))
    runs = build(params, tmp_path / "report", only=[source.stem], log_output=False)
    assert len(runs) == 1
    run = runs[0]
    assert run.ok, f"{source.stem} failed: {run.error}"
    assert (tmp_path / "report" / f"{source.stem}.html").exists()
    assert list((tmp_path / "figures").glob(f"{source.stem[:2]}_*.png")), "no figure saved"


def test_implications_notebook_runs_without_rome(tmp_path, monkeypatch):
    """05 with the smoke editors alone (no ROME): its claims cells then have no rows and must
    still show an empty table with the claims columns."""
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    runs = build(ROOT / "params" / "smoke.yaml", tmp_path / "report", only=["05"],
                 log_output=False)
    assert len(runs) == 1 and runs[0].ok, f"05 failed: {runs[0].error}"
