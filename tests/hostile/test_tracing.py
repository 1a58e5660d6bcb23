"""Hostile inputs to causal tracing: each must fail fast, before any forward pass, with an error
that names the bad input (issue 15). Tiny random model; the whole sweep takes seconds."""

from __future__ import annotations

import pytest

import loudfacts.tracing as tracing
from loudfacts.tokens import SubjectNotFoundError
from loudfacts.averages import average_effects
from loudfacts.tracing import AmbiguousSubjectError, noise_scale, trace

PROMPT = "The Louvre is located in the city of"
SUBJECT = "Louvre"
TWICE = "The Louvre is big. The Louvre is located in the city of"
BASE = {"samples": 1, "noise": 0.3, "cache": False}


@pytest.fixture(autouse=True)
def _no_forward(monkeypatch, tmp_path):
    """Any forward pass is a failure here: the input must be refused before it."""
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran before the bad input was refused")

    for name in ("_trace_fast_suffix", "_trace_fast_full", "_trace_reference"):
        monkeypatch.setattr(tracing, name, refuse)


# (case id, keyword arguments over BASE, expected error, text the message must contain)
TRACE_CASES = [
    ("kind", {"kind": "neurons"}, ValueError, "'neurons'"),
    ("kind-none", {"kind": None}, ValueError, "kind None"),
    ("severed-kind", {"kind": "mlp", "severed": "mlp"}, ValueError, "severed='mlp'"),
    ("severed", {"severed": "heads"}, ValueError, "'heads'"),
    ("method", {"method": "slow"}, ValueError, "'slow'"),
    ("samples-0", {"samples": 0}, ValueError, "samples must be a positive int, got 0"),
    ("samples-neg", {"samples": -3}, ValueError, "got -3"),
    ("samples-float", {"samples": 2.5}, ValueError, "got 2.5"),
    ("samples-bool", {"samples": True}, ValueError, "got True"),
    ("noise-nan", {"noise": float("nan")}, ValueError, "got nan"),
    ("noise-inf", {"noise": float("inf")}, ValueError, "got inf"),
    ("noise-neg", {"noise": -1.0}, ValueError, "got -1.0"),
    ("noise-str", {"noise": "0.3"}, ValueError, "got '0.3'"),
    ("window-100", {"kind": "mlp", "window": 100}, ValueError, "window 100"),
    ("window-attn", {"kind": "attn", "window": 3}, ValueError, "2 layers"),
    ("window-0", {"kind": "mlp", "window": 0}, ValueError, "got 0"),
    ("window-float", {"kind": "mlp", "window": 1.5}, ValueError, "got 1.5"),
    ("seed", {"seed": "zero"}, ValueError, "got 'zero'"),
    ("batch-rows", {"batch_rows": 0}, ValueError, "batch_rows"),
    ("subject-empty", {"subject": ""}, ValueError, "subject ''"),
    ("subject-blank", {"subject": "   "}, ValueError, "subject '   '"),
    ("subject-none", {"subject": None}, ValueError, "subject None"),
    ("subject-absent", {"subject": "Colosseum"}, SubjectNotFoundError, "'Colosseum'"),
    ("subject-absent-prompt", {"subject": "Colosseum"}, SubjectNotFoundError, repr(PROMPT)),
    ("subject-case", {"subject": "louvre"}, SubjectNotFoundError, "'louvre'"),
    ("subject-twice", {"prompt": TWICE}, AmbiguousSubjectError, repr(TWICE)),
    ("occurrence-range", {"prompt": TWICE, "occurrence": 2}, ValueError, "occurrence 2"),
    ("occurrence-type", {"occurrence": "last"}, ValueError, "'last'"),
    ("prompt-empty", {"prompt": ""}, ValueError, "prompt ''"),
    ("prompt-none", {"prompt": None}, ValueError, "prompt None"),
    ("template-two-slots", {"prompt": "{} and {} are in"}, ValueError, "'{} and {} are in'"),
    ("prompt-too-long", {"prompt": "The Louvre is " + "in the city of " * 200}, ValueError,
     "context"),
    ("target-multi", {"target": "New York"}, ValueError, "'New York'"),
    ("target-multi-first-token", {"target": "New York"}, ValueError, "first_token=True"),
    ("target-empty", {"target": ""}, ValueError, "target ''"),
    ("target-float", {"target": 3.5}, ValueError, "target 3.5"),
    ("target-id-big", {"target": 10**6}, ValueError, "token id 1000000"),
    ("target-id-vocab", {"target": 300}, ValueError, "size 300"),
    ("target-id-neg", {"target": -1}, ValueError, "token id -1"),
]


