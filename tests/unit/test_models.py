"""Model loading: tiny models, architecture templates, offline errors."""

import os
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


def test_fingerprint_sees_two_swapped_entries(tiny_llama):
    """A swap leaves sums and norms alone and, off a strided sample, the sampled bytes too:
    only a digest of every byte sees it."""
    w = tiny_llama.module(tiny_llama.arch.embed).weight
    flat = w.detach().view(-1)
    assert flat.numel() > 2 * 4096  # entries 1 and 3 fall between the old sample's stride
    i, j = 1, 3
    assert flat[i] != flat[j]
    fp0, d0 = tiny_llama.weights_fingerprint(), tiny_llama.weight_digest()
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            a, b = float(flat[i]), float(flat[j])
            flat[i], flat[j] = b, a
        assert tiny_llama.weights_fingerprint() != fp0
        assert tiny_llama.weight_digest() != d0
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert tiny_llama.weights_fingerprint() == fp0 == d0[:16]


@pytest.mark.parametrize("name, err", [("", ValueError), ("   ", ValueError), (5, TypeError),
                                       (["gpt2"], TypeError), (b"gpt2", TypeError)])
def test_bad_model_names_name_the_input_and_what_is_available(name, err):
    with pytest.raises(err) as e:
        load_model(name)
    msg = str(e.value)
    assert repr(name) in msg and "smollm2-135m" in msg and "tiny-llama" in msg and "gpt2-xl" in msg


# -- the float32 cache of the embedded model -------------------------------------------------------
def _fake_build(calls):
    def build(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text('{"model_type": "llama"}')
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 64)
        (tmp / "tokenizer.json").write_text('{"version": "1.0"}')
        (tmp / "tokenizer_config.json").write_text("{}")
    return build


def _flip_one_byte_keeping_size_and_mtime(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_cache_dir_is_verified_on_every_load_and_rebuilt_when_corrupt(tmp_path):
    from loudfacts.models import (
        EMBEDDED_CACHE_FILES,
        MANIFEST_NAME,
        CacheIntegrityWarning,
        ensure_cache_dir,
        verify_cache_dir,
    )

    target, calls = tmp_path / "models" / "m-f32", []
    build = _fake_build(calls)
    assert ensure_cache_dir(target, build, EMBEDDED_CACHE_FILES) == target
    assert len(calls) == 1 and verify_cache_dir(target, EMBEDDED_CACHE_FILES) is None
    assert (target / MANIFEST_NAME).is_file()
    ensure_cache_dir(target, build, EMBEDDED_CACHE_FILES)
    assert len(calls) == 1  # verified, not rebuilt

    _flip_one_byte_keeping_size_and_mtime(target / "model.safetensors")
    assert "model.safetensors" in verify_cache_dir(target, EMBEDDED_CACHE_FILES)
    with pytest.warns(CacheIntegrityWarning, match=r"model\.safetensors is corrupted"):
        ensure_cache_dir(target, build, EMBEDDED_CACHE_FILES)
    assert len(calls) == 2 and verify_cache_dir(target) is None

    (target / "tokenizer.json").unlink()  # the old code re-dequantised forever
    with pytest.warns(CacheIntegrityWarning, match=r"tokenizer\.json is missing"):
        ensure_cache_dir(target, build, EMBEDDED_CACHE_FILES)
    assert len(calls) == 3 and (target / "tokenizer.json").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]


def test_embedded_model_cache_repairs_itself(tmp_path, monkeypatch):
    """`_load_embedded` with a tiny stand-in for the GGUF: built once, then loaded from the
    verified copy; a same-size corruption or a missing tokenizer.json is rebuilt, not used."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from loudfacts import models
    from loudfacts.models import CacheIntegrityWarning

    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: gguf)
    real_model, real_tok = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    tok_dir = models._tiny_tokenizer_dir()
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=len(real_tok.from_pretrained(tok_dir)),
                                          hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=64))
    conversions = []

    class FakeModel:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kw):
            if gguf_file is None:
                return real_model.from_pretrained(path, **kw)
            conversions.append(path)
            return source

    class FakeTok:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kw):
            return real_tok.from_pretrained(tok_dir if gguf_file else path, **kw)

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(transformers, "AutoTokenizer", FakeTok)
    monkeypatch.setattr(models, "wrap", lambda name, hf, tok, *a, **k: (hf, tok))

    def load():
        hf, _ = models._load_embedded(torch.device("cpu"))
        for (n, p), (_, q) in zip(hf.named_parameters(), source.named_parameters()):
            assert torch.equal(p, q), n
        return hf

    load()
    load()
    assert len(conversions) == 1
    (cached,) = (tmp_path / "models").glob("smollm2-135m-f32-*")
    _flip_one_byte_keeping_size_and_mtime(cached / "model.safetensors")
    with pytest.warns(CacheIntegrityWarning, match=r"model\.safetensors"):
        load()
    (cached / "tokenizer.json").unlink()
    with pytest.warns(CacheIntegrityWarning, match=r"tokenizer\.json"):
        load()
    assert len(conversions) == 3
    load()
    assert len(conversions) == 3


def test_cpu_info_names_the_capability_and_native_bf16():
    import torch

    from loudfacts.models import cpu_info

    info = cpu_info()
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["native_bf16"], bool)
    assert info["native_bf16"] == any("bf16" in f for f in info["vector_flags"])
