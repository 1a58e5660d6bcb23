"""Causal tracing on the embedded SmolLM2: the fast path reproduces ROME's loop, and the
Louvre trace shows what a known fact should show."""

from __future__ import annotations

import numpy as np
import pytest

from loudfacts.tracing import trace

pytestmark = pytest.mark.integration

PROMPT = "The Louvre is located in the city of"
SUBJECT = "Louvre"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("kind", ["hidden", "mlp"])
def test_fast_equals_reference_full_grid(model, kind):
    short = "The Louvre is in"  # 5 tokens keep ROME's loop (one forward per cell) short
    kw = {"kind": kind, "samples": 2, "seed": 0, "cache": False}
    fast = trace(model, short, SUBJECT, **kw)
    ref = trace(model, short, SUBJECT, method="reference", **kw)
    assert fast.scores.shape == (model.n_layers, len(model.encode(short)))
    assert np.abs(fast.scores - ref.scores).max() <= 1e-4
    assert fast.clean_prob == pytest.approx(ref.clean_prob, abs=1e-5)
    assert fast.corrupt_prob == pytest.approx(ref.corrupt_prob, abs=1e-5)
    assert fast.scores.max() - fast.scores.min() > 0.05  # the grid has structure to compare


def test_louvre_trace_looks_like_a_known_fact(model):
    r = trace(model, PROMPT, SUBJECT, kind="hidden", samples=2, cache=False)
    assert r.clean_prob > 0.5 > r.corrupt_prob + 0.2  # noise on the subject removes the fact
    last_subject = r.subject_span[1] - 1
    # restoring the last subject token early on brings most of the fact back ...
    assert r.scores[:5, last_subject].max() > 0.5 * r.clean_prob
    # ... and restoring the last token at the top is the clean run
    assert r.scores[-1, -1] == pytest.approx(r.clean_prob, abs=1e-4)
    assert np.all((r.scores >= 0) & (r.scores <= 1))
