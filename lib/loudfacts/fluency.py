"""Is the model still fluent? N-gram entropy of its generations and perplexity on held text.

Two measures of damage that an edit can do to a model's general ability:

* `ngram_entropy(texts)` is ROME's "generation entropy" (GE, Meng et al. 2022, Appendix on
  fluency): for each generated text, the Shannon entropy (bits) of its bigram and trigram
  frequency distributions, weighted 2/3 and 4/3 and averaged, then averaged over texts.
  A model that repeats itself ("Rome Rome Rome ...") has few distinct n-grams and a low score;
  fluent text scores high. ROME tokenises words with NLTK's `word_tokenize`; we split on words
  and punctuation with a regular expression instead (no extra dependency), which agrees with it
  on ordinary prose up to contractions and a few symbols, so absolute values can differ
  slightly from the paper's while before/after comparisons within this repo are exact.
* `perplexity(model, text, max_tokens)` is exp(mean next-token NLL) of a held text under the
  model: a general-language check that does not depend on generation settings.

ROME's own recipe (`rome_generation_entropy`), from `experiments/py/eval_utils_counterfact.py`
and `util/generate.py` of kmeng01/rome: each generation prompt is continued by top-k sampling
(k = 5, `generate_fast`) until prompt and continuation are 100 tokens together; the decoded
text is NFKD-normalised, "\n\n" becomes a space and the end-of-text token's text is removed;
words are NLTK's `word_tokenize` (case kept); bigram and trigram entropies (bits) are weighted
2/3 and 4/3 and averaged, then averaged over prompts. What differs here, and why:

* sentences are split by NLTK's Punkt *without* its trained English parameters
  (`word_tokenize` loads them from NLTK's data download, which this repo cannot fetch
  offline), so an abbreviation such as "Mr." or "U.S." inside a sentence is split as if it
  ended one ("Mr", "."), where the trained model keeps "Mr."; words are NLTK's own
  `NLTKWordTokenizer` within each sentence, as in `word_tokenize`;
* the sampler draws from a seeded generator, one per prompt (`seed`, then the prompt's
  index), so a run is reproducible; ROME draws from torch's global state;
* the end-of-text text removed is this tokenizer's (`eos_token`), ROME's is GPT-2's
  "<|endoftext|>".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    """Split `text` into word and punctuation tokens (lower-cased)."""
    return _WORD.findall(text.lower())


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in counts.values())


def ngram_entropy_of_text(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """Weighted n-gram entropy (bits) of one text: mean over n of weight_n * H(n-grams)."""
    if len(ns) != len(weights) or not ns:
        raise ValueError(f"ns {tuple(ns)} and weights {tuple(weights)} must be non-empty and equal in length")
    toks = words(text)
    ents = []
    for n in ns:
        if n < 1:
            raise ValueError(f"n-gram order {n} must be >= 1")
        grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        ents.append(_entropy_bits(grams))
    return sum(w * e for w, e in zip(weights, ents)) / len(ns)


def ngram_entropy(
    texts: str | Iterable[str],
    ns: Sequence[int] = (2, 3),
    weights: Sequence[float] = (2 / 3, 4 / 3),
) -> float:
    """ROME's generation entropy: weighted bi/trigram entropy, averaged over `texts`.

    Args:
        texts: one generated text or several (each scored on its own, then averaged).
        ns: n-gram orders.
        weights: one weight per order (ROME: 2/3 for bigrams, 4/3 for trigrams).

    Returns:
        Mean weighted entropy in bits (0.0 for a text with no n-grams, e.g. one word).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("ngram_entropy() needs at least one text")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"ngram_entropy() takes strings, got {type(t).__name__}: {t!r}")
    return sum(ngram_entropy_of_text(t, ns, weights) for t in texts) / len(texts)


