"""Partial forward passes: start at a middle layer, stop before the unembedding.

Causal tracing and ROME's v* optimisation run the same prompts many times with a change at one
layer L. Everything below L is the same every time, and the unembedding (d_model x vocabulary,
the single largest matrix of a small model) is needed only at a few positions. The helpers
here let such loops

* `residual_after(model, ids, layer)` — compute, once, the residual stream leaving block `layer`
  (stopping the forward right there);
* `final_normalized(model, resid, start_layer)` — run from block `start_layer` to the final norm
  and return the normalised residual of every position, without unembedding it (gradients
  flow, so v* can be optimised through it);
* `unembed(model, normalized)` — logits for just the rows that are needed.

The bridge's own `start_at_layer` feeds the residual to the HF forward as `inputs_embeds` (so
positions and causal masks are built as usual) and swaps it in at block `start_layer`, but still
runs the blocks below and discards them. `blocks_from` removes those blocks from the HF layer
list while the forward runs (hook points live on the block modules, so names are kept), and
restores the list on exit. Inputs are right-padded or unpadded, so no padding mask is needed:
real tokens never attend to pads that come after them.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from functools import partial

import torch


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the needed activation is captured."""


def keep_activation_and_stop_hook(act, hook, *, store: dict, key: str, detach: bool):
    """Store the activation (detached or not) and end the forward pass."""
    store[key] = act.detach() if detach else act
    raise StopForward


