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
from loudfacts.averages import average_effects, choose_edit_layer, token_classes
from loudfacts.tracing import (
    TOKEN_CLASSES,
    AmbiguousSubjectError,
    TraceResult,
    noise_scale,
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


def test_average_effects_resume_and_layer_choice(tiny_llama, tmp_path, monkeypatch):
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
    # the recomputed record went on a line of its own (not glued to the torn one): a third run
    # traces nothing
    assert len(cache[0].read_text().splitlines()) == 5

    def no_trace(*a, **k):
        raise AssertionError("every record is stored: nothing should be traced")

    import loudfacts.averages as averages_module

    monkeypatch.setattr(averages_module, "trace", no_trace)
    third = average_effects(tiny_llama, facts, kinds=("hidden", "mlp"), samples=2, noise=0.5,
                            window=2, progress=False)
    assert np.allclose(third.effects["mlp"], avg.effects["mlp"])
    layer, effect = choose_edit_layer(avg)
    row = avg.effects["mlp"][TOKEN_CLASSES.index("last subject token")]
    assert 0 <= layer < tiny_llama.n_layers and effect == pytest.approx(row.max())


def test_select_known_facts_filters_and_orders(tiny_llama):
    import pandas as pd

    from loudfacts.knowledge import select_known_facts

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

    from loudfacts.plotting import plot_severed, plot_trace, plot_traces

    r = trace(tiny_llama, PROMPT, SUBJECT, samples=1, cache=False)
    s = trace(tiny_llama, PROMPT, SUBJECT, samples=1, cache=False, severed="mlp")
    for fig in (plot_trace(r), plot_traces([r, r]), plot_severed({"a": r, "b": s})):
        assert isinstance(fig, matplotlib.figure.Figure)
        matplotlib.pyplot.close(fig)


def test_choose_edit_layer_min_layer():
    from loudfacts.averages import AverageEffects

    grid = np.zeros((len(TOKEN_CLASSES), 4))
    grid[TOKEN_CLASSES.index("last subject token")] = [0.5, 0.1, 0.3, 0.2]
    avg = AverageEffects({"mlp": grid}, {"mlp": np.ones(6, int)}, 1, {}, {}, [], {})
    assert choose_edit_layer(avg) == (0, 0.5)
    assert choose_edit_layer(avg, min_layer=1) == (2, 0.3)
    with pytest.raises(ValueError, match="min_layer"):
        choose_edit_layer(avg, min_layer=4)


# ---------------------------------------------------------------------------------------------
# Issue 15: reliability
# ---------------------------------------------------------------------------------------------
AVG_KW = {"kinds": ("hidden",), "samples": 1, "noise": 0.5, "window": 2, "progress": False}


def test_average_cache_keys_facts_by_content_not_id(tiny_llama, tmp_path):
    # A KnownFact and a CounterFact case can both have id 0: once cached, the first must not
    # be returned for the second.
    from loudfacts.data import CounterFactRecord, KnownFact

    known = KnownFact(known_id=0, subject=SUBJECT, prompt="The {} is located in the city of",
                      text=PROMPT, attribute="Paris", relation="P131")
    case = CounterFactRecord(case_id=0, subject="Colosseum",
                             prompt="The {} is located in the city of", target_true="France",
                             target_new="Paris", relation="P131")
    first = average_effects(tiny_llama, [known], **AVG_KW)
    second = average_effects(tiny_llama, [case], **AVG_KW)
    rec = second.per_fact[0]
    assert rec["subject"] == "Colosseum" and rec["fact"]["source"] == "counterfact"
    direct = trace(tiny_llama, case.text, "Colosseum", target="France", samples=1, noise=0.5,
                   cache=False)
    last = TOKEN_CLASSES.index("last subject token")
    assert np.allclose(second.effects["hidden"][last],
                       direct.indirect_effect[:, direct.subject_span[1] - 1])
    assert not np.allclose(second.effects["hidden"], first.effects["hidden"])
    keys = {r["key"] for r in first.per_fact + second.per_fact}
    assert len(keys) == 2


def test_average_cache_checks_the_stored_fact_on_read(tiny_llama, tmp_path):
    fact = {"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 7, "source": "t"}
    avg = average_effects(tiny_llama, [fact], **AVG_KW)
    [path] = (tmp_path / "cache" / "tracing").glob("averages-*.jsonl")
    rec = json.loads(path.read_text())
    # same key, another fact and made-up effects: must not be used
    rec["fact"] = {**rec["fact"], "subject": "Colosseum"}
    rec["classes"] = {k: (None if v is None else [9.0] * len(v)) for k, v in rec["classes"].items()}
    path.write_text(json.dumps(rec) + "\n")
    with pytest.warns(UserWarning, match="another fact"):
        again = average_effects(tiny_llama, [fact], **AVG_KW)
    assert np.allclose(again.effects["hidden"], avg.effects["hidden"])


def test_average_cache_key_changes_with_settings(tiny_llama, tmp_path):
    fact = {"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 1, "source": "t"}
    a = average_effects(tiny_llama, [fact], **AVG_KW)
    b = average_effects(tiny_llama, [fact], **{**AVG_KW, "seed": 1})
    assert a.per_fact[0]["key"] != b.per_fact[0]["key"]
    assert len(list((tmp_path / "cache" / "tracing").glob("averages-*.jsonl"))) == 2


def test_average_records_go_to_the_store_given(tiny_llama, tmp_path, monkeypatch):
    """Notebook 01 keeps the per-fact records in results/ (committed): they are written there,
    not in the cache, and a second run reads them back without tracing."""
    fact = {"text": PROMPT, "subject": SUBJECT, "target_true": "Paris", "id": 1, "source": "t"}
    store = tmp_path / "results" / "tiny" / "tracing"
    a = average_effects(tiny_llama, [fact], store=store, **AVG_KW)
    [path] = store.glob("averages-*.jsonl")
    assert len(path.read_text().splitlines()) == 1
    assert not list((tmp_path / "cache" / "tracing").glob("averages-*.jsonl"))
    import loudfacts.averages as averages_module

    monkeypatch.setattr(averages_module, "trace", lambda *a, **k: 1 / 0)
    b = average_effects(tiny_llama, [fact], store=store, **AVG_KW)
    assert np.array_equal(a.effects["hidden"], b.effects["hidden"], equal_nan=True)


def test_append_line_keeps_a_new_line_whole_after_a_torn_one(tmp_path):
    from loudfacts.jsonlines import append_line

    path = tmp_path / "rows.jsonl"
    append_line(path, {"a": 1})
    path.write_bytes(path.read_bytes() + b'{"b": ')  # a writer killed mid-line
    append_line(path, {"c": 3})
    lines = path.read_text().splitlines()
    assert lines == ['{"a": 1}', '{"b": ', '{"c": 3}']


TWICE = "The Louvre is big. The Louvre is located in the city of"


def test_subject_twice_needs_an_occurrence(tiny_llama):
    with pytest.raises(AmbiguousSubjectError) as err:
        trace(tiny_llama, TWICE, SUBJECT, samples=1, noise=0.3, cache=False)
    msg = str(err.value)
    assert repr(SUBJECT) in msg and repr(TWICE) in msg and "2 times" in msg
    kw = {"target": "Paris", "samples": 1, "noise": 0.3, "cache": False}
    first = trace(tiny_llama, TWICE, SUBJECT, occurrence=0, **kw)
    last = trace(tiny_llama, TWICE, SUBJECT, occurrence=-1, **kw)
    assert first.subject_span[1] <= last.subject_span[0]
    assert "".join(first.tokens[slice(*first.subject_span)]).strip() == SUBJECT
    assert "".join(last.tokens[slice(*last.subject_span)]).strip() == SUBJECT
    assert first.settings["occurrence"] == 0
    with pytest.raises(ValueError, match="occurrence 2"):
        trace(tiny_llama, TWICE, SUBJECT, occurrence=2, **kw)


def test_multi_token_target_raises_unless_first_token(tiny_llama):
    assert len(tiny_llama.encode(" New York")) > 1
    with pytest.raises(ValueError) as err:
        trace(tiny_llama, PROMPT, SUBJECT, target="New York", samples=1, noise=0.3, cache=False)
    msg = str(err.value)
    assert "'New York'" in msg and "first_token" in msg
    assert repr(tiny_llama.str_tokens(" New York")) in msg
    kw = {"samples": 1, "noise": 0.3, "cache": False, "first_token": True}
    ny = trace(tiny_llama, PROMPT, SUBJECT, target="New York", **kw)
    nd = trace(tiny_llama, PROMPT, SUBJECT, target="New Delhi", **kw)
    assert ny.settings["target_id"] == tiny_llama.encode(" New York")[0] == nd.settings["target_id"]
    # one-token targets need nothing
    trace(tiny_llama, PROMPT, SUBJECT, target="Paris", samples=1, noise=0.3, cache=False)


def test_window_larger_than_the_model_raises(tiny_llama):
    for kind in ("mlp", "attn"):
        with pytest.raises(ValueError) as err:
            trace(tiny_llama, PROMPT, SUBJECT, kind=kind, window=100, samples=1, noise=0.3,
                  cache=False)
        assert "window 100" in str(err.value) and f"{tiny_llama.n_layers} layers" in str(err.value)
    trace(tiny_llama, PROMPT, SUBJECT, kind="mlp", window=tiny_llama.n_layers, samples=1,
          noise=0.3, cache=False)


def test_target_id_outside_vocab_fails_before_any_forward(tiny_llama, monkeypatch):
    import loudfacts.tracing as tracing

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran before the target was checked")

    for name in ("_trace_fast_suffix", "_trace_fast_full", "_trace_reference"):
        monkeypatch.setattr(tracing, name, no_forward)
    for bad in (tiny_llama.d_vocab, 10**6, -1):
        with pytest.raises(ValueError) as err:
            trace(tiny_llama, PROMPT, SUBJECT, target=bad, samples=1, noise=0.3, cache=False)
        assert f"token id {bad}" in str(err.value) and str(tiny_llama.d_vocab) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Issue 16: the noise scale is ROME's pooled estimate
# ---------------------------------------------------------------------------------------------
def test_noise_subjects_are_romes_known_1000_subjects():
    from loudfacts.data import data_path
    from loudfacts.tracing import _noise_subjects

    with open(data_path("known/known_1000.json")) as f:
        raw = json.load(f)
    subjects, source = _noise_subjects()
    # ROME: [k["subject"] for k in knowns], every record, repeats kept
    assert source == "known_1000"
    assert subjects == [r["subject"] for r in raw]
    assert len(subjects) > len(set(subjects))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_noise_scale_equals_a_hand_pooled_std(family, tiny_llama, tiny_gpt2):
    from loudfacts.tracing import _noise_subjects

    m = tiny_llama if family == "llama" else tiny_gpt2
    table = m.hf.get_input_embeddings().weight.detach().double().numpy()
    occurrences = []
    for subject in _noise_subjects()[0]:  # each subject on its own, every token it has
        occurrences.extend(m.tokenizer(subject, add_special_tokens=False)["input_ids"])
    entries = table[np.array(occurrences)].ravel()  # every coordinate of every occurrence
    mean = entries.sum() / entries.size
    reference = np.sqrt(((entries - mean) ** 2).sum() / (entries.size - 1))
    assert noise_scale(m, multiplier=1.0) == pytest.approx(reference, rel=1e-7, abs=0)
    assert noise_scale(m) == pytest.approx(3 * reference, rel=1e-7, abs=0)
    # the distinct-token estimate is a different number
    unique = noise_scale(m, multiplier=1.0, estimator="unique")
    assert abs(unique - reference) > 1e-4 * reference


def test_noise_cache_is_keyed_by_estimator(tiny_llama, tmp_path):
    pooled = noise_scale(tiny_llama, multiplier=1.0)
    unique = noise_scale(tiny_llama, multiplier=1.0, estimator="unique")
    files = sorted((tmp_path / "cache" / "tracing").glob("noise-*.json"))
    assert len(files) == 2 and pooled != unique
    stored = {json.loads(f.read_text())["estimator"]: json.loads(f.read_text())["std"]
              for f in files}
    assert stored == {"pooled": pooled, "unique": unique}
    with pytest.raises(ValueError, match="median"):
        noise_scale(tiny_llama, estimator="median")


def test_fact_content_reads_each_kind_of_fact_by_its_own_rule():
    import pandas as pd

    from loudfacts.averages import fact_content
    from loudfacts.data import CounterFactRecord, KnownFact

    known = KnownFact(known_id=3, subject="Louvre", prompt="The {} is in", text="The Louvre is in",
                      attribute="Paris", relation="P131")
    record = CounterFactRecord(case_id=9, subject="Louvre", prompt="The {} is in",
                               target_true="Paris", target_new="Rome", relation="P131")
    row = {"source": "known_1000", "id": 3, "text": "The Louvre is in", "prompt": "The {} is in",
           "subject": "Louvre", "target_true": "Paris", "target_new": None}
    want = {"prompt": "The Louvre is in", "subject": "Louvre", "target": "Paris"}
    assert fact_content(known) == ({**want, "source": "known_1000"}, "known_1000:3")
    assert fact_content(record) == ({**want, "source": "counterfact"}, "counterfact:9")
    assert fact_content(row) == fact_content(pd.Series(row)) == fact_content(known)
    assert fact_content({"prompt": "The Louvre is in", "subject": "Louvre", "target": 42}) == (
        {"prompt": "The Louvre is in", "subject": "Louvre", "target": 42, "source": ""},
        "The Louvre is in|Louvre")
    with pytest.raises(ValueError, match="KnownFact, a CounterFactRecord, or a mapping"):
        fact_content(("The Louvre is in", "Louvre", "Paris"))
    with pytest.raises(ValueError, match="subject=None"):
        fact_content({"text": "The Louvre is in", "target_true": "Paris"})
