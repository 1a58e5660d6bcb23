"""The embedded model: offline loading, tokenisation parity, known facts."""

import socket

import pytest
import torch

pytestmark = pytest.mark.integration


def _refuse(*args, **kwargs):
    raise OSError("network access attempted while loading the embedded model")


def test_embedded_model_loads_with_sockets_blocked_and_matches_cached_copy(
    model, monkeypatch, tmp_path
):
    from loudfacts.models import load_model

    # A fresh cache forces the GGUF conversion path (the slow, first-time one).
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    fresh = load_model()
    assert fresh.n_layers == 30 and fresh.d_model == 576 and fresh.d_mlp == 1536
    assert fresh.arch.mlp_out.format(5) == "model.layers.5.mlp.down_proj"
    # The float32 copy kept in the cache is bit-identical to a fresh dequantisation.
    assert fresh.weight_digest() == model.weight_digest()
    assert (tmp_path / "models").exists()


def test_same_token_ids_through_hf_and_bridge(model):
    for text in ["The Louvre is located in the city of", " Barack Obama is from",
                 "I love museums like the Louvre and the British museum."]:
        assert model.encode(text) == model.bridge.to_tokens(text, prepend_bos=False)[0].tolist()
    ids = model.to_tensor("The Colosseum is located in the city of")
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(ids), model.hf(ids).logits)


def test_model_knows_the_seed_landmarks(model):
    assert model.top_tokens("The Louvre is located in the city of", 1)[0][0] == " Paris"
    assert model.top_tokens("The Colosseum is located in the city of", 1)[0][0] == " Rome"


def test_known_facts_table_has_the_documented_columns(model):
    from loudfacts.knowledge import COLUMNS, known_facts_table

    table = known_facts_table(model, n_counterfact=30, n_known1000=30)
    assert list(table.columns) == COLUMNS
    assert len(table) == 60
    cf = table[table.source == "counterfact/edit-1k"]
    assert ((cf.p_true > cf.p_new) == cf.known).all()
    again = known_facts_table(model, n_counterfact=30, n_known1000=30)  # from the cache
    assert abs(again.p_true.to_numpy() - table.p_true.to_numpy()).max() < 1e-6


def test_generation_through_the_bridge_cache_equals_cache_free_decoding(model):
    """Greedy decoding with the bridge's own key/value cache gives the tokens that rerunning
    the whole sequence gives (HF's cached generate does not, with the bridge wrapped in)."""
    import torch

    prompt = "The Louvre is"
    ids = model.to_tensor(prompt)
    out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                            do_sample=False, use_cache=False,
                            pad_token_id=model.tokenizer.eos_token_id)
    plain = model.decode(out[0, ids.shape[1]:].tolist())
    assert model.generate(prompt, max_new_tokens=12) == plain
    assert "museum" in plain  # a real continuation, not the "a-----" of the broken HF cache