@contextmanager
def blocks_from(model, start_layer: int):
    """Temporarily drop blocks 0..start_layer-1 from the HF layer list (restored on exit)."""
    path = model.arch.layers
    parent_path, _, attr = path.rpartition(".")
    parent = model.hf.get_submodule(parent_path) if parent_path else model.hf
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[start_layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


@torch.no_grad()
def residual_after(model, ids: torch.Tensor, layer: int, hooks=()) -> torch.Tensor:
    """The residual stream leaving block `layer` (its `hook_resid_post`), (batch, pos, d_model).

    The forward stops there; blocks above `layer` are not run.
    """
    model._check_layer(layer)
    store: dict = {}
    name = f"blocks.{layer}.hook_resid_post"
    stop = (name, partial(keep_activation_and_stop_hook, store=store, key=name, detach=True))
    try:
        with model.bridge.hooks(fwd_hooks=list(hooks) + [stop]):
            model.bridge(ids.to(model.device))
    except StopForward:
        pass
    return store[name]


def final_normalized(model, resid: torch.Tensor, start_layer: int, hooks=()) -> torch.Tensor:
    """Run blocks `start_layer`.. on `resid` (the residual entering that block) and return the
    final-normalised residual of every position, (batch, pos, d_model), with gradients.

    `start_layer == n_layers` applies only the final norm.
    """
    if not 0 <= start_layer <= model.n_layers:
        raise ValueError(f"start_layer {start_layer} is outside 0..{model.n_layers}")
    if start_layer == model.n_layers:
        return model.bridge.ln_final(resid)
    store: dict = {}
    stop = ("ln_final.hook_out",
            partial(keep_activation_and_stop_hook, store=store, key="final", detach=False))
    try:
        with blocks_from(model, start_layer), model.bridge.hooks(fwd_hooks=list(hooks) + [stop]):
            model.bridge(resid, start_at_layer=start_layer)
    except StopForward:
        pass
    return store["final"]


def unembed(model, normalized: torch.Tensor) -> torch.Tensor:
    """Logits for final-normalised residual rows (..., d_model) -> (..., d_vocab)."""
    return model.hf.get_output_embeddings()(normalized)


# ---------------------------------------------------------------------------------------------
# Reusing keys and values of positions that do not change
# ---------------------------------------------------------------------------------------------
# With causal attention, a change at token t leaves every position before t unchanged at every
# layer. Loops that rerun a prompt with such a change (causal tracing restores one token;
# ROME's v* perturbs the subject's last token) need only run positions t.. and can let them
# attend to the keys and values that an earlier run computed for positions ..t-1.
#
# The bridge's attention reads a cache object from the `layer_past` keyword (its KV-cache entry
# point, `cache.update(k, v, layer_idx) -> (k, v)`) and applies a 4-D attention mask as given.
# `KVRecorder` keeps the keys and values of a full run; `KVPrefix` puts stored ones in front of
# the new positions' own. Positions are passed explicitly (`position_ids`), so rotary or learned
# position embeddings see the true positions. `supports_kv_prefix(model)` checks on the model
# itself that a suffix run with a prefix gives the full run's logits; callers fall back to full
# runs where it does not (an architecture whose attention ignores `layer_past`).


class KVRecorder:
    """A `layer_past` object that records every layer's keys and values and changes nothing.

    Attributes:
        keys, values: layer -> Float[Tensor, "batch kv_heads pos d_head"] (detached).
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, k, v, layer_idx, *args, **kwargs):
        self.keys[int(layer_idx)] = k.detach()
        self.values[int(layer_idx)] = v.detach()
        return k, v


class KVPrefix:
    """A `layer_past` object that puts stored keys/values in front of the new positions' own.

    Args:
        keys, values: layer -> Float[Tensor, "batch kv_heads prefix d_head"]; the batch must be
            the batch that reaches that layer (it can differ between layers when rows join a
            forward pass on the way up).
    """

    def __init__(self, keys: dict, values: dict):
        self.keys, self.values = keys, values

    def update(self, k, v, layer_idx, *args, **kwargs):
        pk, pv = self.keys[int(layer_idx)], self.values[int(layer_idx)]
        return torch.cat([pk.to(k.dtype), k], dim=-2), torch.cat([pv.to(v.dtype), v], dim=-2)


def prefix_causal_mask(n_new: int, n_prefix: int, key_valid=None, dtype=torch.float32,
                       device=None) -> torch.Tensor:
    """Additive 4-D mask for `n_new` positions after `n_prefix` stored ones.

    New position i sees every stored position and new positions 0..i. `key_valid` (batch,
    n_prefix + n_new) bool marks real keys (False: padding); a query still sees itself so no
    row is empty. Returns (1 or batch, 1, n_new, n_prefix + n_new).
    """
    allowed = torch.ones(n_new, n_prefix + n_new, dtype=torch.bool, device=device).tril(
        diagonal=n_prefix)[None, None]
    if key_valid is not None:
        diag = torch.zeros_like(allowed)
        idx = torch.arange(n_new, device=device)
        diag[..., idx, n_prefix + idx] = True
        allowed = (allowed & key_valid.to(device)[:, None, None, :]) | diag
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def run_with_prefix(model, inputs, prefix: KVPrefix | KVRecorder | None, positions, hooks=(),
                    mask=None, start_layer: int | None = None):
    """One bridge forward of `inputs` (token ids, or the residual entering `start_layer`) at
    `positions` (1 or batch, n_new), attending to `prefix`. Returns the bridge's output (logits
    unless a hook stops the pass)."""
    n_new = inputs.shape[1]
    n_prefix = 0
    if isinstance(prefix, (KVPrefix, KVCache)) and prefix.keys:
        n_prefix = next(iter(prefix.keys.values())).shape[-2]
    if mask is None:
        mask = prefix_causal_mask(n_new, n_prefix, device=model.device)
    kwargs = {"layer_past": prefix, "position_ids": positions.to(model.device),
              "attention_mask": mask}
    with contextlib.ExitStack() as stack:
        if start_layer is not None and start_layer > 0:
            stack.enter_context(blocks_from(model, start_layer))
            kwargs["start_at_layer"] = start_layer
        stack.enter_context(model.bridge.hooks(fwd_hooks=list(hooks)))
        return model.bridge(inputs, **kwargs)


_KV_SUPPORT: dict = {}


@torch.no_grad()
def supports_kv_prefix(model) -> bool:
    """Whether a suffix run attending to recorded keys/values reproduces the full run on this
    model (checked once per model object on a short random sequence, to 1e-4 of the logits).
    While the full run's logits are not finite (a weight broken on purpose), it says False
    without remembering it."""
    key = id(model.bridge)
    if key in _KV_SUPPORT:
        return _KV_SUPPORT[key]
    ok = False
    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, min(model.d_vocab, 1000), (2, 7), generator=gen).to(model.device)
        rec = KVRecorder()
        full = model.bridge(ids, layer_past=rec, position_ids=torch.arange(7)[None].to(model.device))
        if not torch.isfinite(full).all():
            return False  # nothing to compare against: ask again next time
        if len(rec.keys) == model.n_layers:
            t = 3
            pre = KVPrefix({i: k[:, :, :t] for i, k in rec.keys.items()},
                           {i: v[:, :, :t] for i, v in rec.values.items()})
            part = run_with_prefix(model, ids[:, t:], pre, torch.arange(t, 7)[None])
            scale = float(full.abs().max()) or 1.0
            ok = bool(torch.isfinite(part).all()) and float(
                (part - full[:, t:]).abs().max()) <= 1e-4 * max(1.0, scale)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError):
        ok = False
    _KV_SUPPORT[key] = ok
    return ok


class SuffixBatch:
    """Rows of different lengths aligned on the first position that a loop will change.

    Row r is left-padded by `shift[r]` so that its anchor (e.g. the subject's last token) sits
    at column `n_prefix`; columns before it are the fixed prefix, columns `n_prefix..` (the
    suffix, `n_suffix` wide, right-padded) are the ones the loop reruns.

    Attributes:
        ids: LongTensor (batch, n_prefix + n_suffix).
        valid: BoolTensor, same shape: True at real tokens.
        positions: LongTensor, same shape: each token's position in its own row.
        shift: LongTensor (batch,): left padding of each row.
        n_prefix, n_suffix: widths.
    """

    def __init__(self, rows: list[list[int]], anchors: list[int], pad_id: int, device=None):
        if len(rows) != len(anchors) or not rows:
            raise ValueError(f"need one anchor per row, got {len(rows)} rows, {len(anchors)} anchors")
        for r, a in zip(rows, anchors):
            if not 0 <= a < len(r):
                raise ValueError(f"anchor {a} is outside a row of {len(r)} tokens")
        self.n_prefix = max(anchors)
        self.n_suffix = max(len(r) - a for r, a in zip(rows, anchors))
        width = self.n_prefix + self.n_suffix
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        shift = torch.tensor([self.n_prefix - a for a in anchors], dtype=torch.long)
        for i, r in enumerate(rows):
            s = int(shift[i])
            ids[i, s:s + len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, s:s + len(r)] = True
        self.ids, self.valid, self.shift = ids.to(device), valid.to(device), shift.to(device)
        self.positions = (torch.arange(width, device=device)[None] - self.shift[:, None]).clamp(min=0)

    def suffix_column(self, row: int, position: int) -> int:
        """Column in the suffix of token `position` of row `row` (its own coordinates)."""
        col = position + int(self.shift[row]) - self.n_prefix
        if not 0 <= col < self.n_suffix:
            raise ValueError(f"position {position} of row {row} is not in the suffix")
        return col


@torch.no_grad()
def suffix_setup(model, batch: SuffixBatch, layer: int, hooks=()):
    """One full forward of `batch`: the keys/values of the prefix columns at every layer (a
    `KVPrefix`), and the residual stream leaving block `layer` at the suffix columns,
    (batch, n_suffix, d_model)."""
    rec = KVRecorder()
    store: dict = {}
    name = f"blocks.{layer}.hook_resid_post"
    hooks = list(hooks) + [(name, partial(_keep_hook, store=store, key=name))]
    width = batch.n_prefix + batch.n_suffix
    mask = prefix_causal_mask(width, 0, key_valid=batch.valid, device=model.device)
    run_with_prefix(model, batch.ids, rec, batch.positions, hooks=hooks, mask=mask)
    p = batch.n_prefix
    prefix = KVPrefix({i: k[:, :, :p] for i, k in rec.keys.items()},
                      {i: v[:, :, :p] for i, v in rec.values.items()})
    return prefix, store[name][:, p:]


def _keep_hook(act, hook, *, store, key):
    store[key] = act.detach()


def suffix_final_normalized(model, batch: SuffixBatch, prefix: KVPrefix, resid: torch.Tensor,
                            start_layer: int, hooks=()) -> torch.Tensor:
    """Run blocks `start_layer`.. on the suffix columns (`resid`: the residual entering that
    block, (batch, n_suffix, d_model)), attending to the prefix's stored keys/values; return the
    final-normalised residual of the suffix columns, with gradients."""
    p = batch.n_prefix
    if start_layer >= model.n_layers:
        return model.bridge.ln_final(resid)
    store: dict = {}
    stop = ("ln_final.hook_out",
            partial(keep_activation_and_stop_hook, store=store, key="final", detach=False))
    mask = prefix_causal_mask(batch.n_suffix, p, key_valid=batch.valid, dtype=resid.dtype,
                              device=model.device)
    try:
        run_with_prefix(model, resid, prefix, batch.positions[:, p:], hooks=list(hooks) + [stop],
                        mask=mask, start_layer=start_layer)
    except StopForward:
        pass
    return store["final"]


class KVCache:
    """A `layer_past` object that keeps every layer's keys/values and grows with each call
    (incremental decoding through the bridge: feed one new token at its position each step)."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return next(iter(self.keys.values())).shape[-2] if self.keys else 0

    def update(self, k, v, layer_idx, *args, **kwargs):
        i = int(layer_idx)
        if i in self.keys:
            k = torch.cat([self.keys[i], k], dim=-2)
            v = torch.cat([self.values[i], v], dim=-2)
        self.keys[i], self.values[i] = k.detach(), v.detach()
        return k, v


def _kv_decode(model, ids: list[int], max_new_tokens: int, pick, stop_ids=()) -> list[int]:
    """Decode through the bridge with a growing `KVCache`: one forward of the prompt, then one
    single-token forward per new token, each chosen by `pick(last logits)`. Stops early at a
    token in `stop_ids`. Returns the new token ids."""
    cache = KVCache()
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    n = len(ids)
    logits = run_with_prefix(model, x, cache, torch.arange(n)[None])
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = pick(logits[0, -1])
        out.append(nxt)
        if nxt in stop_ids or len(out) == max_new_tokens:
            break
        pos = n + len(out) - 1
        mask = prefix_causal_mask(1, pos, device=model.device)
        logits = run_with_prefix(model, torch.tensor([[nxt]], device=model.device), cache,
                                 torch.tensor([[pos]]), mask=mask)
    return out


@torch.no_grad()
def greedy_tokens(model, ids: list[int], max_new_tokens: int, stop_ids=()) -> list[int]:
    """Greedy continuation of `ids` through the bridge with a growing `KVCache`: one forward of
    the prompt, then one single-token forward per new token. Stops early at a token in
    `stop_ids`. Returns the new token ids."""
    return _kv_decode(model, ids, max_new_tokens, lambda lg: int(lg.argmax()), stop_ids)


def _top_k_pick(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> int:
    """One token drawn as ROME's `generate_fast` draws it: softmax over the vocabulary, keep the
    `top_k` most probable, renormalise, sample one."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, top_k)
    choice = torch.multinomial(top.values / top.values.sum(), 1, generator=generator)
    return int(top.indices[choice])


@torch.no_grad()
def sampled_tokens(model, ids: list[int], max_new_tokens: int, top_k: int,
                   generator: torch.Generator) -> list[int]:
    """Top-k sampled continuation of `ids` (ROME's sampler, `_top_k_pick`), never stopping
    early (ROME's `generate_fast` does not stop at the end-of-text token either).

    With no hook edit in place, and where the bridge reads stored keys/values
    (`supports_kv_prefix`), it decodes with a growing `KVCache` like `greedy_tokens`; otherwise
    it reruns the whole sequence every step, so a hook edit that acts wherever the subject
    appears sees it on every step. The two paths draw the same tokens from the same generator
    (up to float rounding of the logits). Returns the new token ids."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int")
    out: list[int] = []
    if max_new_tokens <= 0:
        return out
    if supports_kv_prefix(model) and not model.active_hooks():
        return _kv_decode(model, ids, max_new_tokens,
                          lambda lg: _top_k_pick(lg, top_k, generator))
    seq = list(ids)
    for _ in range(max_new_tokens):
        x = torch.tensor([seq], dtype=torch.long, device=model.device)
        logits = model.hf(x, attention_mask=torch.ones_like(x), use_cache=False).logits
        out.append(_top_k_pick(logits[0, -1], top_k, generator))
        seq.append(out[-1])
    return out
