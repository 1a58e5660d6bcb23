"""GE as ROME's code computes it (`fluency.rome_*`), stated against ROME's maths:
`compute_n_gram_entropy` (NLTK words, bigram/trigram entropies in bits weighted 2/3 and 4/3,
arithmetic mean) and `generate_fast` (top-k = 5 sampling to 100 tokens with the prompt, NFKD,
"\\n\\n" -> " ", end-of-text text removed)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nltk")

from loudfacts.fluency import (  # noqa: E402
    ROME_GE,
    ngram_entropy_of_text,
    rome_generation_entropy,
    rome_ngram_entropy_of_text,
    rome_texts,
    rome_words,
)
from loudfacts.forward import greedy_tokens, sampled_tokens  # noqa: E402


def test_words_are_nltks_and_keep_case():
    assert rome_words("It costs $3.50, doesn't it? The end.") == [
        "It", "costs", "$", "3.50", ",", "does", "n't", "it", "?", "The", "end", "."]
    assert rome_words('He said "hi".') == ["He", "said", "``", "hi", "''", "."]


def test_entropy_is_romes_weighted_mean_of_bigram_and_trigram_entropies():
    # "a b a b": bigrams (a,b) x2, (b,a) x1 -> H2 = h(2/3, 1/3); trigrams (a,b,a), (b,a,b) -> 1 bit
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    want = ((2 / 3) * h2 + (4 / 3) * 1.0) / 2
    assert rome_ngram_entropy_of_text("a b a b") == pytest.approx(want, abs=1e-12)
    # case is kept (ROME does not lower-case); this repo's greedy GE lower-cases
    assert rome_ngram_entropy_of_text("The the The the") == pytest.approx(want, abs=1e-12)
    assert ngram_entropy_of_text("The the The the") == pytest.approx((2 / 3 * 0 + 4 / 3 * 0) / 2)
    assert rome_ngram_entropy_of_text("one") == 0.0  # no n-grams at all
    with pytest.raises(ValueError, match="equal in length"):
        rome_ngram_entropy_of_text("a b", ns=(2,), weights=(1, 2))


def test_top_k_one_is_greedy_on_both_decoding_paths(tiny_llama):
    ids = tiny_llama.encode("The Louvre is located in")
    gen = torch.Generator().manual_seed(0)
    greedy = greedy_tokens(tiny_llama, ids, 6)
    assert sampled_tokens(tiny_llama, ids, 6, 1, gen) == greedy

    from loudfacts.forward import supports_kv_prefix

    if supports_kv_prefix(tiny_llama):  # the cache-free path (taken when hooks are active)
        import loudfacts.forward as forward

        forward._KV_SUPPORT[id(tiny_llama.bridge)] = False
        try:
            assert sampled_tokens(tiny_llama, ids, 6, 1, gen) == greedy
        finally:
            forward._KV_SUPPORT.pop(id(tiny_llama.bridge), None)


def test_sampling_is_seeded_and_stays_in_the_top_k(tiny_llama):
    ids = tiny_llama.encode("The Louvre is located in")
    draw = [sampled_tokens(tiny_llama, ids, 12, 5, torch.Generator().manual_seed(s))
            for s in (1, 1, 2)]
    assert draw[0] == draw[1] and len(draw[0]) == 12
    assert draw[0] != draw[2]  # 5^12 sequences: another seed gives another one
    # every token is among the 5 most probable after the tokens before it
    seq = list(ids)
    with torch.no_grad():
        for t in draw[0]:
            logits = tiny_llama.hf(torch.tensor([seq])).logits[0, -1]
            assert t in torch.topk(logits, 5).indices.tolist()
            seq.append(t)
    with pytest.raises(ValueError, match="top_k"):
        sampled_tokens(tiny_llama, ids, 3, 0, torch.Generator())


def test_texts_are_100_tokens_with_the_prompt_and_normalised(tiny_llama, monkeypatch):
    prompts = ["The Louvre is located in", "Paris is"]
    texts = rome_texts(tiny_llama, prompts, seed=3)
    assert texts == rome_texts(tiny_llama, prompts, seed=3)
    for p, t in zip(prompts, texts):
        assert t.startswith(p)
    # lengths: the sampler is asked for exactly max_out_len - len(prompt) tokens
    asked = []
    import loudfacts.forward as forward

    real = forward.sampled_tokens
    monkeypatch.setattr(forward, "sampled_tokens",
                        lambda m, ids, n, k, g: asked.append((len(ids), n, k)) or real(m, ids, n, k, g))
    rome_texts(tiny_llama, prompts, max_out_len=20)
    assert [a + b for a, b, _ in asked] == [20, 20] and {k for *_, k in asked} == {ROME_GE["top_k"]}
    # NFKD, "\n\n" -> " ", the end-of-text text removed
    eos = tiny_llama.tokenizer.eos_token
    monkeypatch.setattr(type(tiny_llama), "decode",
                        lambda self, ids: "ﬁne\n\nday" + (eos or ""))
    assert rome_texts(tiny_llama, ["x"], max_out_len=2) == ["fine day"]


def test_generation_entropy_averages_the_texts(tiny_llama):
    ge, texts = rome_generation_entropy(tiny_llama, ["The Louvre is", "Paris is"], seed=0,
                                        max_out_len=16)
    assert len(texts) == 2
    assert ge == pytest.approx(sum(rome_ngram_entropy_of_text(t) for t in texts) / 2)