@pytest.mark.parametrize("kw,error,text", [c[1:] for c in TRACE_CASES],
                         ids=[c[0] for c in TRACE_CASES])
def test_trace_refuses(tiny_llama, kw, error, text):
    args = {"prompt": PROMPT, "subject": SUBJECT, **BASE, **kw}
    with pytest.raises(error) as err:
        trace(tiny_llama, args.pop("prompt"), args.pop("subject"), **args)
    assert text in str(err.value)


FACT = {"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 1, "source": "t"}
AVG = {"kinds": ("mlp",), "samples": 1, "noise": 0.3, "window": 2, "progress": False}

AVERAGE_CASES = [
    ("kind", {"kinds": ("hidden", "neurons")}, [FACT], ValueError, "'neurons'"),
    ("kinds-empty", {"kinds": ()}, [FACT], ValueError, "kinds is empty"),
    ("samples-0", {"samples": 0}, [FACT], ValueError, "got 0"),
    ("noise-nan", {"noise": float("nan")}, [FACT], ValueError, "got nan"),
    ("window-100", {"window": 100}, [FACT], ValueError, "window 100"),
    ("workers", {"workers": 0}, [FACT], ValueError, "workers"),
    ("facts-empty", {}, [], ValueError, "facts is empty"),
    ("fact-no-subject", {}, [{**FACT, "subject": None}], ValueError, "fact 0 (t:1)"),
    ("fact-subject-absent", {}, [FACT, {**FACT, "id": 2, "subject": "Colosseum"}],
     SubjectNotFoundError, "fact 1 (t:2)"),
    ("fact-subject-absent-name", {}, [{**FACT, "subject": "Colosseum"}], SubjectNotFoundError,
     "'Colosseum'"),
    ("fact-subject-twice", {}, [{**FACT, "text": TWICE}], AmbiguousSubjectError, repr(TWICE)),
    ("fact-multi-token", {"first_token": False}, [{**FACT, "target_true": "New York"}],
     ValueError, "'New York'"),
    ("fact-no-prompt", {}, [{**FACT, "text": ""}], ValueError, "fact 0"),
]


@pytest.mark.parametrize("kw,facts,error,text", [c[1:] for c in AVERAGE_CASES],
                         ids=[c[0] for c in AVERAGE_CASES])
def test_average_effects_refuses(tiny_llama, kw, facts, error, text):
    with pytest.raises(error) as err:
        average_effects(tiny_llama, facts, **{**AVG, **kw})
    assert text in str(err.value)


NOISE_CASES = [
    ("multiplier-nan", {"multiplier": float("nan")}, "got nan"),
    ("multiplier-inf", {"multiplier": float("inf")}, "got inf"),
    ("multiplier-neg", {"multiplier": -3.0}, "got -3.0"),
    ("multiplier-str", {"multiplier": "3"}, "got '3'"),
    ("multiplier-none", {"multiplier": None}, "got None"),
    ("estimator", {"estimator": "median"}, "'median'"),
]


@pytest.mark.parametrize("kw,text", [c[1:] for c in NOISE_CASES], ids=[c[0] for c in NOISE_CASES])
def test_noise_scale_refuses(tiny_llama, kw, text):
    with pytest.raises(ValueError) as err:
        noise_scale(tiny_llama, **kw)
    assert text in str(err.value)
