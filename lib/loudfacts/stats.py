"""Second-moment statistics of MLP keys, C = E[k kᵀ], cached on disk.

ROME treats a layer's MLP down-projection W (d_model x d_mlp) as a linear associative memory
that maps keys k (the down-projection's input, TransformerLens `blocks.{L}.mlp.hook_post`,
d_mlp wide) to values. Its rank-one update inserts a new (k*, v*) pair while disturbing the
other keys as little as possible *in the metric of their second moment* C = E[k kᵀ], estimated
over generic text. This module estimates C from the shipped text: by default "all" of it
(WikiText-2's test split, 106 Wikipedia articles and the Lee news corpus, about 0.8M tokens),
cut into windows of 1,024 tokens (GPT-2's context, so ROME's longest sample; ROME used 100k
Wikipedia articles, each truncated to that length, which is far more text than we have).

How it is collected:

* the corpus is tokenised once and cut into non-overlapping windows of `seq_len` tokens;
* windows are batched (`batch_tokens` per forward) and run through the bridge with
  `stop_at_layer` = last requested layer + 1, so the layers above it (and the unembedding, the
  most expensive single matrix) are never computed;
* one hook per requested layer adds XᵀX of that batch's keys to a float64 accumulator (the batch
  product is taken in the model's dtype, a sum of at most `batch_tokens` terms, and added in
  float64: the float64 matmul would make collection about 2.5x slower on a CPU for a change in
  C far below its sampling error);
* C = (Σ k kᵀ) / n_tokens.

One pass serves every requested layer and every token count in `n_tokens` checkpoints (see
`second_moment_sweep`): the statistics for 10k tokens are a prefix of those for 100k.

Caching: each (model, layer, corpus digest, token count, seq_len, dtype, weight digest)
goes to its own file in `cache_dir("stats")`, written atomically. A file whose metadata does
not match, whose matrix has the wrong shape or non-finite entries, or that cannot be read is
reported and recomputed.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from loudfacts.digests import digest_text, weights_fingerprint
from loudfacts.atomic import atomic_path
from loudfacts.paths import cache_dir

_FORMAT = 1  # bump when the cache layout changes


# -- corpus -----------------------------------------------------------------------------------
ALL_CORPORA = ("wikitext", "wiki-xml", "lee")  # what corpus="all" concatenates, in order


def corpus_text(corpus: str = "all") -> str:
    """The text of a named corpus ("wikitext", "wiki-xml", "lee") via `loudfacts.data`, or
    "all": the three joined by blank lines."""
    from loudfacts.data import load_text

    if corpus == "all":
        return "\n\n".join(load_text(c).strip() for c in ALL_CORPORA) + "\n"
    return load_text(corpus)


@functools.lru_cache(maxsize=4)
def _digest(text: str) -> str:
    return digest_text(text)


@functools.lru_cache(maxsize=4)
def _tokenised(tokenizer, text_digest: str, text: str) -> torch.Tensor:
    # Tokenise line-blocks rather than one 1 MB string: same ids at block boundaries up to
    # whitespace, and fast tokenizers handle many small inputs better than one huge one.
    lines = [ln for ln in text.splitlines(keepends=True) if ln.strip()]
    block, blocks = [], []
    for ln in lines:
        block.append(ln)
        if len(block) == 64:
            blocks.append("".join(block))
            block = []
    if block:
        blocks.append("".join(block))
    enc = tokenizer(blocks, add_special_tokens=False)["input_ids"]
    return torch.tensor([i for ids in enc for i in ids], dtype=torch.long)


def corpus_tokens(model, corpus: str = "all") -> tuple[torch.Tensor, str]:
    """All token ids of a corpus (1-D LongTensor) and the corpus text's sha256."""
    text = corpus_text(corpus)
    digest = _digest(text)
    return _tokenised(model.tokenizer, digest, text), digest


# -- cache ------------------------------------------------------------------------------------
def _fingerprint(model) -> str:
    """The model's weight digest (`digests.weights_fingerprint`, over every parameter, hashed
    again only when a parameter has changed), so statistics cached for one set of weights are
    never served for another."""
    return weights_fingerprint(model)[:16]


