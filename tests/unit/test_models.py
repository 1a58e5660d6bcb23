"""Model loading: tiny models, architecture templates, offline errors."""

import time

import pytest
import torch

from loudfacts.models import ModelNotAvailableError, load_model, tiny_model


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj", "neox"])
def test_tiny_models_build_and_match_the_bridge(family):
    m = tiny_model(family)
    ids = m.to_tensor("The Louvre is located in the city of")
    with torch.no_grad():
        hf_logits = m.hf(ids).logits
        bridge_logits = m.bridge(ids)
    assert hf_logits.shape == (1, ids.shape[1], m.d_vocab)
    torch.testing.assert_close(bridge_logits, hf_logits)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj", "neox"])
def test_mlp_out_template_points_at_the_down_projection(family):
    m = tiny_model(family)
    w = m.mlp_out_weight(1)
    expected = (m.d_mlp, m.d_model) if m.arch.mlp_out_transposed else (m.d_model, m.d_mlp)
    assert tuple(w.shape) == expected
    assert m.arch.mlp_out_transposed == (family == "gpt2")


def test_weight_edits_show_through_the_bridge(tiny_llama):
    ids = tiny_llama.to_tensor("The Colosseum is in")
    before = tiny_llama.bridge(ids).detach()
    w = tiny_llama.mlp_out_weight(0)
    saved = w.detach().clone()
    with torch.no_grad():
        w.add_(0.5)
    try:
        after_bridge = tiny_llama.bridge(ids).detach()
        after_hf = tiny_llama.hf(ids).logits.detach()
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert not torch.allclose(before, after_bridge)
    torch.testing.assert_close(after_bridge, after_hf)


def test_bridge_and_hf_tokenise_identically(tiny_llama):
    for text in ["The Louvre", " The Louvre is cool.", "Miles Davis plays the"]:
        assert tiny_llama.encode(text) == tiny_llama.bridge.to_tokens(
            text, prepend_bos=False)[0].tolist()


def test_layer_out_of_range_names_the_layer(tiny_llama):
    with pytest.raises(ValueError, match="layer 7"):
        tiny_llama.mlp_out_weight(7)


def test_hub_model_offline_fails_fast_and_names_what_is_available(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("gpt2-xl")
    assert time.perf_counter() - t0 < 20  # no waiting on network timeouts
    msg = str(err.value)
    assert "gpt2-xl" in msg and "not available offline" in msg and "smollm2-135m" in msg


def test_unknown_tiny_family_is_rejected():
    with pytest.raises(ValueError, match="tiny model family 'bert'"):
        tiny_model("bert")


def test_weight_digest_changes_with_any_weight(tiny_gpt2):
    d0 = tiny_gpt2.weight_digest()
    p = next(tiny_gpt2.hf.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 1e-3
    try:
        assert tiny_gpt2.weight_digest() != d0
    finally:
        with torch.no_grad():
            p.view(-1)[0] -= 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_matches_a_plain_greedy_loop(family):
    m = tiny_model(family)
    text = "The Louvre is located in"
    ids = m.encode(text)
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(m.hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert m.generate(text, max_new_tokens=6) == m.decode(ids[len(m.encode(text)):])
