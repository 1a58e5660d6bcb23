"""Causal tracing: corrupt the subject, restore one clean state, see how much of the fact returns.

ROME (Meng et al. 2022, section 2) locates a fact by three runs of the model on a prompt such as
"The Louvre is located in the city of":

1. a *clean* run, which predicts the object (" Paris") with probability `clean_prob`;
2. *corrupted* runs, where Gaussian noise (3x the standard deviation of subject token
   embeddings, pooled over every token occurrence of known_1000's subjects as ROME's
   `collect_embedding_std`: `noise_scale`) is added to the subject's token embeddings, so the
   object's probability drops to `corrupt_prob` (averaged over `samples` noise draws);
3. *restored* runs: corrupted, except that one internal state at one (layer, token) is set back
   to its clean value. The probability of the object then, `scores[layer, token]`, minus
   `corrupt_prob` is the *indirect effect* of that state.

`kind` picks the state: the residual stream after a block (`"hidden"`,
`blocks.{L}.hook_resid_post`), or the MLP / attention output (`"mlp"`, `"attn"`:
`blocks.{L}.hook_mlp_out`, `blocks.{L}.hook_attn_out`), which ROME restores over a window of
`window` layers around L because one layer's contribution is small. The *severed* variant
(`severed="mlp"|"attn"`) restores the hidden state but keeps the MLP (or attention) outputs of
the layers above at their corrupted values at that token, to see how much of the hidden state's
effect flows through those modules.

Everything runs through TransformerLens hook points on `model.bridge`, applied only inside
`bridge.hooks(...)` contexts.

Three implementations give the same grid (same noise, tested to 1e-4):

- `method="reference"`: ROME's way. For each (layer, token), one batch of 1 clean + `samples`
  corrupted rows runs through the whole model; the clean row's state is copied into the others.
- `method="fast"` (default): the clean and corrupted runs are computed once, with every
  layer's keys and values of the corrupted run. Restoring token t cannot change positions
  before t (causal attention), so restored rows run positions t.. only, attending to the stored
  keys/values of ..t-1 (`forward.KVPrefix`, through the bridge's `layer_past`). All restored
  layers of one token share one forward pass: it starts with one placeholder row and the rows
  of layer L join at the block where they first differ from the corrupted run (a hook on that
  block's `hook_resid_pre` appends them), so each block's weights are read once per token.
  The forward stops before the unembedding and only the last position is unembedded.
- `method="fast-full"`: the previous fast path, used where the bridge cannot reuse stored
  keys/values (`forward.supports_kv_prefix`): one pass per layer over every (token, sample)
  row and every position, started from the cached corrupted residual at the first block it
  changes; tokens before the subject, whose states the noise does not reach, are not rerun.

Every input is checked before the first forward pass, with an error naming it: a subject
that occurs twice needs `occurrence`, a multi-token string target needs `first_token=True`
(ROME scores the object's first token), a window must lie in 1..n_layers, a token id in the
vocabulary.

Averages over many facts are in `loudfacts.averages`, their worker processes in
`loudfacts.trace_worker`, fact selection in `loudfacts.knowledge` and the figures in
`loudfacts.plotting`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from loudfacts.digests import weights_fingerprint as _weights_fingerprint
from loudfacts.digests import cache_file, digest_text
from loudfacts.atomic import atomic_path, write_json
from loudfacts.forward import (
    KVPrefix,
    KVRecorder,
    StopForward,
    blocks_from,
    prefix_causal_mask,
    supports_kv_prefix,
    unembed,
)
from loudfacts.tokens import (
    PLACEHOLDER,
    SubjectNotFoundError,
    check_context,
    check_subject_position,
    fill,
    find_subject_spans,
    target_ids,
)

KINDS = ("hidden", "mlp", "attn")
SEVERED = (None, "mlp", "attn")
METHODS = ("fast", "fast-full", "reference")
TOKEN_CLASSES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
NOISE_MULTIPLIER = 3.0
# How the standard deviation behind the noise is estimated (see `noise_scale`).
NOISE_ESTIMATORS = ("pooled", "unique")
_HOOK_OF_KIND = {"hidden": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}
# Subjects used for the noise scale when ROME's known_1000 file cannot be read.
_FALLBACK_SUBJECTS = (
    "The Louvre", "Eiffel Tower", "Space Needle", "Miles Davis", "Barack Obama", "Colosseum",
    "Vladimir Putin", "Sydney Opera House", "Kremlin", "Michael Jordan", "Toyota", "Google",
)

# ---------------------------------------------------------------------------------------------
# Result type and its cache
# ---------------------------------------------------------------------------------------------
@dataclass
class TraceResult:
    """One fact's causal trace.

    Attributes:
        scores: probability of the target after restoring each state, shape (n_layers, n_tokens).
        indirect_effect: `scores - corrupt_prob`, shape (n_layers, n_tokens).
        clean_prob: probability of the target on the clean prompt.
        corrupt_prob: mean probability over the corrupted runs (nothing restored).
        tokens: the prompt's token strings (labels for the grid's columns).
        subject_span: (start, stop) token span of the corrupted subject.
        target: the traced token's text (the greedy token, the token of a one-token
            target, or the first token of a longer one with `first_token=True`).
        kind: "hidden", "mlp" or "attn".
        settings: everything else that produced the grid (model, prompt, subject, samples,
            noise, window, seed, severed, method, occurrence, first_token, target id).
    """

    scores: np.ndarray
    clean_prob: float
    corrupt_prob: float
    tokens: list[str]
    subject_span: tuple[int, int]
    target: str
    kind: str
    settings: dict = field(default_factory=dict)
    indirect_effect: np.ndarray | None = None

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.subject_span = tuple(int(i) for i in self.subject_span)
        if self.indirect_effect is None:
            self.indirect_effect = self.scores - self.corrupt_prob

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    def save(self, path: str | Path) -> None:
        """Write the result as one .npz (grid + JSON metadata), atomically."""
        path = Path(path)
        meta = {k: v for k, v in asdict(self).items() if k not in ("scores", "indirect_effect")}
        with atomic_path(path, suffix=".npz") as tmp:  # savez adds .npz to a name without it
            np.savez(tmp, scores=self.scores, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            scores = data["scores"]
        meta["subject_span"] = tuple(meta["subject_span"])
        return cls(scores=scores, **meta)


def weights_fingerprint(model) -> str:
    """A cheap fingerprint of the weights (`LoadedModel.weights_fingerprint`), so a trace cached
    before an edit is not reused after it."""
    return _weights_fingerprint(model)


# ---------------------------------------------------------------------------------------------
# Noise scale
# ---------------------------------------------------------------------------------------------
def _noise_subjects() -> tuple[list[str], str]:
    """The subjects whose token embeddings set the noise scale, and where they came from.

    As ROME (`experiments/causal_trace.py`: `collect_embedding_std(mt, [k["subject"] for k in
    knowns])`): the subject of every known_1000 record, in file order and with repeats (1,209
    records, 1,195 distinct subjects), so a subject of several facts counts several times.
    """
    try:
        from loudfacts.data import load_known_facts

        subjects = [f.subject for f in load_known_facts()]
        if subjects:
            return subjects, "known_1000"
    except (ImportError, OSError, ValueError, KeyError) as exc:
        # no data module or file: the built-in list still gives a scale
        warnings.warn(f"known_1000 subjects unavailable ({exc}); noise scale from a built-in "
                      "list of subjects", stacklevel=3)
    return list(_FALLBACK_SUBJECTS), "built-in subjects"


def _embedding_matrix(model) -> torch.Tensor:
    return model.hf.get_input_embeddings().weight


def _check_multiplier(multiplier) -> float:
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float, np.floating,
                                                                   np.integer)):
        raise ValueError(f"noise multiplier must be a number, got {multiplier!r}")
    if not np.isfinite(multiplier) or multiplier < 0:
        raise ValueError(f"noise multiplier must be a non-negative finite number, got "
                         f"{multiplier!r} (ROME: {NOISE_MULTIPLIER})")
    return float(multiplier)


def subject_embedding_std(model, subjects: Sequence[str], estimator: str = "pooled"
                          ) -> tuple[float, int]:
    """Standard deviation of the token embeddings of `subjects`, and how many rows it pools.

    Each subject is tokenised on its own (`model.encode`: no special tokens, no leading space).

    - `"pooled"` (ROME's `collect_embedding_std`): the embedding row of every token
      *occurrence* of every subject (a token that occurs n times is counted n times) stacked
      into an (n_tokens, d_model) matrix, and the standard deviation of all its entries,
      unbiased (n - 1), as torch's `.std()`. Computed in float64.
    - `"unique"`: the same over the distinct token ids only (each embedding row once). Not
      ROME's estimate; kept to measure how much the pooling matters.
    """
    if estimator not in NOISE_ESTIMATORS:
        raise ValueError(f"noise estimator {estimator!r} is not one of {NOISE_ESTIMATORS}")
    ids = [i for s in subjects for i in model.encode(s)]
    if estimator == "unique":
        ids = sorted(set(ids))
    if len(ids) < 2:
        raise ValueError(f"subjects {list(subjects)[:5]!r} give {len(ids)} token(s); the "
                         "standard deviation needs at least 2")
    emb = _embedding_matrix(model)
    with torch.no_grad():
        rows = emb[torch.tensor(ids, device=emb.device)].to(torch.float64)
        return float(rows.std().item()), len(ids)


_NOISE_MEMO: dict = {}


def noise_scale(model, multiplier: float = NOISE_MULTIPLIER, cache: bool = True,
                estimator: str = "pooled") -> float:
    """`multiplier` x the standard deviation of the token embeddings of a set of subjects.

    As ROME (`collect_embedding_std` and its default noise rule "s3"): each subject of every
    known_1000 record (`_noise_subjects`, repeats kept) tokenised on its own, the embedding row
    of every token occurrence pooled into one (n_tokens, d_model) matrix, the (unbiased)
    standard deviation of all its entries, times 3. `estimator="unique"` takes each distinct
    token id once instead (not ROME's; see `subject_embedding_std`).

    Computed once per (model, embedding weights, subjects, estimator) and cached in
    data/cache/tracing/noise-*.json; the estimator is part of the key and is checked on read.

    Raises:
        ValueError: `multiplier` is not a non-negative finite number, or `estimator` is not
            one of `NOISE_ESTIMATORS`.
    """
    multiplier = _check_multiplier(multiplier)
    if estimator not in NOISE_ESTIMATORS:
        raise ValueError(f"noise estimator {estimator!r} is not one of {NOISE_ESTIMATORS}")
    subjects, source = _noise_subjects()
    emb = _embedding_matrix(model)
    with torch.no_grad():
        emb_sig = (f"{tuple(emb.shape)}:{emb.sum(dtype=torch.float64).item():.12e}:"
                   f"{torch.linalg.vector_norm(emb, dtype=torch.float64).item():.12e}")
    subjects_sig = digest_text("\n".join(subjects), 16)
    path = cache_file("tracing", f"noise-{model.name}-{estimator}",
                      {"model": model.name, "emb": emb_sig, "estimator": estimator,
                       "subjects": subjects_sig, "source": source, "v": 2}, ".json")
    if str(path) in _NOISE_MEMO:
        return multiplier * _NOISE_MEMO[str(path)]
    std = None
    if cache and path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("estimator") == estimator and stored.get("subjects") == subjects_sig:
                std = float(stored["std"])
        except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
            std = None  # corrupt cache: recompute
    if std is None:
        std, n_rows = subject_embedding_std(model, subjects, estimator)
        if cache:
            write_json(path, {
                "std": std, "estimator": estimator, "source": source,
                "n_subjects": len(subjects), "subjects": subjects_sig, "n_rows": n_rows,
                "model": model.name})
    _NOISE_MEMO[str(path)] = std
    return multiplier * std


# ---------------------------------------------------------------------------------------------
# Hook functions (bound with functools.partial, applied only in bridge.hooks contexts)
# ---------------------------------------------------------------------------------------------
def add_subject_noise_hook(act, hook, *, span, noise, first_row=0):
    """Add `noise` (rows, span_len, d_model) to the subject's embeddings of rows first_row:."""
    act = act.clone()
    act[first_row:, span[0]:span[1]] += noise.to(act.dtype)
    return act


def restore_from_clean_row_hook(act, hook, *, pos):
    """ROME's restoration: copy row 0's (clean) state at token `pos` into every other row."""
    act = act.clone()
    act[1:, pos] = act[0, pos]
    return act


def set_rows_at_positions_hook(act, hook, *, rows, pos, values):
    """Set act[rows[i], pos[i]] = values[i] (one token per row; values (n, d_model))."""
    act = act.clone()
    act[rows, pos] = values.to(act.dtype)
    return act


def record_hook(act, hook, *, store, name):
    """Keep a detached copy of the activation under `name` (the bridge may call the hook point
    by a canonical name that differs from the alias it was registered under)."""
    store[name] = act.detach().clone()


def capture_last_position_and_stop_hook(act, hook, *, store):
    """Keep the last position's normalised final residual and end the forward pass (the
    unembedding of every position is not needed)."""
    store["final"] = act[:, -1].detach().clone()
    raise StopForward


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _target_prob_mean(logits_last: torch.Tensor, target: int, groups: int) -> torch.Tensor:
    """Mean (over samples) probability of `target`; logits_last (groups*samples, vocab)."""
    logp = torch.log_softmax(logits_last.float(), dim=-1)[:, target]
    return logp.exp().view(groups, -1).mean(dim=1)


class AmbiguousSubjectError(ValueError):
    """The subject occurs more than once in the prompt and no occurrence was chosen."""


def _resolve_prompt(prompt: str, subject: str) -> str:
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt {prompt!r} must be a non-empty string")
    return fill(prompt, subject) if PLACEHOLDER in prompt else prompt


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _subject_span(model, text: str, subject: str, occurrence: int | None) -> tuple[int, int]:
    """Token span of the subject occurrence to corrupt (see `trace`'s `occurrence`)."""
    spans = find_subject_spans(model, text, subject)  # ValueError for an empty subject
    if not spans:
        raise SubjectNotFoundError(f"subject {subject!r} does not occur in prompt {text!r}")
    if occurrence is None:
        if len(spans) > 1:
            raise AmbiguousSubjectError(
                f"subject {subject!r} occurs {len(spans)} times in prompt {text!r} (token spans "
                f"{spans}); pass occurrence=0 for the first (as ROME's find_token_range), -1 "
                "for the last, or i for the i-th")
        return spans[0]
    if not -len(spans) <= occurrence < len(spans):
        raise ValueError(f"occurrence {occurrence} of subject {subject!r}: it occurs "
                         f"{len(spans)} time(s) in prompt {text!r}")
    return spans[occurrence]


def _target_id(model, target, first_token: bool) -> int | None:
    """The traced token id (None: the greedy next token, known only after the clean run),
    checked before any forward pass."""
    if target is None:
        return None
    if is_int(target):
        tid = int(target)
        if not 0 <= tid < model.d_vocab:
            raise ValueError(f"target token id {tid} is outside the vocabulary of {model.name} "
                             f"(size {model.d_vocab}: ids 0..{model.d_vocab - 1})")
        return tid
    if not isinstance(target, str):
        raise ValueError(f"target {target!r} must be None (greedy), a string or a token id")
    ids = target_ids(model, target)  # ValueError for an empty target
    if len(ids) > 1 and not first_token:
        raise ValueError(
            f"target {target!r} is {len(ids)} tokens {[model.decode([i]) for i in ids]} (ids "
            f"{ids}); a trace scores one next token: pass first_token=True to score its first "
            f"token {model.decode(ids[:1])!r} (ROME's convention), or pass a token id")
    return ids[0]


def _resolve_target(model, target_id: int | None, clean_logits_last: torch.Tensor
                    ) -> tuple[int, str]:
    tid = int(clean_logits_last.argmax()) if target_id is None else int(target_id)
    return tid, model.decode([tid])


def _window(layer: int, window: int, n_layers: int) -> range:
    """ROME's window: layers [L - window//2, L + ceil(window/2)), clipped to the model (so the
    windows of the bottom and top layers hold fewer layers, as in ROME)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _check_window(model, window, kinds) -> None:
    if not is_int(window) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if any(k in ("mlp", "attn") for k in kinds) and window > model.n_layers:
        raise ValueError(f"window {window} is larger than the {model.n_layers} layers of "
                         f"{model.name}; use 1 <= window <= {model.n_layers}")


def _check_noise(noise) -> None:
    if noise is None:
        return
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating, np.integer)):
        raise ValueError(f"noise must be None or a number, got {noise!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a non-negative finite number, got {noise!r}")


def check_trace_args(model, kind, severed, method, samples, window, noise=None, seed=0,
                batch_rows=1):
    """Every check that needs no tokenisation or forward pass."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if severed not in SEVERED:
        raise ValueError(f"severed {severed!r} is not one of {SEVERED}")
    if severed is not None and kind != "hidden":
        raise ValueError(f"severed={severed!r} restores hidden states; use kind='hidden', not {kind!r}")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    if not is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    _check_window(model, window, [kind])
    _check_noise(noise)
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not is_int(batch_rows) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")


def prepare_trace(model, prompt, subject, target, occurrence, first_token):
    """Resolve and check a fact before any forward pass: (text, ids, subject span, target id)."""
    if occurrence is not None and not is_int(occurrence):
        raise ValueError(f"occurrence must be None or an int, got {occurrence!r}")
    text = _resolve_prompt(prompt, subject)
    ids = model.encode(text)
    check_context(model, len(ids), text)
    span = _subject_span(model, text, subject, occurrence)
    target_id = _target_id(model, target, first_token)
    return text, ids, span, target_id


# ---------------------------------------------------------------------------------------------
# The trace
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def trace(
    model,
    prompt: str,
    subject: str,
    kind: str = "hidden",
    target: str | int | None = None,
    samples: int = 10,
    noise: float | None = None,
    window: int = 10,
    seed: int = 0,
    severed: str | None = None,
    cache: bool = True,
    method: str = "fast",
    batch_rows: int = 512,
    occurrence: int | None = None,
    first_token: bool = False,
) -> TraceResult:
    """Causal trace of one fact: restore each (layer, token) state of a subject-corrupted run.

    Every argument is checked before the first forward pass.

    Args:
        model: a `LoadedModel`.
        prompt: the full prompt containing `subject`, or a template with one `{}` for it.
        subject: the subject to corrupt.
        kind: "hidden" (residual stream after block L), "mlp" or "attn" (that module's output,
            restored over `window` layers around L).
        target: the token to track: None for the model's greedy next token on the clean
            prompt (ROME's choice), a token id (0 <= id < vocabulary size), or a string
            (tokenised after a leading space, as in ROME). A string of several tokens raises
            unless `first_token=True`.
        samples: noise draws (rows of corrupted runs).
        noise: noise standard deviation; None for 3x the subjects' embedding std (`noise_scale`).
        window: layers restored together for "mlp"/"attn" (ROME: 10), 1 <= window <= n_layers;
            near the bottom and top of the model the window is cut at the model's edge (as
            ROME). Ignored for "hidden".
        seed: seed of the noise draws; the same seed gives the same noise in both methods.
        severed: with kind="hidden", keep the "mlp" or "attn" outputs of the layers above the
            restored one at their corrupted values (at the restored token).
        cache: load/save the result in data/cache/tracing/ (keyed by every input, the model's
            name and a fingerprint of its weights).
        method: "fast" (default) or "reference" (ROME's loop, for tests and benchmarks).
        batch_rows: largest batch of rows the fast path runs at once.
        occurrence: which occurrence of the subject to corrupt when it occurs more than once
            (0 the first, as ROME's `find_token_range`; -1 the last). None (default): the
            subject must occur exactly once, else `AmbiguousSubjectError` names the subject,
            the prompt and the token span of each occurrence. Only one occurrence is ever
            corrupted; the others keep their clean embeddings.
        first_token: score a multi-token string target by its first token (ROME's convention:
            "New York" and "New Delhi" then trace the same token if they share the first one).

    Returns:
        TraceResult with scores of shape (n_layers, n_tokens).

    Raises:
        SubjectNotFoundError: the subject is not in the prompt (the message names both).
        AmbiguousSubjectError: the subject occurs several times and `occurrence` is None.
        ValueError: the prompt is longer than the model's context, the subject is empty, the
            target is a multi-token string (without `first_token`) or a token id outside the
            vocabulary, the window is outside 1..n_layers, or another argument is invalid.
    """
    check_trace_args(model, kind, severed, method, samples, window, noise, seed, batch_rows)
    text, ids, span, target_id = prepare_trace(model, prompt, subject, target, occurrence,
                                          first_token)
    check_subject_position(span, text, subject)
    scale = float(noise_scale(model) if noise is None else noise)

    settings = {
        "model": model.name,
        "prompt": text,
        "subject": subject,
        "target_arg": target if not isinstance(target, np.integer) else int(target),
        "samples": int(samples),
        "noise": scale,
        "window": int(window) if kind != "hidden" else None,
        "seed": int(seed),
        "severed": severed,
        "method": method,
        "occurrence": None if occurrence is None else int(occurrence),
        "first_token": bool(first_token),
    }
    path = None
    if cache:
        path = cache_file("tracing", f"trace-{model.name}",
                          {**settings, "kind": kind, "span": list(span),
                           "weights": weights_fingerprint(model), "v": 2}, ".npz")
        if path.exists():
            try:
                cached = TraceResult.load(path)
                stored = {k: cached.settings.get(k) for k in settings}
                if (stored == json.loads(json.dumps(settings)) and cached.kind == kind
                        and cached.subject_span == span):
                    return cached
            except (OSError, ValueError, KeyError, TypeError, AttributeError,
                    json.JSONDecodeError):
                pass
            path.unlink(missing_ok=True)  # corrupt, old or mismatched cache file: recompute

    ids_t = torch.tensor([ids], dtype=torch.long, device=model.device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise_draws = (
        torch.randn(samples, span[1] - span[0], model.d_model, generator=gen) * scale
    ).to(model.device)

    if method == "fast":
        run = _trace_fast_suffix if supports_kv_prefix(model) else _trace_fast_full
    else:
        run = _trace_fast_full if method == "fast-full" else _trace_reference
    scores, clean_prob, corrupt_prob, target_id = run(
        model, ids_t, span, kind, target_id, noise_draws, int(window), severed, batch_rows
    )
    settings["target_id"] = target_id
    result = TraceResult(
        scores=scores,
        clean_prob=clean_prob,
        corrupt_prob=corrupt_prob,
        tokens=[model.decode([i]) for i in ids],
        subject_span=span,
        target=model.decode([target_id]),
        kind=kind,
        settings=settings,
    )
    if path is not None:
        result.save(path)
    return result


def _clean_and_corrupt_runs(model, ids_t, span, noise_draws, names, corrupt_kv=None):
    """One clean run (1 row) and one corrupted run (samples rows), recording `names`.

    Returns: clean logits at the last position (vocab,), the clean store, corrupted logits at
    the last position (samples, vocab), the corrupted store. Stores map hook name -> tensor.
    """
    bridge = model.bridge
    wanted = set(names)
    clean_store, corrupt_store = {}, {}
    rec_clean = [(n, partial(record_hook, store=clean_store, name=n)) for n in wanted]
    with bridge.hooks(fwd_hooks=rec_clean):
        clean_logits = bridge(ids_t)[0, -1]
    samples = noise_draws.shape[0]
    rec_corrupt = [(n, partial(record_hook, store=corrupt_store, name=n)) for n in wanted]
    noise_hook = ("hook_embed", partial(add_subject_noise_hook, span=span, noise=noise_draws))
    kw = {}
    if corrupt_kv is not None:  # also keep every layer's keys and values
        kw = {"layer_past": corrupt_kv,
              "position_ids": torch.arange(ids_t.shape[1], device=ids_t.device)[None]}
    with bridge.hooks(fwd_hooks=[noise_hook] + rec_corrupt):
        corrupt_logits = bridge(ids_t.repeat(samples, 1), **kw)[:, -1]
    return clean_logits, clean_store, corrupt_logits, corrupt_store


def _run_from_layer(model, resid, start_layer, hooks):
    """Run rows from `start_layer` (resid = the residual entering that block) and return the
    logits of the last position only. Shapes: resid (rows, pos, d_model) -> (rows, vocab)."""
    store = {}
    stop = ("ln_final.hook_out", partial(capture_last_position_and_stop_hook, store=store))
    try:
        with blocks_from(model, start_layer), model.bridge.hooks(fwd_hooks=list(hooks) + [stop]):
            model.bridge(resid, start_at_layer=start_layer)
    except StopForward:
        pass
    return unembed(model, store["final"])


def _trace_fast_full(model, ids_t, span, kind, target, noise_draws, window, severed,
                     batch_rows):
    """The fast path without key/value reuse: every restored row runs all positions."""
    n_layers, n_tok = model.n_layers, ids_t.shape[1]
    samples = noise_draws.shape[0]
    names = [f"blocks.{L}.hook_resid_pre" for L in range(n_layers)]
    names += [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    if kind != "hidden":
        names += [f"blocks.{L}.{_HOOK_OF_KIND[kind]}" for L in range(n_layers)]
    if severed is not None:
        names += [f"blocks.{L}.{_HOOK_OF_KIND[severed]}" for L in range(n_layers)]
    clean_last, clean, corrupt_last, corrupt = _clean_and_corrupt_runs(
        model, ids_t, span, noise_draws, names
    )
    target_id, _ = _resolve_target(model, target, clean_last)
    clean_prob = float(torch.softmax(clean_last.float(), -1)[target_id])
    corrupt_prob = float(_target_prob_mean(corrupt_last, target_id, 1)[0])

    # States before the subject never see the noise (causal attention): restoring them is a
    # no-op, so their score is the corrupted probability without a rerun.
    scores = np.full((n_layers, n_tok), corrupt_prob, dtype=np.float64)
    tokens = list(range(span[0], n_tok))
    per_chunk = max(1, batch_rows // samples)
    for L in range(n_layers):
        for c in range(0, len(tokens), per_chunk):
            toks = tokens[c:c + per_chunk]
            rows = torch.arange(len(toks) * samples, device=model.device)
            pos = torch.tensor(toks, device=model.device).repeat_interleave(samples)
            sample_of_row = rows % samples
            if kind == "hidden":
                start = L + 1
                resid = corrupt[f"blocks.{L}.hook_resid_post"].repeat(len(toks), 1, 1)
                resid[rows, pos] = clean[f"blocks.{L}.hook_resid_post"][0, pos]
                hooks = []
                if severed is not None:
                    for above in range(L + 1, n_layers):
                        name = f"blocks.{above}.{_HOOK_OF_KIND[severed]}"
                        hooks.append((name, partial(
                            set_rows_at_positions_hook, rows=rows, pos=pos,
                            values=corrupt[name][sample_of_row, pos],
                        )))
            else:
                layers = _window(L, window, n_layers)
                start = layers.start
                resid = corrupt[f"blocks.{start}.hook_resid_pre"].repeat(len(toks), 1, 1)
                hooks = []
                for layer in layers:
                    name = f"blocks.{layer}.{_HOOK_OF_KIND[kind]}"
                    hooks.append((name, partial(
                        set_rows_at_positions_hook, rows=rows, pos=pos,
                        values=clean[name][0, pos],
                    )))
            if start >= n_layers:  # restored the last block's output: only the unembedding is left
                final = model.bridge.ln_final(resid[:, -1:])[:, 0]
                logits = unembed(model, final)
            else:
                logits = _run_from_layer(model, resid, start, hooks)
            scores[L, toks] = _target_prob_mean(logits, target_id, len(toks)).cpu().numpy()
    return scores, clean_prob, corrupt_prob, target_id


def append_rows_hook(act, hook, *, rows):
    """Let rows that start at this block join the forward pass: act (n, pos, d) -> (n + m, ...)."""
    return torch.cat([act, rows.to(act.dtype)], dim=0)


def _trace_fast_suffix(model, ids_t, span, kind, target, noise_draws, window, severed,
                       batch_rows):
    """The fast path with two savings on top of `_trace_fast_full` (same grid):

    * **Suffix only.** Restoring token t changes nothing before t, at any layer (causal
      attention), so restored rows run positions t.. only and attend to the corrupted run's
      keys and values of positions ..t-1 (`forward.KVPrefix`).
    * **One pass per token, rows joining on the way up.** All restored layers of one token go
      through one forward: it starts with one placeholder row, and the rows of layer L join at
      the block where they start to differ from the corrupted run (a hook on that block's
      `hook_resid_pre` appends them). Each block's weights are read once per token instead of
      once per (layer, token), which is what bounds small batches on a CPU.
    """
    n_layers, n_tok = model.n_layers, ids_t.shape[1]
    samples = noise_draws.shape[0]
    dev = model.device
    names = [f"blocks.{L}.hook_resid_pre" for L in range(n_layers)]
    names += [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    if kind != "hidden":
        names += [f"blocks.{L}.{_HOOK_OF_KIND[kind]}" for L in range(n_layers)]
    if severed is not None:
        names += [f"blocks.{L}.{_HOOK_OF_KIND[severed]}" for L in range(n_layers)]
    kv = KVRecorder()
    clean_last, clean, corrupt_last, corrupt = _clean_and_corrupt_runs(
        model, ids_t, span, noise_draws, names, corrupt_kv=kv
    )
    target_id, _ = _resolve_target(model, target, clean_last)
    clean_prob = float(torch.softmax(clean_last.float(), -1)[target_id])
    corrupt_prob = float(_target_prob_mean(corrupt_last, target_id, 1)[0])
    scores = np.full((n_layers, n_tok), corrupt_prob, dtype=np.float64)

    # Layer L's rows start at block start[L]: after the restored hidden state, or at the bottom
    # of the restored window. A hidden state restored after the last block only meets the
    # final norm.
    if kind == "hidden":
        start = {L: L + 1 for L in range(n_layers)}
    else:
        start = {L: _window(L, window, n_layers).start for L in range(n_layers)}
    top = [L for L in range(n_layers) if start[L] >= n_layers]
    groups = sorted((L for L in range(n_layers) if start[L] < n_layers), key=lambda L: start[L])
    per_chunk = max(1, batch_rows // samples)
    sample_ids = torch.arange(samples, device=dev)

    for t in range(span[0], n_tok):
        q = n_tok - t
        for L in top:  # only the final norm and the unembedding are left
            resid = corrupt[f"blocks.{L}.hook_resid_post"][:, -1:].clone()
            if t == n_tok - 1:
                resid[:, 0] = clean[f"blocks.{L}.hook_resid_post"][0, t]
            logits = unembed(model, model.bridge.ln_final(resid)[:, 0])
            scores[L, t] = float(_target_prob_mean(logits, target_id, 1)[0])
        for c in range(0, len(groups), per_chunk):
            chunk = groups[c:c + per_chunk]
            # Row 0 is a placeholder (the corrupted sample 0, never read); group g's sample s
            # is row 1 + g * samples + s, in order of joining.
            first_row = {L: 1 + g * samples for g, L in enumerate(chunk)}
            hooks = []
            for j in sorted({start[L] for L in chunk}):
                joining = [L for L in chunk if start[L] == j]
                rows = []
                for L in joining:
                    if kind == "hidden":
                        r = corrupt[f"blocks.{L}.hook_resid_post"][:, t:].clone()
                        r[:, 0] = clean[f"blocks.{L}.hook_resid_post"][0, t]
                    else:
                        r = corrupt[f"blocks.{j}.hook_resid_pre"][:, t:]
                    rows.append(r)
                hooks.append((f"blocks.{j}.hook_resid_pre",
                              partial(append_rows_hook, rows=torch.cat(rows, 0))))
            for j in range(n_layers):
                active = [L for L in chunk if start[L] <= j]
                if kind != "hidden":
                    restored = [L for L in active if j in _window(L, window, n_layers)]
                    if restored:
                        name = f"blocks.{j}.{_HOOK_OF_KIND[kind]}"
                        rows = torch.cat([first_row[L] + sample_ids for L in restored])
                        hooks.append((name, partial(
                            set_rows_at_positions_hook, rows=rows,
                            pos=torch.zeros_like(rows), values=clean[name][0, t].expand(
                                len(rows), -1))))
                if severed is not None:
                    frozen = [L for L in active if L < j]
                    if frozen:
                        name = f"blocks.{j}.{_HOOK_OF_KIND[severed]}"
                        rows = torch.cat([first_row[L] + sample_ids for L in frozen])
                        hooks.append((name, partial(
                            set_rows_at_positions_hook, rows=rows, pos=torch.zeros_like(rows),
                            values=corrupt[name][:, t].repeat(len(frozen), 1))))
            # Keys/values of positions ..t-1 for every row that reaches each layer.
            keys, values = {}, {}
            for j in range(n_layers):
                n_active = sum(1 for L in chunk if start[L] <= j)
                which = torch.cat([sample_ids[:1], sample_ids.repeat(n_active)])
                keys[j] = kv.keys[j][which, :, :t]
                values[j] = kv.values[j][which, :, :t]
            store = {}
            hooks.append(("ln_final.hook_out",
                          partial(capture_last_position_and_stop_hook, store=store)))
            mask = prefix_causal_mask(q, t, dtype=corrupt[names[0]].dtype, device=dev)
            try:
                with model.bridge.hooks(fwd_hooks=hooks):
                    model.bridge(ids_t[:, t:], layer_past=KVPrefix(keys, values),
                                 position_ids=torch.arange(t, n_tok, device=dev)[None],
                                 attention_mask=mask)
            except StopForward:
                pass
            logits = unembed(model, store["final"][1:])
            probs = _target_prob_mean(logits, target_id, len(chunk)).cpu().numpy()
            for g, L in enumerate(chunk):
                scores[L, t] = probs[g]
    return scores, clean_prob, corrupt_prob, target_id


def _trace_reference(model, ids_t, span, kind, target, noise_draws, window, severed, batch_rows):
    """ROME's loop: one forward of 1 clean + `samples` corrupted rows per (layer, token)."""
    bridge = model.bridge
    n_layers, n_tok = model.n_layers, ids_t.shape[1]
    samples = noise_draws.shape[0]
    batch = ids_t.repeat(samples + 1, 1)
    noise_hook = ("hook_embed", partial(add_subject_noise_hook, span=span, noise=noise_draws,
                                        first_row=1))
    with bridge.hooks(fwd_hooks=[noise_hook]):
        logits = bridge(batch)[:, -1]
    target_id, _ = _resolve_target(model, target, logits[0])
    clean_prob = float(torch.softmax(logits[0].float(), -1)[target_id])
    corrupt_prob = float(_target_prob_mean(logits[1:], target_id, 1)[0])
    frozen = {}
    if severed is not None:  # the corrupted module outputs the severed runs keep
        names = [f"blocks.{L}.{_HOOK_OF_KIND[severed]}" for L in range(n_layers)]
        with bridge.hooks(fwd_hooks=[noise_hook] + [(n, partial(record_hook, store=frozen, name=n))
                                                    for n in names]):
            bridge(batch)
    scores = np.zeros((n_layers, n_tok), dtype=np.float64)
    for L in range(n_layers):
        for t in range(n_tok):
            if kind == "hidden":
                layers = [L]
            else:
                layers = list(_window(L, window, n_layers))
            hooks = [noise_hook] + [
                (f"blocks.{layer}.{_HOOK_OF_KIND[kind]}", partial(restore_from_clean_row_hook, pos=t))
                for layer in layers
            ]
            if severed is not None:
                rows = torch.arange(1, samples + 1, device=model.device)
                pos = torch.full_like(rows, t)
                for above in range(L + 1, n_layers):
                    name = f"blocks.{above}.{_HOOK_OF_KIND[severed]}"
                    hooks.append((name, partial(set_rows_at_positions_hook, rows=rows, pos=pos,
                                                values=frozen[name][1:, t])))
            with bridge.hooks(fwd_hooks=hooks):
                out = bridge(batch)
            scores[L, t] = float(_target_prob_mean(out[1:, -1], target_id, 1)[0])
    return scores, clean_prob, corrupt_prob, target_id