def _meta(model, layer, corpus, digest, n_tokens, seq_len) -> dict:
    dtype = str(next(model.hf.parameters()).dtype).replace("torch.", "")
    return {
        "format": _FORMAT,
        "model": model.name,
        "fingerprint": _fingerprint(model),
        "layer": int(layer),
        "corpus": corpus,
        "corpus_sha256": digest,
        "n_tokens": int(n_tokens),
        "seq_len": int(seq_len),
        "dtype": dtype,
        "d_mlp": int(model.d_mlp),
    }


def cache_path(meta: dict) -> Path:
    """File for one layer's statistics, named by everything that changes them."""
    name = (
        f"{meta['model'].replace('/', '_')}-{meta['fingerprint']}_L{meta['layer']}_"
        f"{meta['corpus']}-{meta['corpus_sha256'][:12]}_n{meta['n_tokens']}_s{meta['seq_len']}_"
        f"{meta['dtype']}.pt"
    )
    return cache_dir("stats") / name


def _load_cached(meta: dict) -> torch.Tensor | None:
    path = cache_path(meta)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        c = blob["C"]
        ok = (
            blob.get("meta") == meta
            and isinstance(c, torch.Tensor)
            and tuple(c.shape) == (meta["d_mlp"], meta["d_mlp"])
            and c.dtype == torch.float64
            and bool(torch.isfinite(c).all())
        )
    except Exception as e:  # noqa: BLE001 - unreadable, truncated, wrong format: recompute
        warnings.warn(f"statistics cache {path.name} is unreadable ({e}); recomputing", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"statistics cache {path.name} does not match its key; recomputing",
                      stacklevel=3)
        return None
    return c


def _save(meta: dict, c: torch.Tensor) -> None:
    path = cache_path(meta)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"meta": meta, "C": c.contiguous()}, tmp)


# -- collection -------------------------------------------------------------------------------
def _accumulate_key_outer_hook(act, hook, *, state: dict, layer: int):
    """Add Σ k kᵀ of this batch's keys (act: batch pos d_mlp) to the float64 running sum,
    snapshotting C = sum / n at every token-count checkpoint that falls inside the batch."""
    x = act.detach().reshape(-1, act.shape[-1])
    total = state["sums"][layer]
    seen, start = state["seen"], 0
    for n in state["counts"]:
        if seen + start >= n or n > seen + x.shape[0]:
            continue
        part = x[start: n - seen]
        total += (part.T @ part).to(torch.float64)
        state["out"][(layer, n)] = (total / n).cpu()
        start = n - seen
    part = x[start: state["counts"][-1] - seen]
    if part.shape[0]:
        total += (part.T @ part).to(torch.float64)


