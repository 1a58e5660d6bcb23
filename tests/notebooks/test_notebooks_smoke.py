"""Every notebook runs end to end under papermill with params/smoke.yaml."""

from pathlib import Path

import pytest

from loudfacts.report import build

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_parameters(source, tmp_path, monkeypatch):
    # Smoke figures go to a scratch folder: the committed figures/ are the report's.
    monkeypatch.setenv("LOUDFACTS_FIGURES", str(tmp_path / "figures"))
    runs = build(ROOT / "params" / "smoke.yaml", tmp_path / "report", only=[source.stem],
                 log_output=False)
    assert len(runs) == 1
    run = runs[0]
    assert run.ok, f"{source.stem} failed: {run.error}"
    assert (tmp_path / "report" / f"{source.stem}.html").exists()
    assert list((tmp_path / "figures").glob(f"{source.stem[:2]}_*.png")), "no figure saved"
