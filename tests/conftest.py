"""Shared fixtures: the embedded model once per session, and tiny random models."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M-Instruct (float32, CPU), loaded once per test session."""
    from loudfacts.models import load_model

    return load_model()


def report_params(stem: str) -> dict:
    """A notebook's parameters as `make report` runs it: the notebook's parameters cell, then
    params/report.yaml's `common` section and the notebook's own section over it."""
    import jupytext
    import yaml

    from loudfacts.paths import repo_path

    data = yaml.safe_load(repo_path("params", "report.yaml").read_text())
    notebook: dict = {}
    cell = next(c for c in jupytext.read(repo_path("notebooks", f"{stem}.py")).cells
                if "parameters" in c.metadata.get("tags", []))
    exec(compile(cell.source, stem, "exec"), {}, notebook)
    return {**notebook, **(data.get("common") or {}), **(data.get(stem) or {})}


@pytest.fixture(scope="session")
def report_params_of():
    """`report_params`, for tests of several notebooks' parameters."""
    return report_params


@pytest.fixture(scope="session")
def report_params_06() -> dict:
    """Notebook 06's parameters as `make report` runs it (`report_params`)."""
    return report_params("06_specificity_plus")


@pytest.fixture(scope="session")
def tiny_llama():
    from loudfacts.models import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="module")
def tiny3():
    """A 3-layer tiny random Llama, one per test module (the edit-layer tests of leak and
    rome-quiet)."""
    from loudfacts.models import tiny_model

    return tiny_model("llama", n_layers=3)


@pytest.fixture
def scratch_cache(tmp_path, monkeypatch):
    """Point `LOUDFACTS_CACHE` at the test's tmp folder (use with pytest.mark.usefixtures)."""
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))


@pytest.fixture(scope="session")
def tiny_gpt2():
    from loudfacts.models import tiny_model

    return tiny_model("gpt2")


@contextlib.contextmanager
def _broken(weight):
    """The weight filled with NaN inside the block, its values copied back on exit."""
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@pytest.fixture(scope="session")
def broken_weight():
    """`with broken_weight(w):` — w full of NaN inside the block, restored bit-exactly after
    (for checks that must not remember a "no" given while a weight is broken)."""
    return _broken


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# ROME's on-disk components cache stays off in tests: they monkeypatch and time fresh
# optimisations (tests/unit/test_rome_components_cache.py switches it on in a scratch cache).
os.environ["LOUDFACTS_ROME_COMPONENTS_CACHE"] = "0"
