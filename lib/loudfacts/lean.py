"""A lean run of a Llama-family model's upper blocks, for loops that rerun them many times.

ROME's v* optimisation reruns blocks L+1.. on the same short suffix twenty times (forward and
backward), with only δ changing. Through the TransformerLens bridge each of those runs pays for
hook points, wrappers and argument handling on every block: on the embedded model a v* step of
one row and one token still took 57 ms, about a fifth of a full step (a one-off profile,
2026-12-07; `bench/bench_rome.py` times the two routes, "default" against "bridge", per whole
edit). `LeanSuffix` runs the same arithmetic as plain tensor operations:

* the weights are read from the model once per loop (so an edited or stacked model is run as it
  is) and fused where a block multiplies one input by several matrices: q, k and v in one
  matrix, gate and up in another, so each block makes three large products instead of seven;
* rotary angles, the attention mask and the stored prefix keys/values are prepared once.

Scoring's packed forwards (`scoring.lean_packing`) run the whole model the same way
(`LeanPacked`: every block from the embedding, each packed position at its own depth under the
prefix tree's mask), with the model's weights as they are (no fused copies for one forward).

It computes what the HF Llama block computes (RMSNorm in float32, rotary embedding, grouped
query attention with the float32 softmax of HF's eager attention, SiLU-gated MLP), so results
agree with the bridge to float rounding. That is checked, not assumed: `lean_supported(model)`
runs both routes on a random suffix with a stored prefix once per model object and uses the lean
one only if the final residuals agree to 1e-5 of their scale. It is never used while any hook
is set on the model (a hook could read or change what the lean run skips), under autocast, or
inside `lean_route(False)` (benchmarks compare the routes).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

_LEAN = {"on": True}
_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> bool
TOLERANCE = 1e-5  # of the larger absolute value of the bridge's final residual


@contextlib.contextmanager
def lean_route(enabled: bool):
    """Allow (True, the default) or forbid the lean route inside the block."""
    before = _LEAN["on"]
    _LEAN["on"] = bool(enabled)
    try:
        yield
    finally:
        _LEAN["on"] = before


def _config_fits(model) -> bool:
    """The HF configuration describes a block that `LeanSuffix` computes: Llama-style, no biases,
    SiLU MLP, no per-head q/k norms, no sliding window or logit soft-capping."""
    if getattr(model.arch, "family", None) != "llama":
        return False
    cfg = model.hf.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "hidden_act", None) != "silu":
        return False
    for name in ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, name, None):
            return False
    layer = model.hf.get_submodule(f"{model.arch.layers}.0")
    attn = layer.get_submodule("self_attn")
    return not any(hasattr(attn, n) for n in ("q_norm", "k_norm"))


def _hooked(model) -> bool:
    from loudfacts.scoring import _any_hooks  # scoring imports this package's forward helpers

    return _any_hooks(model, pack_aware_ok=False)


def can_use(model) -> bool:
    """Whether the lean route may run now: allowed, no hooks set, no autocast, and the model
    passed `lean_supported`."""
    if not _LEAN["on"] or torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled():
        return False
    if _hooked(model):
        return False
    return lean_supported(model)


class _LeanBlocks:
    """Blocks `start_layer`.. and the final norm of a Llama-family model as plain tensor
    operations: the arithmetic `LeanSuffix` and `LeanPacked` share. A subclass sets `cos`,
    `sin` (batch, 1, n, d_head) and the additive `mask` (batch or 1, 1, 1, n, keys).

    With `fuse`, q/k/v and gate/up are concatenated into one matrix each (copies: worth it for
    a loop that reruns the blocks many times); without, the model's own weights are used as
    they are (no copies: one forward)."""

    def __init__(self, model, start_layer: int, prefix=None, fuse: bool = True):
        hf, cfg = model.hf, model.hf.config
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.d_head = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.scaling = self.d_head ** -0.5
        self.eps = float(cfg.rms_norm_eps)
        q_w, kv_w = self.n_heads * self.d_head, self.n_kv * self.d_head
        self.splits = (q_w, kv_w, kv_w)

        def weight(path):
            return hf.get_submodule(path).weight.detach()

        self.blocks = []
        with torch.no_grad():
            for i in range(start_layer, model.n_layers):
                at = f"{model.arch.layers}.{i}"
                qkv = [weight(f"{at}.self_attn.{p}_proj") for p in "qkv"]
                gate_up = [weight(f"{at}.mlp.gate_proj"), weight(f"{at}.mlp.up_proj")]
                self.blocks.append({
                    "ln1": weight(f"{at}.input_layernorm"),
                    "qkv": torch.cat(qkv) if fuse else qkv,
                    "o": weight(f"{at}.self_attn.o_proj"),
                    "ln2": weight(f"{at}.post_attention_layernorm"),
                    "gate_up": torch.cat(gate_up) if fuse else gate_up,
                    "down": weight(f"{at}.mlp.down_proj"),
                    "k": prefix.keys[i] if prefix is not None else None,
                    "v": prefix.values[i] if prefix is not None else None,
                })
            self.ln_f = weight("model.norm")

    @staticmethod
    def _rotary(model, positions):
        """cos, sin (batch, 1, n, d_head) of the model's rotary embedding at `positions`."""
        rot = model.hf.model.rotary_emb
        rot = getattr(rot, "original_component", None) or rot
        probe = torch.zeros(1, dtype=torch.float32, device=model.device)
        cos, sin = rot(probe, positions.to(model.device))
        return cos[:, None], sin[:, None]

    def _norm(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rotate(self, x):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * self.cos + rotated * self.sin

    @staticmethod
    def _linears(x, w, splits):
        if isinstance(w, list):
            return [F.linear(x, part) for part in w]
        return F.linear(x, w).split(splits, dim=-1)

    def _attention(self, h, blk):
        b, s, _ = h.shape
        q, k, v = self._linears(h, blk["qkv"], self.splits)
        q = self._rotate(q.view(b, s, self.n_heads, self.d_head).transpose(1, 2))
        k = self._rotate(k.view(b, s, self.n_kv, self.d_head).transpose(1, 2))
        v = v.view(b, s, self.n_kv, self.d_head).transpose(1, 2)
        if blk["k"] is not None:
            k = torch.cat([blk["k"].to(k.dtype), k], dim=-2)
            v = torch.cat([blk["v"].to(v.dtype), v], dim=-2)
        # query head j*g..j*g+g-1 share kv head j (HF's repeat_kv): group them, no copies
        g = self.n_heads // self.n_kv
        q = q.reshape(b, self.n_kv, g * s, self.d_head)
        scores = (q @ k.transpose(-1, -2)) * self.scaling
        scores = scores.view(b, self.n_kv, g, s, -1) + self.mask
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = pattern.view(b, self.n_kv, g * s, -1) @ v
        out = out.view(b, self.n_heads, s, self.d_head).transpose(1, 2).reshape(b, s, -1)
        return F.linear(out, blk["o"])

    def _mlp(self, x, blk):
        w = blk["gate_up"]
        gate, up = self._linears(x, w, None) if isinstance(w, list) else F.linear(x, w).chunk(
            2, dim=-1)
        return F.linear(F.silu(gate) * up, blk["down"])

    def _run(self, resid: torch.Tensor) -> torch.Tensor:
        h = resid
        for blk in self.blocks:
            h = h + self._attention(self._norm(h, blk["ln1"]), blk)
            h = h + self._mlp(self._norm(h, blk["ln2"]), blk)
        return self._norm(h, self.ln_f)


class LeanSuffix(_LeanBlocks):
    """Blocks `start_layer`.. and the final norm on a `SuffixBatch`'s suffix columns, attending
    to stored prefix keys/values; the lean twin of `forward.suffix_final_normalized`.

    Args:
        model: a `LoadedModel` of the Llama family (see `lean_supported`).
        batch: the `SuffixBatch` (positions, padding).
        prefix: a `KVPrefix` holding every layer's keys/values of the prefix columns (keys with
            rotary embedding applied, as the HF attention stores them); None for a batch
            without prefix columns (`n_prefix` 0: whole sequences, as FT runs them).
        start_layer: the first block to run (1..n_layers).

    Calling it with the residual entering `start_layer`, (batch, n_suffix, d_model), returns the
    final-normalised residual of the suffix columns, with gradients to that input.
    """

    def __init__(self, model, batch, prefix, start_layer: int):
        from loudfacts.forward import prefix_causal_mask

        if not 1 <= start_layer < model.n_layers:
            raise ValueError(f"start_layer {start_layer} is outside 1..{model.n_layers - 1}")
        if prefix is None and batch.n_prefix:
            raise ValueError(f"the batch has {batch.n_prefix} prefix columns but no prefix "
                             "keys/values were given")
        super().__init__(model, start_layer, prefix)
        with torch.no_grad():
            p = batch.n_prefix
            self.cos, self.sin = self._rotary(model, batch.positions[:, p:])
            mask = prefix_causal_mask(batch.n_suffix, p, key_valid=batch.valid,
                                      device=model.device)
            # (batch, 1, 1, n_suffix, keys): broadcast over the query heads of each kv head
            self.mask = mask[:, :, None]

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        return self._run(resid)


class LeanPacked(_LeanBlocks):
    """The whole model but the unembedding on packed rows (`scoring.PrefixPack`): token ids,
    each position at its own depth (`positions`, (rows, width)) and seeing what the additive
    mask (rows, width, width) lets it see; the lean twin of the HF base model's forward that
    `scoring` makes for packed rows. No fused copies of the weights: built for one forward.

    Calling it returns the final-normalised residual (rows, width, d_model)."""

    def __init__(self, model, positions: torch.Tensor, mask: torch.Tensor):
        super().__init__(model, 0, fuse=False)
        self.embed = model.hf.get_input_embeddings().weight.detach()
        with torch.no_grad():
            self.cos, self.sin = self._rotary(model, positions)
            self.mask = mask.to(model.device)[:, None, None]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self._run(F.embedding(ids, self.embed))


def llama_mlp_hidden(x, gate_w, up_w):
    """The input of a Llama MLP's down projection: silu(x Wg^T) * (x Wu^T)."""
    return F.silu(F.linear(x, gate_w)) * F.linear(x, up_w)


@torch.no_grad()
def lean_supported(model) -> bool:
    """Whether `LeanSuffix` reproduces the bridge's suffix run on this model: checked once per
    model object (with no hooks set) on two random rows of unequal length with a stored prefix,
    from block 1, to `TOLERANCE` of the bridge's output scale. While a hook is set or the
    bridge's output is not finite, it says False without remembering it."""
    key = model.bridge
    if key in _SUPPORT:
        return _SUPPORT[key]
    if _hooked(model):
        return False  # the bridge's run would include the hooks: check later, hook-free
    from loudfacts.forward import (
        SuffixBatch,
        supports_kv_prefix,
        suffix_final_normalized,
        suffix_setup,
    )

    if not (_config_fits(model) and model.n_layers >= 2):
        _SUPPORT[key] = False
        return False
    if not supports_kv_prefix(model):
        return False  # remembered there (or, with a broken weight, asked again later)
    ok = False
    try:
        gen = torch.Generator().manual_seed(0)
        vocab = min(model.d_vocab, 1000)
        rows = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (9, 6)]
        batch = SuffixBatch(rows, [5, 2], model.tokenizer.pad_token_id or 0,
                            device=model.device)
        prefix, base = suffix_setup(model, batch, 0)
        want = suffix_final_normalized(model, batch, prefix, base, 1)
        real = batch.valid[:, batch.n_prefix:]
        if not torch.isfinite(want[real]).all():
            return False  # nothing to compare against (a broken weight): ask again later
        got = LeanSuffix(model, batch, prefix, 1)(base)
        scale = max(float(want[real].abs().max()), 1.0)
        ok = bool(torch.isfinite(got).all()) and float(
            (got - want)[real].abs().max()) <= TOLERANCE * scale
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError):
        ok = False
    _SUPPORT[key] = ok
    return ok