@torch.no_grad()
def perplexity(model, text: str, max_tokens: int = 512, window: int = 1024) -> float:
    """exp(mean next-token NLL) of the first `max_tokens` tokens of `text` under `model`.

    The tokens are scored in consecutive non-overlapping windows of at most `window` tokens
    (and at most the model's context), each window starting fresh; the first token of each
    window is not predicted. Forwards go through `model.hf`, so applied edits (weights or
    bridge hooks) take effect.

    Args:
        model: a `LoadedModel`.
        text: held text (not seen by the edit).
        max_tokens: how many leading tokens of `text` to score.
        window: longest forward pass.

    Returns:
        Perplexity (>= 1).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"perplexity() needs a non-empty text, got {text!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens} must be >= 2")
    ids = model.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"text {text[:60]!r} has fewer than 2 tokens")
    win = max(2, min(window, model.n_ctx))
    total, count = 0.0, 0
    for i in range(0, len(ids), win):
        chunk = ids[i : i + win]
        if len(chunk) < 2:
            break
        x = torch.tensor([chunk], dtype=torch.long, device=model.device)
        logits = model.hf(x).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        total += float(nll)
        count += len(chunk) - 1
    return math.exp(total / count)


def fluency_scores(
    model,
    prompts: Sequence[str],
    held_text: str,
    max_new_tokens: int = 30,
    max_tokens: int = 256,
) -> dict:
    """Generation entropy of greedy continuations of `prompts` and perplexity on `held_text`.

    Run it inside `edit.applied()` to score an edited model, outside for the unedited one.

    Returns:
        {"ge": mean weighted n-gram entropy (bits) of prompt + continuation, as ROME scores
        the generated text; "ppl": perplexity of the first `max_tokens` tokens of held_text;
        "generations": the continuations (without the prompts)}.
    """
    if not prompts:
        raise ValueError("fluency_scores() needs at least one generation prompt")
    gens = [model.generate(p, max_new_tokens=max_new_tokens) for p in prompts]
    return {
        "ge": ngram_entropy([p + g for p, g in zip(prompts, gens)]),
        "ppl": perplexity(model, held_text, max_tokens),
        "generations": gens,
    }


# -- ROME's recipe --------------------------------------------------------------------------------
ROME_GE = {"top_k": 5, "max_out_len": 100, "ns": (2, 3), "weights": (2 / 3, 4 / 3)}


def rome_words(text: str) -> list[str]:
    """Words as ROME's GE counts them: NLTK's `word_tokenize` (sentences, then
    `NLTKWordTokenizer` in each; case kept), with Punkt's untrained parameters (see the module
    docstring)."""
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    words_of = NLTKWordTokenizer().tokenize
    return [w for sent in PunktSentenceTokenizer().tokenize(text) for w in words_of(sent)]


def rome_ngram_entropy_of_text(text: str, ns: Sequence[int] = ROME_GE["ns"],
                               weights: Sequence[float] = ROME_GE["weights"]) -> float:
    """ROME's `compute_n_gram_entropy`: for each n, the entropy (bits) of the n-gram frequency
    distribution of `rome_words(text)`, times its weight; the arithmetic mean over n (an order
    with no n-grams contributes 0)."""
    if len(ns) != len(weights) or not ns:
        raise ValueError(f"ns {tuple(ns)} and weights {tuple(weights)} must be non-empty and "
                         "equal in length")
    toks = rome_words(text)
    ents = []
    for n in ns:
        grams = Counter(tuple(toks[i: i + n]) for i in range(len(toks) - n + 1))
        ents.append(_entropy_bits(grams))
    return sum(w * e for w, e in zip(weights, ents)) / len(ns)


def rome_texts(model, prompts: Sequence[str], seed: int = 0,
               top_k: int = ROME_GE["top_k"], max_out_len: int = ROME_GE["max_out_len"]
               ) -> list[str]:
    """ROME's `generate_fast` texts: each prompt's tokens continued by top-k sampling until
    prompt and continuation hold `max_out_len` tokens together (a prompt already that long gets
    no new token), decoded whole, NFKD-normalised, "\n\n" replaced by a space and the
    end-of-text token's text removed. Prompt i samples from a generator seeded with
    (`seed`, i). Run it inside `edit.applied()` to generate from an edited model."""
    import torch

    from loudfacts.forward import sampled_tokens

    if isinstance(prompts, str):
        raise TypeError("rome_texts() takes a list of prompts, not one string")
    eos = getattr(model.tokenizer, "eos_token", None) or ""
    out = []
    for i, prompt in enumerate(prompts):
        ids = model.encode(prompt)
        if not ids:
            raise ValueError(f"prompt {i} ({prompt!r}) has no tokens")
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        new = sampled_tokens(model, ids, max_out_len - len(ids), top_k, gen)
        text = unicodedata.normalize("NFKD", model.decode(ids + new)).replace("\n\n", " ")
        out.append(text.replace(eos, "") if eos else text)
    return out


def rome_generation_entropy(model, prompts: Sequence[str], seed: int = 0,
                            top_k: int = ROME_GE["top_k"],
                            max_out_len: int = ROME_GE["max_out_len"]) -> tuple[float, list[str]]:
    """(GE as ROME's code computes it, the texts): `rome_texts`, then the mean over texts of
    `rome_ngram_entropy_of_text`."""
    texts = rome_texts(model, prompts, seed, top_k, max_out_len)
    if not texts:
        raise ValueError("rome_generation_entropy() needs at least one prompt")
    return sum(rome_ngram_entropy_of_text(t) for t in texts) / len(texts), texts
