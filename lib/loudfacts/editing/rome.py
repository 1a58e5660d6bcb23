"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT"), on the edit contract of `loudfacts.editing.base`.

The idea: the down-projection W of one mid-layer MLP acts as a key-value memory. At the last
token of a subject, the MLP's hidden activation k (the *key*, d_mlp wide, TransformerLens
`blocks.{L}.mlp.hook_post`) is mapped by W to a value W k that, further up, makes the model say
the subject's attributes. To write a new fact we

1. **k\\*** — average the key at the subject's last token over the bare prompt and ~10 short
   prefixes that the model generated itself (seeded, cached per model), so the key stands for
   the subject in any context rather than in one sentence;
2. **v\\*** — find by gradient descent a vector δ that, added to the layer's MLP output at the
   subject's last token (a hook on `blocks.{L}.hook_mlp_out`), makes the model say target_new
   after the prompt with each prefix (NLL), while keeping what the model says about the subject
   in general ("{subject} is a") close to before (KL "essence" term), with weight decay on δ and
   a clamp on its norm. The desired MLP output is v\\* = W k\\* + b + δ. (`v_n_prefixes` lets v\\*
   use fewer of the prefixes than k\\*, and `v_autocast` runs its passes in mixed precision:
   speed settings, used for SmolLM2 on a CPU; see its hparams file for what they change);
3. **update** — the smallest change of W, in the metric of the keys' second moment
   C = E[k kᵀ] (`loudfacts.stats`), that maps k\\* to v\\*:

       W' = W + (v* - W k* - b) uᵀ / (uᵀ k*),   u = C⁻¹ k*.

   Then W' k\\* + b = v\\* exactly, and keys orthogonal to k\\* in the C⁻¹ metric are unchanged.

**Same key in numerator and denominator.** The published ROME code takes u from the averaged
key but divides by the key of the bare prompt (and subtracts W times that key), so W' k\\* is
not v\\* and the edit drifts; the r-ROME paper (Gupta et al. 2024, "Rebuilding ROME") fixes it by
using k\\* everywhere. We use k\\* everywhere (as in r-ROME). W k\\* + b is the mean MLP output
over k\\*'s prompts, and v\\* - (W k\\* + b) is exactly the optimised δ.

GPT-2 stores its down-projection (Conv1D) as (d_mlp, d_model); the update is transposed for it
(`model.arch.mlp_out_transposed`).

`RomeEditor.components(request)` returns k\\*, v\\*, W k\\* and δ without touching the model; the
hook-delta editor of `loudfacts.editing.patching` adds the same δ at inference time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
from collections import OrderedDict
from typing import ClassVar

import torch
import torch.nn.functional as F

from loudfacts.editing.base import (
    EditError,
    Editor,
    EditRequest,
    WeightEdit,
    register_editor,
    validate_request,
)
from loudfacts.forward import (
    SuffixBatch,
    final_normalized,
    residual_after,
    suffix_final_normalized,
    suffix_setup,
    supports_kv_prefix,
    unembed,
)
from loudfacts.paths import cache_dir
from loudfacts.tokens import document_separator, find_subject_spans

PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
_COMPONENTS: OrderedDict = OrderedDict()  # see RomeEditor.components
_COMPONENTS_KEPT = 1024  # ~15 kB each


def clear_components_memo() -> None:
    """Forget remembered `RomeEditor.components` results (benchmarks time fresh edits)."""
    _COMPONENTS.clear()


