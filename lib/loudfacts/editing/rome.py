"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT"), on the edit contract of `loudfacts.editing.base`.

The idea: the down-projection W of one mid-layer MLP acts as a key-value memory. At the last
token of a subject, the MLP's hidden activation k (the *key*, d_mlp wide, TransformerLens
`blocks.{L}.mlp.hook_post`) is mapped by W to a value W k that, further up, makes the model say
the subject's attributes. By default this module computes what the authors' code
(kmeng01/rome: `rome/compute_u.py`, `rome/compute_v.py`, `rome/rome_main.py`) computes:

1. **k\\*** — the key at the subject's last token, averaged over the bare prompt and short
   prefixes the model samples itself from a document separator (top-k 5; ROME's recipe
   `prefix_recipe` = [[5, 10], [10, 10]]: ten texts of 5 tokens and ten of 10, the separator
   counted); each prefix is used as "{prefix}. {prompt}". k_bare is the key of the bare prompt.
2. **v\\*** — Adam on a vector δ added to the layer's MLP output (`blocks.{L}.hook_mlp_out`) at
   the subject's last token of every prompt, minimising

       NLL(target_new | each context)                                  (mean over contexts)
     + kl_factor · KL(P_δ ‖ P_0) of the next token after the subject's last token in "{} is a"
     + v_weight_decay · ‖δ‖ / ‖target_init‖²

   where target_init = W k_bare + b is the layer's output on the bare prompt. After each step δ
   is clamped to ‖δ‖ ≤ clamp_norm_factor · ‖target_init‖. The loop stops when the *total*
   loss < 0.05, and makes at most `v_num_grad_steps` - 1 updates (the reference breaks before
   the last one). v\\* = target_init + δ.
