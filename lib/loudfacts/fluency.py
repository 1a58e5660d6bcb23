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
"""

from __future__ import annotations

import math
import re
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