# -- context prefixes --------------------------------------------------------------------------
def context_prefixes(model, n: int = 10, length: int = 10, seed: int = 0) -> list[str]:
    """`n` short texts the model writes itself (sampled, top-k 5, seeded), cached per model.

    ROME averages the subject's key over prompts preceded by such prefixes so that k* and v*
    generalise beyond one sentence. Each prefix is used as "{prefix}. {prompt}".

    Returns:
        list of `n` strings (without the trailing ". ").
    """
    if n <= 0:
        return []
    from loudfacts.stats import _fingerprint

    path = cache_dir("rome") / (
        f"prefixes_{model.name.replace('/', '_')}-{_fingerprint(model)}_n{n}_len{length}_s{seed}.json"
    )
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, list) and len(cached) == n and all(isinstance(s, str) for s in cached):
            return cached
    except (OSError, ValueError):
        pass
    out = []
    per_start = -(-n // len(PREFIX_STARTS))
    # Start each text after a document separator: a bare first token sits on the attention
    # sink and small models continue it with punctuation noise. Sampling is a plain loop
    # without a KV cache (10 short steps), which keeps it independent of generate()'s caching.
    sep = _document_separator(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in PREFIX_STARTS:
            x = torch.tensor([sep + model.encode(start)] * per_start, device=model.device)
            for _ in range(length):
                top = model.hf(x).logits[:, -1].float().topk(5, dim=-1)
                pick = torch.multinomial(torch.softmax(top.values, -1), 1)
                x = torch.cat([x, top.indices.gather(1, pick)], dim=1)
            for row in x[:, len(sep):]:
                text = model.decode(row.tolist())
                # Braces would break "{}" templates downstream; newlines are collapsed because
                # the prompts never contain them.
                text = " ".join(text.replace("{", " ").replace("}", " ").split())
                out.append(text)
    out = out[:n]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, path)
    return out


def _document_separator(model) -> list[int]:
    """[id of the model's document separator] (`tokens.document_separator`), or []."""
    sep = document_separator(model)
    return model.encode(sep) if sep else []


def _pad_batch(rows: list[list[int]], pad: int) -> torch.Tensor:
    """Right-pad token-id lists into a (batch, pos) LongTensor. With causal attention and right
    padding the real positions never see the padding, so no attention mask is needed."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids


def _subject_last_token(model, text: str, subject: str, before: int) -> int:
    """Index of the last token of the subject occurrence that ends at or before char `before`
    (the one inside the prompt, not one a generated prefix happens to contain)."""
    spans = find_subject_spans(model, text, subject)
    k = text[:before].count(subject.strip()) - 1
    if not spans or k < 0:
        raise EditError(f"subject {subject!r} not found in {text!r}")
    return spans[k][1] - 1


AUTOCAST_DTYPES = (None, "bfloat16", "float16")  # v_autocast: None = float32


@contextlib.contextmanager
def mixed_precision(model, dtype: str | None):
    """Run v*'s steps under torch.autocast in `dtype` ("bfloat16" or "float16"); None: a no-op.

    Matrix products run in `dtype` (float32 accumulation); norms, softmaxes, the residual
    stream, δ and the optimiser stay in float32. While the context is open the model's
    parameters are marked `requires_grad` so that autocast casts each weight once and reuses
    the cast (its cache keeps casts of such leaves only, until the outermost context exits);
    the loop asks autograd for δ's gradient alone, so no weight gradient is computed. The flags
    are restored on exit, also after an exception; the weights themselves are never written.
    """
    if dtype is None:
        yield
        return
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"v_autocast={dtype!r}: use None (float32), 'bfloat16' or 'float16'")
    params = list(model.hf.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.autocast(device_type=model.device.type, dtype=getattr(torch, dtype)):
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# -- hooks ---------------------------------------------------------------------------------------
def record_at_positions_hook(act, hook, *, store, key, rows, positions):
    """Keep act[rows, positions] (n, d) in `store[key]`."""
    store[key] = act[rows, positions].detach().clone()


# -- the editor ----------------------------------------------------------------------------------
@register_editor("rome")
class RomeEditor(Editor):
    """Rank-one model editing of one MLP down-projection (see the module docstring).

    Hyper-parameters (`hparams/rome/<model>.json` overrides `defaults`):
        layer: the edited layer.
        n_prefixes, prefix_len, prefix_seed: the self-generated context prefixes.
        v_lr, v_num_grad_steps, v_weight_decay, clamp_norm_factor, kl_factor, early_stop_nll:
            the optimisation of δ (Adam; stop when the mean target NLL < early_stop_nll).
        kl_prompts: templates for the essence term ("{} is a").
        mom2_adjustment: use C⁻¹ k* (True, ROME) or k* itself (False) as the update direction.
        mom2_n_tokens, mom2_corpus, mom2_seq_len, mom2_batch_tokens: the statistics.
        mom2_ridge: C + ridge·(tr C / d)·I before solving (keeps small-sample C invertible).
        seed: seeds the optimisation.
        suffix_only: a speed switch, not a setting of the method: each step of v* reruns only
            the subject's last token and what follows it (the same δ up to float rounding;
            off, or where the bridge cannot reuse stored keys/values, every position reruns).
        v_autocast: None (float32) or "bfloat16" / "float16": v*'s forward and backward
            passes under autocast (`mixed_precision`); k*, W k*, the update and everything
            outside v* stay float32. Faster where the hardware multiplies in that dtype
            (SmolLM2's hparams use bfloat16: see the evidence there), not the same δ: the
            v* study (bench/study_rome_v.py) measures what it changes.
        v_n_prefixes: None (v* over all of k*'s prompts, as ROME) or how many of the prefixes
            v*'s NLL uses, evenly spaced (`v_context_templates`); k* always uses all of them.
    """

    hparams_dir = "rome"
    defaults: ClassVar[dict] = {
        "layer": 5,
        "n_prefixes": 10,
        "prefix_len": 10,
        "prefix_seed": 0,
        "v_lr": 0.5,
        "v_num_grad_steps": 20,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625,
        "early_stop_nll": 0.05,
        "kl_prompts": ["{} is a"],
        "mom2_adjustment": True,
        "mom2_n_tokens": 100_000,
        "mom2_corpus": "wikitext",
        "mom2_seq_len": 128,
        "mom2_batch_tokens": 2048,
        "mom2_ridge": 1e-4,
        "seed": 0,
        "suffix_only": True,
        "v_autocast": None,
        "v_n_prefixes": None,
    }

    def __post_init__(self):
        super().__post_init__()
        self.model._check_layer(int(self.hparams["layer"]))
        n = self.hparams["v_n_prefixes"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"rome: v_n_prefixes={n!r} must be None (all of n_prefixes) or an "
                             "integer >= 0")
        if self.hparams["v_autocast"] not in AUTOCAST_DTYPES:
            raise ValueError(f"rome: v_autocast={self.hparams['v_autocast']!r}; use None "
                             "(float32), 'bfloat16' or 'float16'")
        self._chol: dict[tuple, torch.Tensor] = {}

    # -- public pieces ------------------------------------------------------------------------
    @property
    def layer(self) -> int:
        return int(self.hparams["layer"])

    def context_templates(self) -> list[str]:
        """"{}" (the bare prompt) and "{prefix}. {}" for each self-generated prefix."""
        hp = self.hparams
        prefixes = context_prefixes(self.model, hp["n_prefixes"], hp["prefix_len"],
                                    hp["prefix_seed"])
        return ["{}"] + [p + ". {}" for p in prefixes]

    def v_context_templates(self, templates: list[str] | None = None) -> list[str]:
        """The templates v*'s NLL is averaged over: "{}" and `v_n_prefixes` of k*'s prefixes
        (`templates`, default `context_templates()`), evenly spaced over them (all of them when
        None or larger)."""
        tpls = self.context_templates() if templates is None else templates
        n, prefixes = self.hparams["v_n_prefixes"], tpls[1:]
        if n is None or n >= len(prefixes):
            return tpls
        return [tpls[0]] + [prefixes[(i * len(prefixes)) // n] for i in range(n)]

    def second_moment(self) -> torch.Tensor:
        """C = E[k kᵀ] of the edit layer's keys (float64, d_mlp x d_mlp), cached on disk."""
        from loudfacts.stats import second_moment

        hp = self.hparams
        return second_moment(
            self.model, [self.layer], n_tokens=hp["mom2_n_tokens"], corpus=hp["mom2_corpus"],
            batch_tokens=hp["mom2_batch_tokens"], seq_len=hp["mom2_seq_len"],
        )[self.layer]

    def update_direction(self, k_star: torch.Tensor) -> torch.Tensor:
        """u = C⁻¹ k* (float64, d_mlp); k* itself when `mom2_adjustment` is off."""
        k = k_star.detach().to(torch.float64).cpu()
        if not self.hparams["mom2_adjustment"]:
            return k
        hp = self.hparams
        key = (self.layer, hp["mom2_n_tokens"], hp["mom2_corpus"], hp["mom2_seq_len"],
               hp["mom2_ridge"])
        if key not in self._chol:
            c = self.second_moment()
            ridge = hp["mom2_ridge"] * torch.trace(c) / c.shape[0]
            c = c + ridge * torch.eye(c.shape[0], dtype=c.dtype)
            chol, info = torch.linalg.cholesky_ex(c)
            if int(info) != 0:
                raise EditError(
                    f"key second moment of layer {self.layer} is not positive definite "
                    f"(mom2_n_tokens={hp['mom2_n_tokens']}); raise mom2_ridge or the token count"
                )
            self._chol[key] = chol
        return torch.cholesky_solve(k[:, None], self._chol[key])[:, 0]

    def components(self, request: EditRequest) -> dict:
        """k*, v*, W k* and δ for a request, computed without changing the model.

        Returns:
            dict with
              "layer": int, the edited layer;
              "k_star": Float[Tensor, "d_mlp"], the mean key at the subject's last token;
              "v_star": Float[Tensor, "d_model"], the desired MLP output there (W k* + b + δ);
              "w_k": Float[Tensor, "d_model"], the layer's current output for k* (W k* + b);
              "delta": Float[Tensor, "d_model"], v_star - w_k (the optimised δ);
              "timings": {"k": seconds, "v": seconds};
              "v_history": per-step {"nll", "kl", "wd", "norm"} of the optimisation;
              "n_contexts": number of prompts k* averages over;
              "n_v_contexts": number of prompts v*'s NLL averages over.

        Raises:
            EditError: subject not in the prompt, empty target, non-finite loss.

        The result is remembered (per process, the last 1024) under the request, the
        hyper-parameters, a fingerprint of the weights and the hooks in place, so the
        hook-delta editor, which adds the same δ at inference time, reuses the optimisation
        instead of repeating it; a reused result says so in "reused".
        """
        t_ids = validate_request(self.model, request)  # bad input fails whether remembered or not
        key = (id(self.model), self.model.weights_fingerprint(), self.model.active_hooks(),
               request.prompt, request.subject, request.target_new,
               json.dumps(self.hparams, sort_keys=True, default=str))
        if key in _COMPONENTS:
            _COMPONENTS.move_to_end(key)
            return {**_COMPONENTS[key], "reused": True}
        comps = self._components(request, t_ids)
        _COMPONENTS[key] = comps
        while len(_COMPONENTS) > _COMPONENTS_KEPT:
            _COMPONENTS.popitem(last=False)
        return {**comps, "reused": False}

    def _components(self, request: EditRequest, t_ids: list[int]) -> dict:
        # generated once per model and cached on disk; read once per edit, not part of k*'s time
        tpls = self.context_templates()
        v_tpls = self.v_context_templates(tpls)
        t0 = time.perf_counter()
        k_star = self._k_star(request, tpls)
        t1 = time.perf_counter()
        w_k = self._layer_output(k_star)
        delta, history = self._delta(request, t_ids, w_k, v_tpls)
        t2 = time.perf_counter()
        return {
            "layer": self.layer,
            "k_star": k_star,
            "v_star": w_k + delta,
            "w_k": w_k,
            "delta": delta,
            "timings": {"k": t1 - t0, "v": t2 - t1},
            "v_history": history,
            "n_contexts": len(tpls),
            "n_v_contexts": len(v_tpls),
        }

    # -- the three steps ----------------------------------------------------------------------
    @staticmethod
    def _contexts(request: EditRequest, templates: list[str]) -> list[tuple[str, int]]:
        """(text, char index where the prompt's subject ends) for every context template."""
        out = []
        for tpl in templates:
            prompt = tpl.replace("{}", request.prompt)
            text = prompt.replace("{}", request.subject)
            end = prompt.index("{}") + len(request.subject)
            out.append((text, end))
        return out

    @torch.no_grad()
    def _k_star(self, request: EditRequest, templates: list[str]) -> torch.Tensor:
        m = self.model
        rows, pos = [], []
        for text, end in self._contexts(request, templates):
            rows.append(m.encode(text))
            pos.append(_subject_last_token(m, text, request.subject, end))
        ids = _pad_batch(rows, m.tokenizer.pad_token_id or 0).to(m.device)
        store = {}
        name = f"blocks.{self.layer}.mlp.hook_post"
        hook = functools.partial(record_at_positions_hook, store=store, key=name,
                                 rows=torch.arange(len(rows)), positions=torch.tensor(pos))
        stop = self.layer + 1
        with m.bridge.hooks(fwd_hooks=[(name, hook)]):
            m.bridge(ids, **({"stop_at_layer": stop} if stop < m.n_layers else {}))
        return store[name].float().mean(0)

    @torch.no_grad()
    def _layer_output(self, k: torch.Tensor) -> torch.Tensor:
        """W k + b for the edit layer's down-projection (either orientation)."""
        mod = self.model.mlp_out_module(self.layer)
        w = mod.weight.detach().float()
        out = (k.to(w) @ w) if self.model.arch.mlp_out_transposed else (w @ k.to(w))
        if getattr(mod, "bias", None) is not None:
            out = out + mod.bias.detach().float()
        return out

    def _delta(self, request, t_ids, w_k, templates) -> tuple[torch.Tensor, list[dict]]:
        m, hp = self.model, self.hparams
        # Rewrite prompts: each context + the target's tokens but the last (teacher forcing).
        rows, pos, tgt_pos, tgt_ids = [], [], [], []
        for text, end in self._contexts(request, templates):
            p_ids = m.encode(text)
            rows.append(p_ids + t_ids[:-1])
            pos.append(_subject_last_token(m, text, request.subject, end))
            tgt_pos.append(list(range(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids))))
            tgt_ids.append(t_ids)
        n_rewrite = len(rows)
        # Essence prompts: what the model says about the subject in general.
        kl_last = []
        for tpl in hp["kl_prompts"]:
            text = tpl.replace("{}", request.subject)
            end = tpl.index("{}") + len(request.subject)
            ids = m.encode(text)
            rows.append(ids)
            pos.append(_subject_last_token(m, text, request.subject, end))
            kl_last.append(len(ids) - 1)
        pad = m.tokenizer.pad_token_id or 0
        t_row = torch.tensor([i for i, tp in enumerate(tgt_pos) for _ in tp])
        t_tok = torch.tensor([t for ti in tgt_ids for t in ti])
        t_len = torch.tensor([len(ti) for ti in tgt_ids], dtype=torch.float32)
        kl_rows = torch.arange(n_rewrite, len(rows))
        suffix = bool(hp["suffix_only"]) and supports_kv_prefix(m)
        if suffix:
            # δ only changes the subject's last token and what follows it (causal attention),
            # so each row is aligned on that token, its earlier positions run once, and every
            # step reruns only the suffix against their stored keys/values.
            batch = SuffixBatch(rows, pos, pad, device=m.device)
            prefix, base = suffix_setup(m, batch, self.layer)
            col = lambda r, q: batch.suffix_column(r, q)  # noqa: E731
            positions = torch.zeros(len(rows), dtype=torch.long)
            t_pos = torch.tensor([col(i, q) for i, tp in enumerate(tgt_pos) for q in tp])
            kl_pos = torch.tensor([col(n_rewrite + i, q) for i, q in enumerate(kl_last)])
        else:
            ids = _pad_batch(rows, pad).to(m.device)
            base = residual_after(m, ids, self.layer)
            positions = torch.tensor(pos)
            t_pos = torch.tensor([q for tp in tgt_pos for q in tp])
            kl_pos = torch.tensor(kl_last, dtype=torch.long)
        all_rows = torch.arange(len(rows))

        torch.manual_seed(int(hp["seed"]))  # δ starts at zero (as in ROME); seeded anyway
        delta = torch.zeros(m.d_model, device=m.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp["v_lr"])
        target_norm = float(w_k.norm())
        max_norm = hp["clamp_norm_factor"] * target_norm
        # δ is added to the MLP output of layer L at the subject's last token, i.e. to the
        # residual leaving block L. Everything up to there is the same at every step: compute
        # it once, then run only blocks L+1.. and unembed only the positions the loss reads.
        onehot = torch.zeros(base.shape[:2] + (1,), device=m.device)
        onehot[all_rows, positions] = 1.0
        need_rows = torch.cat([t_row, kl_rows]).to(m.device)
        need_pos = torch.cat([t_pos, kl_pos]).to(m.device)
        n_t = len(t_row)
        kl_init, history = None, []
        with mixed_precision(m, hp["v_autocast"]):
            for step in range(int(hp["v_num_grad_steps"])):
                if suffix:
                    final = suffix_final_normalized(m, batch, prefix, base + onehot * delta,
                                                    self.layer + 1)
                else:
                    final = final_normalized(m, base + onehot * delta, self.layer + 1)
                logits = unembed(m, final[need_rows, need_pos])
                # log-softmax only where it is needed: target positions and the essence ones.
                logp_t = torch.log_softmax(logits[:n_t].float(), dim=-1)
                tok_nll = -logp_t[torch.arange(len(t_tok)), t_tok]
                nll = torch.zeros(n_rewrite, device=tok_nll.device).index_add_(
                    0, t_row.to(tok_nll.device), tok_nll) / t_len.to(tok_nll.device)
                nll = nll.mean()
                kl_logp = torch.log_softmax(logits[n_t:].float(), dim=-1)
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                kl = hp["kl_factor"] * F.kl_div(kl_logp, kl_init, log_target=True,
                                                reduction="batchmean")
                wd = hp["v_weight_decay"] * (delta.norm() / target_norm) ** 2
                loss = nll + kl + wd
                if not torch.isfinite(loss):
                    raise EditError(
                        f"non-finite loss at step {step} while computing v* for {request!r} "
                        f"(nll={nll.item()}, kl={kl.item()}); the model was not edited"
                    )
                history.append({"nll": nll.item(), "kl": kl.item(), "wd": wd.item(),
                                "norm": delta.detach().norm().item()})
                if nll.item() < hp["early_stop_nll"]:
                    break
                # δ's gradient only (under mixed precision the weights are marked as needing
                # gradients; asking for δ alone keeps autograd from computing theirs).
                (delta.grad,) = torch.autograd.grad(loss, [delta])
                opt.step()
                with torch.no_grad():  # ROME's norm clamp
                    norm = delta.norm()
                    if norm > max_norm:
                        delta.mul_(max_norm / norm)
        if not torch.isfinite(delta).all():
            raise EditError(f"v* for {request!r} is not finite; the model was not edited")
        return delta.detach().float(), history

    # -- the edit -----------------------------------------------------------------------------
    def rank_one_update(self, k_star: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """ΔW = δ uᵀ / (uᵀ k*) with u = C⁻¹ k*, in the stored orientation of the weight.

        Returns:
            Float[Tensor, "d_model d_mlp"] (Linear) or Float[Tensor, "d_mlp d_model"] (Conv1D).
        """
        u = self.update_direction(k_star)
        denom = float(u @ k_star.detach().to(torch.float64).cpu())
        if not abs(denom) > 0 or math.isnan(denom):
            raise EditError(f"degenerate update: uᵀk* = {denom}")
        dw = torch.outer(delta.detach().to(torch.float64).cpu(), u) / denom
        return dw.T if self.model.arch.mlp_out_transposed else dw

    def _compute(self, request: EditRequest) -> WeightEdit:
        t0 = time.perf_counter()
        if self.hparams["mom2_adjustment"]:  # load (or, the first time, collect) C up front
            self.update_direction(torch.ones(self.model.d_mlp))
        t_stats = time.perf_counter() - t0
        comps = self.components(request)
        edit = self.edit_from_components(request, comps)
        edit.info["timings"] = {"stats": t_stats, **comps["timings"], **edit.info["timings"]}
        return edit

    def edit_from_components(self, request: EditRequest, comps: dict) -> WeightEdit:
        """The rank-one weight edit for already computed k* and δ (`components(request)`).

        k* and δ do not depend on the statistics, so the effect of C (token count, on/off)
        can be studied by calling this on editors with different `mom2_*` settings.
        """
        t0 = time.perf_counter()
        path = self.model.arch.mlp_out.format(self.layer)
        w = self.model.module(path).weight.detach()
        dw = self.rank_one_update(comps["k_star"], comps["delta"])
        new_w = (w.to(torch.float64).cpu() + dw).to(w.dtype)
        info = {
            "layer": self.layer,
            "module": path,
            "timings": {"update": time.perf_counter() - t0},
            "v_steps": len(comps.get("v_history", [])),
            "v_final_nll": comps["v_history"][-1]["nll"] if comps.get("v_history") else None,
            "delta_norm": float(comps["delta"].norm()),
            "dw_rel_norm": float(dw.norm() / w.to(torch.float64).norm()),
            "mom2_adjustment": bool(self.hparams["mom2_adjustment"]),
            "mom2_n_tokens": int(self.hparams["mom2_n_tokens"]),
            "key": "k* in numerator and denominator (r-ROME)",
            # k*, v*, W k*, δ as computed (for checks and for the hook-delta editor).
            "components": {k: comps[k] for k in ("k_star", "v_star", "w_k", "delta")},
        }
        return WeightEdit(self.model, {path: new_w}, request, self.name, info)