@torch.no_grad()
def _collect(model, layers, counts, tokens, seq_len, batch_tokens, progress) -> dict:
    """One pass over `tokens`; returns {(layer, count): C} for every count in `counts`."""
    counts = sorted({int(c) for c in counts})
    total = counts[-1]
    n_windows = math.ceil(total / seq_len)
    if n_windows * seq_len > tokens.numel():
        raise ValueError(
            f"the corpus has {tokens.numel()} tokens, fewer than the {total} requested "
            f"(in windows of {seq_len}); ask for at most {tokens.numel() // seq_len * seq_len}"
        )
    windows = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    per_batch = max(1, batch_tokens // seq_len)
    state = {
        "sums": {L: torch.zeros(model.d_mlp, model.d_mlp, dtype=torch.float64, device=model.device)
                 for L in layers},
        "counts": counts,
        "seen": 0,
        "out": {},
    }
    hooks = [
        (f"blocks.{L}.mlp.hook_post",
         functools.partial(_accumulate_key_outer_hook, state=state, layer=L))
        for L in layers
    ]
    # Nothing above the last requested layer is needed: stop there (saves the upper layers
    # and the unembedding, which is the largest single matmul of a small model).
    stop = max(layers) + 1
    kwargs = {"stop_at_layer": stop} if stop < model.n_layers else {}
    bar = tqdm(total=total, desc=f"key statistics L{','.join(map(str, layers))}",
               unit="tok", unit_scale=True, disable=not progress)
    with model.bridge.hooks(fwd_hooks=hooks):
        for b in range(0, n_windows, per_batch):
            ids = windows[b: b + per_batch].to(model.device)
            model.bridge(ids, **kwargs)
            state["seen"] += ids.numel()
            bar.update(min(ids.numel(), total - bar.n))
    bar.close()
    return state["out"]


def second_moment_sweep(
    model,
    layers,
    n_tokens_list,
    corpus: str = "all",
    batch_tokens: int = 4096,
    seq_len: int = 1024,
    progress: bool = True,
    use_cache: bool = True,
) -> dict[tuple[int, int], torch.Tensor]:
    """C for several layers and several token counts, in at most one pass over the corpus.

    Returns:
        {(layer, n_tokens): Float64[Tensor, "d_mlp d_mlp"]}.
    """
    layers = sorted({int(L) for L in ([layers] if isinstance(layers, int) else layers)})
    if not layers:
        raise ValueError("second_moment needs at least one layer")
    for L in layers:
        model._check_layer(L)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 0 < seq_len <= model.n_ctx:
        raise ValueError(f"seq_len {seq_len!r} must be an integer in 1..{model.n_ctx} for "
                         f"{model.name}")
    n_list = list(n_tokens_list)
    bad = [n for n in n_list if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                                                   or n <= 0)]
    if not n_list or bad:
        raise ValueError(f"token counts must be positive integers or None (all the text), got "
                         f"{n_tokens_list!r}")
    tokens, digest = corpus_tokens(model, corpus)
    every = tokens.numel() // seq_len * seq_len  # None: every whole window of the corpus
    if every == 0:
        raise ValueError(f"corpus {corpus!r} has {tokens.numel()} tokens, fewer than one window "
                         f"of seq_len={seq_len}")
    counts = sorted({every if n is None else int(n) for n in n_list})
    result, missing = {}, set()
    for L in layers:
        for n in counts:
            meta = _meta(model, L, corpus, digest, n, seq_len)
            c = _load_cached(meta) if use_cache else None
            if c is None:
                missing.add(n)
            else:
                result[(L, n)] = c
    if missing:
        fresh = _collect(model, layers, sorted(missing), tokens, seq_len, batch_tokens, progress)
        for (L, n), c in fresh.items():
            if (L, n) not in result:
                result[(L, n)] = c
                if use_cache:
                    _save(_meta(model, L, corpus, digest, n, seq_len), c)
    return result


def second_moment(
    model,
    layers,
    n_tokens: int | None = None,
    corpus: str = "all",
    batch_tokens: int = 4096,
    seq_len: int = 1024,
    progress: bool = True,
    use_cache: bool = True,
) -> dict[int, torch.Tensor]:
    """C = E[k kᵀ] of the MLP down-projection input for each layer, from `n_tokens` tokens.

    Args:
        model: a LoadedModel.
        layers: one layer index or several; all are collected in one pass.
        n_tokens: tokens of the corpus used (the first n_tokens, in windows of `seq_len`);
            None: every whole window of the corpus.
        corpus: "all" (every shipped text, the default) or one corpus name of
            `loudfacts.data.load_text`.
        batch_tokens: tokens per forward pass.
        seq_len: window length; each window is an independent sequence.
        progress: show a tqdm bar.
        use_cache: read and write `cache_dir("stats")`.

    Returns:
        {layer: Float64[Tensor, "d_mlp d_mlp"]} (symmetric, positive semi-definite).
    """
    got = second_moment_sweep(model, layers, [n_tokens], corpus=corpus,
                              batch_tokens=batch_tokens, seq_len=seq_len, progress=progress,
                              use_cache=use_cache)
    return {L: c for (L, _), c in got.items()}


def corpus_size(model, corpus: str = "all", seq_len: int = 1024) -> int:
    """Tokens that `n_tokens=None` uses: every whole window of `seq_len` in the corpus."""
    tokens, _ = corpus_tokens(model, corpus)
    return tokens.numel() // seq_len * seq_len