3. **update** — u = C⁻¹ k\\* with C = E[k kᵀ] over generic text (`loudfacts.stats`), and

       W' = W + δ uᵀ / (uᵀ k_bare)

   (the code's right vector is (v* - W k_bare - b) / (k_bareᵀ u), and v* - W k_bare - b = δ),

   so W' k_bare + b = v\\* exactly, and keys orthogonal to k\\* in the C⁻¹ metric are unchanged.

Every deviation from that is a named hyper-parameter, off in the default `rome` editor (see
`RomeEditor` and `hparams/rome/*.md` for what each one changes):

* `update_key="k_star"` — r-ROME's update (Gupta et al. 2024, "Rebuilding ROME"): the key of
  the denominator and the subtracted output are the prefix-averaged k\\*,
  W' = W + (v* - W k* - b) uᵀ / (uᵀ k*), so W' k\\* + b = v\\*. The `r-rome` editor is ROME
  with this one change.
* `norm_reference="w_k_star"` — clamp and decay relative to ‖W k\\* + b‖ instead of
  ‖target_init‖.
* `early_stop_on="nll"` — stop on the NLL alone instead of the total loss.
* `v_autocast="bfloat16"` / `"float16"` — v\\*'s passes under autocast (changes δ by 19-40%).
* `v_n_prefixes=n` — v\\*'s NLL over the bare prompt and n of k\\*'s prefixes.
* `prefix_starts=[...]` — prefixes begun with these words (MEMIT's recipe) instead of the bare
  separator.

`suffix_only` (each v\\* step reruns only the subject's last token onwards against stored
keys/values) is a speed switch that computes the same δ to float rounding; it is on. On a
Llama-family model with no hook set and float32 passes, those steps run through
`loudfacts.lean` (the same blocks as plain tensor operations, checked against the bridge once
per model), again the same δ to float rounding; `lean.lean_route(False)` turns that off.

GPT-2 stores its down-projection (Conv1D) as (d_mlp, d_model); the update is transposed for it
(`model.arch.mlp_out_transposed`).

`RomeEditor.components(request)` returns k\\*, v\\*, δ and the rest without touching the model; the
hook-delta editor of `loudfacts.editing.patching` adds the same δ at inference time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
import unicodedata
from collections import OrderedDict
from typing import ClassVar

import torch
import torch.nn.functional as F

from loudfacts.digests import cache_file, digest, digest_file, weight_digest, weights_fingerprint
from loudfacts.atomic import atomic_path, write_json
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
from loudfacts.lean import LeanSuffix
from loudfacts.lean import can_use as lean_can_use
from loudfacts.tokens import document_separator, find_subject_spans

_COMPONENTS: OrderedDict = OrderedDict()  # see RomeEditor.components
_COMPONENTS_KEPT = 1024  # ~15 kB each
# The on-disk copy of components (see RomeEditor.components) is on unless this is "0"; the
# test suite and the benchmarks switch it off (they time or monkeypatch fresh optimisations).
COMPONENTS_CACHE_ENV = "LOUDFACTS_ROME_COMPONENTS_CACHE"
_COMPONENTS_FORMAT = 1
_TENSOR_FIELDS = ("k_star", "k_bare", "target_init", "v_star", "w_k", "delta")


def clear_components_memo() -> None:
    """Forget remembered `RomeEditor.components` results (benchmarks time fresh edits)."""
    _COMPONENTS.clear()


def components_disk_cache_enabled() -> bool:
    return os.environ.get(COMPONENTS_CACHE_ENV, "1") != "0"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """SHA-256 of the source of every module that computes ROME's components: a change to
    any of them makes earlier cached components unreachable."""
    import loudfacts.editing.base as base
    import loudfacts.forward as forward
    import loudfacts.lean as lean
    import loudfacts.models as models
    import loudfacts.stats as stats
    import loudfacts.tokens as tokens

    sources = {m.__name__: digest_file(m.__file__)
               for m in (base, forward, lean, models, stats, tokens)}
    return digest({"sources": sources, "rome": digest_file(__file__), "torch": torch.__version__})


# -- context prefixes --------------------------------------------------------------------------
REFERENCE_PREFIX_RECIPE = ((5, 10), (10, 10))  # ROME's context_template_length_params
MEMIT_PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")


def _check_recipe(recipe) -> list[tuple[int, int]]:
    """[(length, count), ...] with positive integers (bools refused), else ValueError."""
    try:
        pairs = [tuple(p) for p in recipe]
    except TypeError:
        pairs = None
    if not pairs or not all(
        len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in p)
        for p in pairs
    ):
        raise ValueError(f"rome: prefix_recipe={recipe!r} must be a non-empty list of "
                         "[length, count] pairs of positive integers, e.g. [[5, 10], [10, 10]]")
    return [(int(a), int(b)) for a, b in pairs]


def context_prefixes(model, recipe=REFERENCE_PREFIX_RECIPE, seed: int = 0,
                     starts=None) -> list[str]:
    """Short texts the model samples itself (top-k 5, seeded), cached on disk per model.

    ROME averages the subject's key over prompts preceded by such prefixes so that k* and v*
    generalise beyond one sentence; each is used as "{prefix}. {prompt}".

    Args:
        recipe: [(length, count), ...]; for each pair, `count` texts of `length` tokens. As in
            ROME's `generate_fast`, the length counts the prompt the text is sampled from: the
            document separator alone (`starts=None`, ROME), so `length - 1` tokens are sampled.
        seed: seeds the sampling (ROME does not seed; its prefixes differ run to run).
        starts: None (ROME), or start words (MEMIT's "The", "Therefore", ...): then each text
            begins with one of them, `count` is split evenly over them, the length counts the
            start word's tokens, and the separator is put in front (not counted) so that the
            start word does not sit on the attention sink.

    Returns:
        the texts in recipe order, without the separator, with "\\n\\n" replaced by a space (as
        ROME does) and braces removed (they would break "{}" templates).
    """
    recipe = _check_recipe(recipe)
    starts = tuple(starts) if starts else None
    tag = json.dumps({"recipe": recipe, "seed": seed, "starts": starts}, sort_keys=True)
    path = cache_file("rome", f"prefixes_{model.name}", {"settings": json.loads(tag),
                      "weights": weights_fingerprint(model)}, ".json")
    n_total = sum(n for _, n in recipe)
    try:
        cached = json.loads(path.read_text())
        if (isinstance(cached, dict) and cached.get("settings") == json.loads(tag)
                and isinstance(cached.get("prefixes"), list)
                and len(cached["prefixes"]) == n_total
                and all(isinstance(s, str) for s in cached["prefixes"])):
            return cached["prefixes"]
    except (OSError, ValueError):
        pass
    sep = _document_separator(model)
    out: list[str] = []
    # A plain sampling loop without a KV cache (a few short steps), independent of generate().
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for length, count in recipe:
            if starts is None:
                groups = [(sep, count, max(0, length - max(1, len(sep))))]
            else:
                per = -(-count // len(starts))
                groups = []
                for s in starts:
                    ids = model.encode(s)
                    groups.append((sep + ids, per, max(0, length - len(ids))))
            texts = []
            for prompt, n, new in groups:
                x = torch.tensor([prompt] * n, device=model.device)
                for _ in range(new):
                    top = model.hf(x).logits[:, -1].float().topk(5, dim=-1)
                    pick = torch.multinomial(torch.softmax(top.values, -1), 1)
                    x = torch.cat([x, top.indices.gather(1, pick)], dim=1)
                for row in x[:, len(sep):]:
                    text = unicodedata.normalize("NFKD", model.decode(row.tolist()))
                    text = text.replace("\n\n", " ").replace("{", " ").replace("}", " ")
                    texts.append(text)
            out.extend(texts[:count])
    write_json(path, {"settings": json.loads(tag), "prefixes": out}, indent=1)
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
_CHOICES = {
    "update_key": ("bare", "k_star"),
    "norm_reference": ("target_init", "w_k_star"),
    "early_stop_on": ("loss", "nll"),
}


@register_editor("rome")
class RomeEditor(Editor):
    """Rank-one model editing of one MLP down-projection (see the module docstring).

    Hyper-parameters (`hparams/rome/<model>.json` overrides `defaults`; the defaults are the
    reference code's, and each deviation is a named option that is off):
        layer: the edited layer.
        prefix_recipe, prefix_seed, prefix_starts: the self-generated context prefixes
            (`context_prefixes`; ROME: [[5, 10], [10, 10]], no start words).
        v_lr, v_num_grad_steps, v_weight_decay, clamp_norm_factor, kl_factor: the
            optimisation of δ (Adam, ROME's GPT-2 XL values).
        early_stop: stop once the loss named by `early_stop_on` is below it (ROME: 0.05).
        early_stop_on: "loss" (ROME: the total loss) or "nll" (deviation: the NLL alone).
        kl_prompts: templates for the essence term ("{} is a"), read at the subject's last token.
        norm_reference: "target_init" (ROME: ‖W k_bare + b‖, the bare prompt's MLP output) or
            "w_k_star" (deviation: ‖W k* + b‖) for the weight decay and the clamp.
        update_key: "bare" (ROME: the bare prompt's key in the denominator, δ in the numerator)
            or "k_star" (r-ROME: k* in both places; the `r-rome` editor).
        mom2_adjustment: use C⁻¹ k* (True, ROME) or k* itself (False) as the update direction.
        mom2_corpus, mom2_n_tokens, mom2_seq_len, mom2_batch_tokens: the statistics
            (`loudfacts.stats`; default all the shipped text, "all", in windows of 1,024
            tokens, GPT-2's context length and so ROME's longest sample; None = every window).
        mom2_ridge: C + ridge·(tr C / d)·I before solving (ROME: 0, a plain inverse; small
            samples on tiny models need > 0).
        seed: seeds the optimisation (δ starts at zero, as in ROME).
        suffix_only: a speed switch, not a setting of the method: each step of v* reruns only
            the subject's last token and what follows it (the same δ up to float rounding,
            measured in bench/bench_rome.py; off, or where the bridge cannot reuse stored
            keys/values, every position reruns). Where `loudfacts.lean` can run the model
            (Llama family, no hooks, `v_autocast` None), those steps bypass the bridge.
        v_autocast: None (float32, ROME) or "bfloat16" / "float16": v*'s passes under autocast
            (`mixed_precision`); not the same δ (19-40% apart in the fidelity check).
        v_n_prefixes: None (v* over all of k*'s prompts, as ROME) or how many of the prefixes
            v*'s NLL uses, evenly spaced (`v_context_templates`); k* always uses all of them.
    """

    hparams_dir = "rome"
    defaults: ClassVar[dict] = {
        "layer": 5,
        "prefix_recipe": [list(p) for p in REFERENCE_PREFIX_RECIPE],
        "prefix_seed": 0,
        "prefix_starts": None,
        "v_lr": 0.5,
        "v_num_grad_steps": 20,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625,
        "early_stop": 0.05,
        "early_stop_on": "loss",
        "kl_prompts": ["{} is a"],
        "norm_reference": "target_init",
        "update_key": "bare",
        "mom2_adjustment": True,
        "mom2_corpus": "all",
        "mom2_n_tokens": None,
        "mom2_seq_len": 1024,
        "mom2_batch_tokens": 4096,
        "mom2_ridge": 0.0,
        "seed": 0,
        "suffix_only": True,
        "v_autocast": None,
        "v_n_prefixes": None,
    }

    def __post_init__(self):
        super().__post_init__()
        hp = self.hparams
        layer = hp["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"{self.name}: layer={layer!r} must be an integer")
        self.model._check_layer(layer)
        steps = hp["v_num_grad_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"{self.name}: v_num_grad_steps={steps!r} must be an integer >= 2 "
                             "(the reference makes at most v_num_grad_steps - 1 updates)")
        for key in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "early_stop",
                    "mom2_ridge"):
            v = hp[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
                raise ValueError(f"{self.name}: {key}={v!r} must be a number >= 0")
        if hp["v_lr"] <= 0:
            raise ValueError(f"{self.name}: v_lr={hp['v_lr']!r} must be > 0")
        for key, allowed in _CHOICES.items():
            if hp[key] not in allowed:
                raise ValueError(f"{self.name}: {key}={hp[key]!r}; use one of {allowed}")
        _check_recipe(hp["prefix_recipe"])
        starts = hp["prefix_starts"]
        if starts is not None and (isinstance(starts, str) or not starts
                                   or not all(isinstance(s, str) and s.strip() for s in starts)):
            raise ValueError(f"{self.name}: prefix_starts={starts!r} must be None or a list of "
                             "words such as ['The', 'Therefore']")
        n = hp["v_n_prefixes"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"{self.name}: v_n_prefixes={n!r} must be None (all prefixes) or "
                             "an integer >= 0")
        if hp["v_autocast"] not in AUTOCAST_DTYPES:
            raise ValueError(f"{self.name}: v_autocast={hp['v_autocast']!r}; use None "
                             "(float32), 'bfloat16' or 'float16'")
        nt = hp["mom2_n_tokens"]
        if nt is not None and (isinstance(nt, bool) or not isinstance(nt, int) or nt <= 0):
            raise ValueError(f"{self.name}: mom2_n_tokens={nt!r} must be None (all the text) or "
                             "a positive integer")
        self._chol: dict[tuple, torch.Tensor] = {}
        self._templates: list[str] | None = None

    # -- public pieces ------------------------------------------------------------------------
    @property
    def layer(self) -> int:
        return int(self.hparams["layer"])

    def deviations(self) -> dict:
        """The hyper-parameters on which this editor departs from the reference code's ROME
        ({name: value}; {} for the reference recipe). Layer and statistics are not counted."""
        ref = RomeEditor.defaults
        keys = ("prefix_recipe", "prefix_starts", "v_lr", "v_num_grad_steps", "v_weight_decay",
                "clamp_norm_factor", "kl_factor", "early_stop", "early_stop_on", "kl_prompts",
                "norm_reference", "update_key", "mom2_adjustment", "v_autocast", "v_n_prefixes")
        return {k: self.hparams[k] for k in keys if self.hparams[k] != ref[k]}

    def context_templates(self) -> list[str]:
        """"{}" (the bare prompt) and "{prefix}. {}" for each self-generated prefix.

        Generated (or read from the disk cache) on first use and then kept by this editor, as
        ROME keeps them for the whole run: edits in a sequence use the same prefixes."""
        if self._templates is None:
            hp = self.hparams
            prefixes = context_prefixes(self.model, hp["prefix_recipe"], hp["prefix_seed"],
                                        hp["prefix_starts"])
            self._templates = ["{}"] + [p + ". {}" for p in prefixes]
        return list(self._templates)

    def use_context_templates(self, templates: list[str]) -> None:
        """Use these templates ("{}" first, then "{prefix}. {}" ...) instead of generating them:
        to reproduce a run whose prefixes were recorded (ROME's own prefixes are unseeded)."""
        if (not isinstance(templates, (list, tuple)) or not templates or templates[0] != "{}"
                or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates)):
            raise ValueError(f"{self.name}: context templates must be a list starting with '{{}}',"
                             f" each with one '{{}}'; got {templates!r:.200}")
        self._templates = list(templates)

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
        """u = C⁻¹ k* (float64, d_mlp); k* itself when `mom2_adjustment` is off. (ROME also
        normalises u to unit length; the update below is invariant to u's scale.)"""
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
                    f"(mom2_n_tokens={hp['mom2_n_tokens']}, mom2_ridge={hp['mom2_ridge']}); "
                    "raise mom2_ridge or the token count"
                )
            self._chol[key] = chol
        return torch.cholesky_solve(k[:, None], self._chol[key])[:, 0]

    def components(self, request: EditRequest) -> dict:
        """k*, v*, δ and the outputs they are measured from, computed without changing the model.

        Returns:
            dict with
              "layer": int, the edited layer;
              "k_star": Float[Tensor, "d_mlp"], the mean key at the subject's last token;
              "k_bare": Float[Tensor, "d_mlp"], the key of the bare prompt;
              "target_init": Float[Tensor, "d_model"], the layer's output there (W k_bare + b);
              "v_star": Float[Tensor, "d_model"], target_init + δ (ROME's target);
              "w_k": Float[Tensor, "d_model"], the layer's output for k* (W k* + b);
              "delta": Float[Tensor, "d_model"], the optimised δ;
              "timings": {"k": seconds, "v": seconds};
              "v_history": per-step {"loss", "nll", "kl", "wd", "norm"} of the optimisation
                  (one entry per forward pass; the last one is not followed by an update);
              "n_contexts": number of prompts k* averages over;
              "n_v_contexts": number of prompts v*'s NLL averages over.

        Raises:
            EditError: subject not in the prompt, empty target, non-finite loss.

        The result is kept under a digest of its whole content: the request, the
        hyper-parameters, the full weight digest, the context prefixes, the device and the
        source of the code that computes it. In memory (the last 1024 per process), so the
        hook-delta editor, which adds the same δ at inference time, reuses the optimisation,
        and on disk (data/cache/rome/components_*.pt, when no hook is applied), so other
        notebooks and later runs do too; a read checks the stored key and the tensors before
        use. A reused result says so in "reused". Set LOUDFACTS_ROME_COMPONENTS_CACHE=0 to
        keep it in memory only.
        """
        t_ids = validate_request(self.model, request)  # bad input fails whether remembered or not
        hooks = self.model.active_hooks()
        content = {
            "format": _COMPONENTS_FORMAT, "code": _code_digest(), "model": self.model.name,
            "weights": weight_digest(self.model), "device": str(self.model.device),
            "request": [request.prompt, request.subject, request.target_new],
            "hparams": json.loads(json.dumps(self.hparams, sort_keys=True, default=str)),
            "context_templates": digest(self.context_templates()),
        }
        key = (digest(content), hooks)  # hook ids are per process: those results stay in memory only
        if key in _COMPONENTS:
            _COMPONENTS.move_to_end(key)
            return {**_COMPONENTS[key], "reused": True}
        path = cache_file("rome", f"components_{self.model.name}", content, ".pt")
        disk = components_disk_cache_enabled() and not hooks
        comps = self._read_components(path, content) if disk else None
        reused = comps is not None
        if comps is None:
            comps = self._components(request, t_ids)
            if disk:
                self._write_components(path, content, comps)
        _COMPONENTS[key] = comps
        while len(_COMPONENTS) > _COMPONENTS_KEPT:
            _COMPONENTS.popitem(last=False)
        return {**comps, "reused": reused}

    def _read_components(self, path, content: dict) -> dict | None:
        """Cached components whose stored key equals `content` and whose tensors have the
        shapes and finiteness a fresh result has; None (recompute) otherwise."""
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            ok = isinstance(blob, dict) and blob.get("key") == content
            comps = blob["components"] if ok else None
            if ok:
                dims = {"k_star": self.model.d_mlp, "k_bare": self.model.d_mlp}
                for name in _TENSOR_FIELDS:
                    t = comps[name]
                    ok = ok and isinstance(t, torch.Tensor) and t.dim() == 1 and bool(
                        torch.isfinite(t).all()) and t.shape[0] == dims.get(name, self.model.d_model)
                ok = ok and comps.get("layer") == self.layer
        except Exception:  # unreadable, truncated or foreign: recompute and overwrite
            ok = False
        if not ok:
            return None
        device = self.model.device
        return {**comps, **{n: comps[n].to(device=device) for n in _TENSOR_FIELDS}}

    @staticmethod
    def _write_components(path, content: dict, comps: dict) -> None:
        keep = {k: v for k, v in comps.items() if k != "reused"}
        # clone: a view (k_bare is a row of all the keys) would save its whole storage
        keep.update({n: comps[n].detach().cpu().clone() for n in _TENSOR_FIELDS})
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"key": content, "components": keep}, tmp)

    def _components(self, request: EditRequest, t_ids: list[int]) -> dict:
        # generated once per editor (cached on disk), not part of k*'s time
        tpls = self.context_templates()
        v_tpls = self.v_context_templates(tpls)
        t0 = time.perf_counter()
        keys = self._keys(request, tpls)  # row 0 is the bare prompt ("{}")
        k_star, k_bare = keys.mean(0), keys[0]
        t1 = time.perf_counter()
        w_k = self._layer_output(k_star)
        target_init = self._layer_output(k_bare)
        ref = target_init if self.hparams["norm_reference"] == "target_init" else w_k
        delta, history = self._delta(request, t_ids, float(ref.norm()), v_tpls)
        t2 = time.perf_counter()
        return {
            "layer": self.layer,
            "k_star": k_star,
            "k_bare": k_bare,
            "target_init": target_init,
            "v_star": target_init + delta,
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
    def _keys(self, request: EditRequest, templates: list[str]) -> torch.Tensor:
        """The key at the subject's last token in each context: (len(templates), d_mlp)."""
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
        return store[name].float()

    @torch.no_grad()
    def _layer_output(self, k: torch.Tensor) -> torch.Tensor:
        """W k + b for the edit layer's down-projection (either orientation)."""
        mod = self.model.mlp_out_module(self.layer)
        w = mod.weight.detach().float()
        out = (k.to(w) @ w) if self.model.arch.mlp_out_transposed else (w @ k.to(w))
        if getattr(mod, "bias", None) is not None:
            out = out + mod.bias.detach().float()
        return out

    def _delta(self, request, t_ids, ref_norm: float, templates) -> tuple[torch.Tensor, list[dict]]:
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
        # Essence prompts ("{} is a"): δ is added at their subject's last token too, and the KL
        # term reads the next-token distribution at that same token (as the reference does).
        for tpl in hp["kl_prompts"]:
            text = tpl.replace("{}", request.subject)
            end = tpl.index("{}") + len(request.subject)
            rows.append(m.encode(text))
            pos.append(_subject_last_token(m, text, request.subject, end))
        kl_at = pos[n_rewrite:]
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
            # the same blocks as plain tensor operations where that is checked to agree
            # (`loudfacts.lean`: Llama family, no hooks, float32)
            lean = (LeanSuffix(m, batch, prefix, self.layer + 1)
                    if hp["v_autocast"] is None and self.layer + 1 < m.n_layers
                    and lean_can_use(m) else None)
            col = lambda r, q: batch.suffix_column(r, q)  # noqa: E731
            positions = torch.zeros(len(rows), dtype=torch.long)
            t_pos = torch.tensor([col(i, q) for i, tp in enumerate(tgt_pos) for q in tp])
            kl_pos = torch.tensor([col(n_rewrite + i, q) for i, q in enumerate(kl_at)],
                                  dtype=torch.long)
        else:
            ids = _pad_batch(rows, pad).to(m.device)
            base = residual_after(m, ids, self.layer)
            positions = torch.tensor(pos)
            t_pos = torch.tensor([q for tp in tgt_pos for q in tp])
            kl_pos = torch.tensor(kl_at, dtype=torch.long)
        all_rows = torch.arange(len(rows))

        torch.manual_seed(int(hp["seed"]))  # δ starts at zero (as in ROME); seeded anyway
        delta = torch.zeros(m.d_model, device=m.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp["v_lr"])
        max_norm = hp["clamp_norm_factor"] * ref_norm
        # δ is added to the MLP output of layer L at the subject's last token, i.e. to the
        # residual leaving block L. Everything up to there is the same at every step: compute
        # it once, then run only blocks L+1.. and unembed only the positions the loss reads.
        onehot = torch.zeros(base.shape[:2] + (1,), device=m.device)
        onehot[all_rows, positions] = 1.0
        need_rows = torch.cat([t_row, kl_rows]).to(m.device)
        need_pos = torch.cat([t_pos, kl_pos]).to(m.device)
        n_t = len(t_row)
        n_steps = int(hp["v_num_grad_steps"])
        kl_init, history = None, []
        with mixed_precision(m, hp["v_autocast"]):
            for step in range(n_steps):
                if suffix and lean is not None:
                    final = lean(base + onehot * delta)
                elif suffix:
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
                # KL(P_δ ‖ P_0): F.kl_div(input, target) = Σ target (log target - input).
                kl = hp["kl_factor"] * F.kl_div(kl_init, kl_logp, log_target=True,
                                                reduction="batchmean")
                wd = hp["v_weight_decay"] * delta.norm() / ref_norm ** 2
                loss = nll + kl + wd
                if not torch.isfinite(loss):
                    raise EditError(
                        f"non-finite loss at step {step} while computing v* for {request!r} "
                        f"(nll={nll.item()}, kl={kl.item()}); the model was not edited"
                    )
                history.append({"loss": loss.item(), "nll": nll.item(), "kl": kl.item(),
                                "wd": wd.item(), "norm": delta.detach().norm().item()})
                watched = loss if hp["early_stop_on"] == "loss" else nll
                if watched.item() < hp["early_stop"] or step == n_steps - 1:
                    break  # the reference stops before updating on its last step
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
    def rank_one_update(self, k_star: torch.Tensor, residual: torch.Tensor,
                        key: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW = residual uᵀ / (uᵀ key) with u = C⁻¹ k*, in the stored orientation of the weight.

        Args:
            k_star: the averaged key (it sets the direction u).
            residual: what the edited layer must add for `key` (ROME: δ; r-ROME: v* - W k* - b).
            key: the key of the denominator (ROME: k_bare; r-ROME and default: k_star).

        Returns:
            Float64[Tensor, "d_model d_mlp"] (Linear) or Float64[Tensor, "d_mlp d_model"]
            (Conv1D).
        """
        u = self.update_direction(k_star)
        key = k_star if key is None else key
        denom = float(u @ key.detach().to(torch.float64).cpu())
        if not abs(denom) > 0 or math.isnan(denom):
            raise EditError(f"degenerate update: uᵀk = {denom}")
        dw = torch.outer(residual.detach().to(torch.float64).cpu(), u) / denom
        return dw.T if self.model.arch.mlp_out_transposed else dw

    def update_for(self, comps: dict) -> torch.Tensor:
        """ΔW for computed components, by `update_key` (see `rank_one_update`)."""
        if self.hparams["update_key"] == "bare":
            return self.rank_one_update(comps["k_star"], comps["delta"], comps["k_bare"])
        return self.rank_one_update(comps["k_star"], comps["v_star"] - comps["w_k"],
                                    comps["k_star"])

    def _compute(self, request: EditRequest) -> WeightEdit:
        t0 = time.perf_counter()
        if self.hparams["mom2_adjustment"]:  # load (or, the first time, collect) C up front
            self.update_direction(torch.ones(self.model.d_mlp))
        t_stats = time.perf_counter() - t0
        comps = self.components(request)
        edit = self.edit_from_components(request, comps)
        edit.info["timings"] = {"stats": t_stats, **comps["timings"], **edit.info["timings"]}
        # k* and v* read back (memo or disk): the seconds they took when computed, so that a
        # timing of this edit (evaluation's edit_seconds) still says what a fresh edit costs
        edit.info["components_reused"] = bool(comps.get("reused", False))
        if edit.info["components_reused"]:
            edit.info["reused_seconds"] = float(comps["timings"]["k"] + comps["timings"]["v"])
        return edit

    def edit_from_components(self, request: EditRequest, comps: dict) -> WeightEdit:
        """The rank-one weight edit for already computed components (`components(request)`).

        k*, k_bare and δ do not depend on the statistics, so the effect of C (token count,
        on/off) can be studied by calling this on editors with different `mom2_*` settings.
        """
        t0 = time.perf_counter()
        path = self.model.arch.mlp_out.format(self.layer)
        w = self.model.module(path).weight.detach()
        dw = self.update_for(comps)
        new_w = (w.to(torch.float64).cpu() + dw).to(w.dtype)
        hist = comps.get("v_history") or []
        info = {
            "layer": self.layer,
            "module": path,
            "timings": {"update": time.perf_counter() - t0},
            # Adam updates made (the last forward pass is not followed by one)
            "v_steps": max(0, len(hist) - 1),
            "v_final_nll": hist[-1]["nll"] if hist else None,
            "v_final_loss": hist[-1].get("loss") if hist else None,
            "delta_norm": float(comps["delta"].norm()),
            "dw_rel_norm": float(dw.norm() / w.to(torch.float64).norm()),
            "mom2_adjustment": bool(self.hparams["mom2_adjustment"]),
            "mom2_n_tokens": self.hparams["mom2_n_tokens"],
            "update_key": self.hparams["update_key"],
            "deviations": self.deviations(),
            # k*, v*, W k*, δ as computed (for checks and for the hook-delta editor).
            "components": {k: comps[k] for k in ("k_star", "k_bare", "target_init", "v_star",
                                                 "w_k", "delta") if k in comps},
        }
        return WeightEdit(self.model, {path: new_w}, request, self.name, info)


@register_editor("r-rome")
class RRomeEditor(RomeEditor):
    """r-ROME (Gupta et al. 2024, "Rebuilding ROME: Resolving Model Collapse during Sequential
    Model Editing"): ROME with the update computed from the prefix-averaged key k* in both the
    denominator and the subtracted output, W' = W + (v* - W k* - b) uᵀ / (uᵀ k*), so that the
    edited layer maps k* itself to v*. Everything else is ROME's recipe."""

    defaults: ClassVar[dict] = {**RomeEditor.defaults, "update_key": "k_star"}

    def deviations(self) -> dict:
        dev = super().deviations()
        dev.pop("update_key", None)  # r-ROME's own recipe
        return dev
