"""Causal tracing on tiny random models: fast path == ROME's reference loop, bad input, caches."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from loudfacts.forward import supports_kv_prefix
from loudfacts.models import tiny_model
from loudfacts.tokens import SubjectNotFoundError
from loudfacts.tracing import (
    TOKEN_CLASSES,
    TraceResult,
    average_effects,
    choose_edit_layer,
    noise_scale,
    token_classes,
    trace,
)

PROMPT = "The Louvre is located in the city of"
SUBJECT = "Louvre"


def _sharpened(family: str):
    """A tiny model whose final norm is scaled up, so that probabilities are far from uniform
    and restoring a state moves them by much more than the test tolerance."""
    m = tiny_model(family, seed=1)
    with torch.no_grad():
        for name, p in m.hf.named_parameters():
            if name.startswith(("model.norm.", "transformer.ln_f.")) and "weight" in name:
                p.mul_(15)
    return m


@pytest.fixture(scope="module")
def sharp_llama():
    return _sharpened("llama")


@pytest.fixture(scope="module")
def sharp_gpt2():
    return _sharpened("gpt2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "cache"))


CASES = [("hidden", None), ("mlp", None), ("attn", None), ("hidden", "mlp"), ("hidden", "attn")]


@pytest.mark.parametrize("method", ["fast", "fast-full"])
@pytest.mark.parametrize("kind,severed", CASES)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fast_matches_reference(family, kind, severed, method, sharp_llama, sharp_gpt2):
    m = sharp_llama if family == "llama" else sharp_gpt2
    kw = {"kind": kind, "severed": severed, "target": "France", "samples": 3, "noise": 0.3, "window": 2,
              "seed": 3, "cache": False}
    if method == "fast":  # the suffix path (keys/values of earlier positions reused) is taken
        assert supports_kv_prefix(m)
    fast = trace(m, PROMPT, SUBJECT, method=method, **kw)
    ref = trace(m, PROMPT, SUBJECT, method="reference", **kw)
    assert fast.scores.shape == (m.n_layers, len(m.encode(PROMPT)))
    top = ref.scores.max()
    # 1e-4 absolute, and also 1e-4 relative, since tiny models' probabilities are small
    assert np.abs(fast.scores - ref.scores).max() <= 1e-4 * min(1.0, top)
    assert np.isclose(fast.clean_prob, ref.clean_prob, rtol=1e-5, atol=0)
    assert np.isclose(fast.corrupt_prob, ref.corrupt_prob, rtol=1e-5, atol=0)
    # the grid is not flat: restoring states moves the probability by far more than the
    # tolerance, so the comparison can fail
    assert ref.scores.max() - ref.scores.min() > 1e-2 * top
    assert np.allclose(fast.indirect_effect, fast.scores - fast.corrupt_prob)
    # the fast path drops lower blocks while it runs; they must all be back
    assert len(m.module(m.arch.layers)) == m.n_layers


def test_fast_path_falls_back_where_the_bridge_ignores_stored_keys():
    # GPT-J's attention bridge does not read `layer_past`: the check says so, and the fast path
    # then runs full rows and still equals ROME's loop.
    m = tiny_model("gptj", seed=1)
    assert not supports_kv_prefix(m)
    kw = {"kind": "mlp", "target": "France", "samples": 2, "noise": 0.3, "window": 2, "seed": 1,
          "cache": False}
    fast = trace(m, PROMPT, SUBJECT, **kw)
    ref = trace(m, PROMPT, SUBJECT, method="reference", **kw)
    assert np.abs(fast.scores - ref.scores).max() <= 1e-4 * min(1.0, ref.scores.max())


def test_restoring_everything_at_the_end_gives_the_clean_run(sharp_llama):
    r = trace(sharp_llama, PROMPT, SUBJECT, target="France", samples=3, noise=0.3, cache=False)
    # last block's output at the last token is the whole input of the unembedding
    assert r.scores[-1, -1] == pytest.approx(r.clean_prob, abs=1e-6)
    # tokens before the subject never see the noise: restoring them changes nothing
    s0 = r.subject_span[0]
    assert np.allclose(r.scores[:, :s0], r.corrupt_prob, atol=1e-6)
    assert 0.0 <= r.corrupt_prob <= 1.0 and 0.0 <= r.clean_prob <= 1.0


def test_noise_matters_and_seed_reproduces(sharp_llama):
    a = trace(sharp_llama, PROMPT, SUBJECT, target="France", samples=2, noise=0.3, seed=0, cache=False)
    b = trace(sharp_llama, PROMPT, SUBJECT, target="France", samples=2, noise=0.3, seed=0, cache=False)
    c = trace(sharp_llama, PROMPT, SUBJECT, target="France", samples=2, noise=0.3, seed=1, cache=False)
    assert np.array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)
    zero = trace(sharp_llama, PROMPT, SUBJECT, target="France", samples=2, noise=0.0, cache=False)
    assert np.allclose(zero.scores, zero.clean_prob, atol=1e-6)


def test_template_and_greedy_target(tiny_llama):
    r = trace(tiny_llama, "The {} is located in the city of", SUBJECT, samples=2, cache=False)
    greedy = tiny_llama.top_tokens(PROMPT, 1)[0][0]
    assert r.target == greedy
    assert r.settings["prompt"] == PROMPT
    assert r.tokens == tiny_llama.str_tokens(PROMPT)


def test_cache_roundtrip_and_corrupt_cache(tiny_llama, tmp_path):
    kw = {"samples": 2, "noise": 0.5, "kind": "mlp", "window": 2}
    first = trace(tiny_llama, PROMPT, SUBJECT, **kw)
    files = list((tmp_path / "cache" / "tracing").glob("trace-*.npz"))
    assert len(files) == 1
    again = trace(tiny_llama, PROMPT, SUBJECT, **kw)
    assert np.array_equal(first.scores, again.scores) and again.kind == "mlp"
    files[0].write_bytes(b"not an npz")
    healed = trace(tiny_llama, PROMPT, SUBJECT, **kw)
    assert np.array_equal(first.scores, healed.scores)
    # a different input is a different key
    trace(tiny_llama, PROMPT, SUBJECT, **{**kw, "window": 1})
    assert len(list((tmp_path / "cache" / "tracing").glob("trace-*.npz"))) == 2


def test_save_load(tiny_llama, tmp_path):
    r = trace(tiny_llama, PROMPT, SUBJECT, samples=2, cache=False)
    r.save(tmp_path / "r.npz")
    back = TraceResult.load(tmp_path / "r.npz")
    assert np.array_equal(back.scores, r.scores)
    assert back.subject_span == r.subject_span and back.tokens == r.tokens
    assert back.settings == json.loads(json.dumps(r.settings))


def test_subject_absent_names_both(tiny_llama):
    with pytest.raises(SubjectNotFoundError) as err:
        trace(tiny_llama, PROMPT, "Colosseum", samples=1, cache=False)
    assert "Colosseum" in str(err.value) and PROMPT in str(err.value)


def test_subject_at_position_zero_warns(tiny_llama):
    with pytest.warns(UserWarning, match="token 0"):
        trace(tiny_llama, "Louvre is located in the city of", SUBJECT, samples=1, cache=False)


def test_subject_later_does_not_warn(tiny_llama):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trace(tiny_llama, PROMPT, SUBJECT, samples=1, cache=False)


def test_prompt_longer_than_context(tiny_llama):
    long = "The Louvre is " + "in the city of " * 200
    with pytest.raises(ValueError, match="context"):
        trace(tiny_llama, long, SUBJECT, samples=1, cache=False)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"kind": "neurons"}, "kind"),
        ({"kind": "mlp", "severed": "mlp"}, "severed"),
        ({"severed": "heads"}, "severed"),
        ({"samples": 0}, "samples"),
        ({"method": "slow"}, "method"),
        ({"noise": -1.0}, "noise"),
    ],
)
def test_bad_arguments(tiny_llama, kw, match):
    with pytest.raises(ValueError, match=match):
        trace(tiny_llama, PROMPT, SUBJECT, cache=False, **kw)


def test_noise_scale_is_three_std_and_cached(tiny_llama, tmp_path):
    s3 = noise_scale(tiny_llama)
    s1 = noise_scale(tiny_llama, multiplier=1.0)
    assert s3 == pytest.approx(3 * s1) and s1 > 0
    emb_std = tiny_llama.hf.get_input_embeddings().weight.std().item()
    assert 0.2 * emb_std < s1 < 5 * emb_std
    assert list((tmp_path / "cache" / "tracing").glob("noise-*.json"))


def test_token_classes():
    c = token_classes((1, 4), 9)
    assert c["first subject token"] == [1]
    assert c["middle subject tokens"] == [2]
    assert c["last subject token"] == [3]
    assert c["first subsequent token"] == [4]
    assert c["further tokens"] == [5, 6, 7]
    assert c["last token"] == [8]
    single = token_classes((2, 3), 4)
    assert single["middle subject tokens"] == [] and single["first subsequent token"] == [3]
    assert single["further tokens"] == []


def test_average_effects_resume_and_layer_choice(tiny_llama, tmp_path):
    facts = [
        {"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 1, "source": "t"},
        {"text": "The Colosseum is located in the city of", "subject": "Colosseum",
         "target_true": "Rome", "id": 2, "source": "t"},
    ]
    avg = average_effects(tiny_llama, facts, kinds=("hidden", "mlp"), samples=2, noise=0.5,
                          window=2, progress=False)
    assert avg.n_facts == 2
    assert avg.effects["mlp"].shape == (len(TOKEN_CLASSES), tiny_llama.n_layers)
    assert avg.counts["hidden"][TOKEN_CLASSES.index("last token")] == 2
    cache = list((tmp_path / "cache" / "tracing").glob("averages-*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 4
    # resume: a torn last line is ignored and recomputed, the rest is read back
    lines = cache[0].read_text().splitlines()
    cache[0].write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    again = average_effects(tiny_llama, facts, kinds=("hidden", "mlp"), samples=2, noise=0.5,
                            window=2, progress=False)
    assert np.allclose(again.effects["mlp"], avg.effects["mlp"])
    layer, effect = choose_edit_layer(avg)
    row = avg.effects["mlp"][TOKEN_CLASSES.index("last subject token")]
    assert 0 <= layer < tiny_llama.n_layers and effect == pytest.approx(row.max())


def test_select_known_facts_filters_and_orders(tiny_llama):
    import pandas as pd

    from loudfacts.tracing import select_known_facts

    table = pd.DataFrame(
        {
            "source": ["counterfact/edit-1k", "known_1000", "known_1000", "known_1000"],
            "id": [1, 2, 3, 4],
            "subject": ["Louvre", "Colosseum", "Louvre", "Eiffel Tower"],
            "text": ["The Louvre is in", "The Colosseum is in", "Louvre is in", "The Louvre is"],
            "target_true": ["Paris", "Rome", "Paris", "Paris"],
            "known": [True, True, True, True],
            "top1": [True, True, True, True],
        }
    )
    picked = select_known_facts(tiny_llama, 5, table=table)
    # id 3 starts the prompt (attention sink), id 4's subject is absent: both dropped
    assert [f["id"] for f in picked] == [2, 1]
    assert len(select_known_facts(tiny_llama, 1, table=table)) == 1
    table.loc[0, "top1"] = False
    assert [f["id"] for f in select_known_facts(tiny_llama, 5, table=table)] == [2]


def test_figures_build(tiny_llama):
    import matplotlib

    from loudfacts.tracing import plot_severed, plot_trace, plot_traces

    r = trace(tiny_llama, PROMPT, SUBJECT, samples=1, cache=False)
    s = trace(tiny_llama, PROMPT, SUBJECT, samples=1, cache=False, severed="mlp")
    for fig in (plot_trace(r), plot_traces([r, r]), plot_severed({"a": r, "b": s})):
        assert isinstance(fig, matplotlib.figure.Figure)
        matplotlib.pyplot.close(fig)


def test_choose_edit_layer_min_layer():
    from loudfacts.tracing import AverageEffects

    grid = np.zeros((len(TOKEN_CLASSES), 4))
    grid[TOKEN_CLASSES.index("last subject token")] = [0.5, 0.1, 0.3, 0.2]
    avg = AverageEffects({"mlp": grid}, {"mlp": np.ones(6, int)}, 1, {}, {}, [], {})
    assert choose_edit_layer(avg) == (0, 0.5)
    assert choose_edit_layer(avg, min_layer=1) == (2, 0.3)
    with pytest.raises(ValueError, match="min_layer"):
        choose_edit_layer(avg, min_layer=4)
