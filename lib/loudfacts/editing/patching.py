"""Inference-time fact edits by path patching: TransformerLens hooks, no weight changes.

The seed report asked whether editing a fact *during inference*, by patching in activations that
the same model produces, respects logical implications better than a weight edit. This module
makes such patched models, under the same `Edit` contract as ROME and FT, so they can be
prompted and scored like any other edit:

    editor = get_editor("patch-donor", model)              # or "patch-context", "hook-delta"
    edit = editor.edit(EditRequest("{} is located in the city of", "The Louvre", "Rome"))
    with edit.applied():                                     # hooks registered on model.bridge
        target_probs(model, ["The Louvre is in the country of"], ["Italy"])

Three editors, all writing at the **last token of the edited subject, wherever the subject occurs
in whatever input is being run** (ROME's key position):

- ``"patch-donor"``: a *donor* subject whose true object is the new target for the same relation
  (the Louvre -> Rome borrows from the Colosseum) is run once through the rewrite template; its
  activations at its last subject token (or at all its subject tokens, right-aligned onto the
  edited subject's), at chosen layers and site (MLP outputs or residual stream), replace the
  edited subject's activations there.
- ``"patch-context"``: the source run *states* the new fact in context and then names the subject
  again ("The Louvre is located in the city of Rome. The Louvre"); the activations at that final
  subject occurrence (which has read the statement) are patched into bare prompts.
- ``"hook-delta"``: ROME's optimised ``delta = v* - target_init`` is *added* to the MLP output of
  ROME's layer at the subject's last token only: a control that writes what ROME writes at the
  bare prompt's key, but only at the subject's positions (ROME's weight edit also shifts every
  other position by a little, in proportion to how much its key overlaps C⁻¹k*).

How a hook finds the subject: the bridge's ``embed.hook_in`` receives the input ids of every
forward. A `SubjectLocator` hooks it, matches the subject's token sequences (with and without a
leading space, and the exact tokens the subject had in the prompts the editor saw) against each
batch row, and keeps a (batch, pos) mask of last-subject-token positions; the layer hooks read
that mask. Matching on ids works for any prompt, for batches with right (or left) padding, and for
several occurrences per row. A hook on ``ln_final.hook_normalized`` clears the mask at the end of
each forward, so a forward that skips the embedding (``bridge(resid, start_at_layer=L)``) is not
patched with a stale mask. In a packed forward (`loudfacts.scoring`: prompts merged into prefix
trees, one position per shared token) the locator matches each prompt along its own path
(`scoring.current_layout`) and marks the tree positions, so the hooks are `pack_aware` and
scoring keeps its packed route under these edits; a tree position that would be a subject token
for one prompt and not for another makes the call fall back to padded rows.

Generation (``model.generate`` / ``hf.generate``) with a KV cache: the first step runs the whole
prompt, so every subject occurrence in the prompt is patched and the patched states are stored in
the cache (later tokens attend to them). Later steps see only the newly generated token(s); they
are patched only if a whole subject token sequence occurs within that step's ids (in practice: a
one-token subject the model itself generates). A multi-token subject that the model generates is
not patched. Nothing crashes: the mask is computed per forward from the ids that forward has.
Caveat (checked, not ours): with the TransformerLens bridge wrapped around the HF module, HF's
KV-cached decoding is wrong even without hooks (SmolLM2: the second step's logits differ from
a full recompute by ~17); `LoadedModel.generate` therefore decodes with `use_cache=False`, where
every step re-runs the whole sequence and every subject occurrence (in the prompt or generated)
is patched on every step.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch

from loudfacts.editing.base import (
    EditError,
    Editor,
    EditRequest,
    HookEdit,
    register_editor,
)
from loudfacts.scoring import PackingRefused, current_layout, pack_aware
from loudfacts.tokens import fill, find_subject_spans

SITES = {
    "mlp_out": "blocks.{}.hook_mlp_out",
    "resid_post": "blocks.{}.hook_resid_post",
    "resid_pre": "blocks.{}.hook_resid_pre",
    "attn_out": "blocks.{}.hook_attn_out",
}


# -- finding the subject on token ids -----------------------------------------------------------
_ARTICLES = ("The ", "the ", "A ", "a ", "An ", "an ")


def subject_variants(subject: str) -> list[str]:
    """Other ways a prompt writes the same subject: "The Louvre" -> ["the Louvre", "Louvre"].

    A leading article is swapped for its other case and dropped; a lowercase first letter is
    capitalised (sentence start). The last token of every variant is the subject's last token,
    so patching there hits ROME's key position in each.
    """
    s = subject.strip()
    out = []
    for art in _ARTICLES:
        if s.startswith(art) and len(s) > len(art):
            core = s[len(art):]
            out += [core, art.swapcase()[0] + art[1:] + core if art[0].isalpha() else core]
            break
    else:
        if s[0].islower():
            out.append(s[0].upper() + s[1:])
    return [v for v in dict.fromkeys(out) if v and v != s]


def subject_token_patterns(
    model, subject: str, texts: Iterable[str] = (), variants: bool = True
) -> list[tuple[int, ...]]:
    """The token sequences the subject can take, longest first.

    Always includes the subject's tokens with and without a leading space; `texts` (prompts in
    which the subject occurs) add the exact tokens it had there (a subject after "(" or at the
    start of a text can tokenise differently); `variants` adds `subject_variants` ("the
    Louvre", "Louvre" for "The Louvre").

    Raises:
        ValueError: the subject is empty.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    s = subject.strip()
    forms = {s}
    if variants:
        forms |= set(subject_variants(s))
    pats = set()
    for f in forms:
        pats |= {tuple(model.encode(f)), tuple(model.encode(" " + f))}
    for text in texts:
        ids = model.encode(text)
        for a, b in find_subject_spans(model, text, s):
            pats.add(tuple(ids[a:b]))
    pats.discard(())
    return sorted(pats, key=lambda p: (-len(p), p))


def find_token_occurrences(ids: Sequence[int], patterns: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Every occurrence of any pattern in `ids` as a span (start, stop), sorted by position.

    Occurrences of different patterns that end on the same token (one pattern a suffix of
    another) are reported once, with the longest span. Returns [] when none occurs.
    """
    ids = list(ids)
    best: dict[int, int] = {}  # stop -> start (smallest start = longest span)
    for pat in patterns:
        pat = list(pat)
        n = len(pat)
        if n == 0:
            continue
        for i in range(len(ids) - n + 1):
            if ids[i : i + n] == pat:
                stop = i + n
                best[stop] = min(best.get(stop, i), i)
    return sorted((a, b) for b, a in best.items())


def subject_last_token_mask(
    ids: torch.Tensor, patterns: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Where a subject ends: bool mask of shape (batch, pos), True at last subject tokens.

    Args:
        ids: LongTensor (batch, pos) or (pos,) of input ids (padding of any side is fine: pad
            ids do not match a subject).
        patterns: token sequences of the subject (`subject_token_patterns`).
    """
    if ids.dim() == 1:
        ids = ids[None]
    b, p = ids.shape
    mask = torch.zeros((b, p), dtype=torch.bool, device=ids.device)
    for pat in patterns:
        n = len(pat)
        if n == 0 or n > p:
            continue
        pat_t = torch.as_tensor(list(pat), dtype=ids.dtype, device=ids.device)
        hit = (ids.unfold(1, n, 1) == pat_t).all(-1)  # (b, p - n + 1), True at starts
        mask[:, n - 1 :] |= hit
    return mask


def subject_token_offsets(
    ids: torch.Tensor, patterns: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Each token's distance from the end of the subject occurrence it belongs to.

    Returns:
        LongTensor (batch, pos): 0 at a last subject token, 1 at the one before, ...; -1 outside
        every occurrence. Where occurrences of different patterns overlap, the larger distance
        (the longer match) wins.
    """
    if ids.dim() == 1:
        ids = ids[None]
    b, p = ids.shape
    off = torch.full((b, p), -1, dtype=torch.long, device=ids.device)
    for pat in patterns:
        n = len(pat)
        if n == 0 or n > p:
            continue
        pat_t = torch.as_tensor(list(pat), dtype=ids.dtype, device=ids.device)
        hit = (ids.unfold(1, n, 1) == pat_t).all(-1)  # (b, p - n + 1)
        for j in range(n):
            seg = off[:, j : j + hit.shape[1]]
            seg.copy_(torch.where(hit, torch.clamp(seg, min=n - 1 - j), seg))
    return off


class SubjectLocator:
    """Per-forward state shared by one edit's hooks: where the subject ends in the current input.

    `read_ids_hook` (on ``embed.hook_in``) sets `mask` (batch, pos) from the input ids;
    `clear_hook` (on ``ln_final.hook_normalized``) resets it after the forward.

    In a packed forward (`scoring.current_layout` knows the ids) each sequence is matched along
    its own path and the results are put at its tree positions: `mask` and `offsets` then have
    the packed rows' shape. A position that sequences sharing it see differently (a subject's
    last token on one path, inside a longer match on another) raises
    `scoring.PackingRefused` for the mask; for the offsets, `offsets_agree` says whether they
    can be used (`replace_aligned_at_subject_hook` refuses the packed forward if not).
    """

    def __init__(self, patterns: Sequence[Sequence[int]]):
        self.patterns = [tuple(p) for p in patterns]
        self.mask: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        self.offsets_agree = True
        self.n_patched = 0  # positions patched since creation (for tests and diagnostics)

    @pack_aware
    def read_ids_hook(self, ids, hook):
        self.offsets_agree = True
        if ids.dtype in (torch.long, torch.int32, torch.int64) and ids.dim() in (1, 2):
            layout = current_layout(ids) if ids.dim() == 2 else None
            if layout is None:
                self.offsets = subject_token_offsets(ids, self.patterns)
                self.mask = self.offsets == 0
            else:
                offs = subject_token_offsets(layout.per_sequence(ids, -1), self.patterns)
                self.mask, mask_agree = layout.to_positions(offs == 0, False)
                if not bool(mask_agree.all()):
                    self.mask = self.offsets = None
                    raise PackingRefused("a packed position is a subject's last token for one "
                                         "prompt and not for another")
                self.offsets, agree = layout.to_positions(offs, -1)
                self.offsets_agree = bool(agree.all())
        else:  # inputs_embeds or something unexpected: no ids, no patching
            self.mask = self.offsets = None
        return ids

    @pack_aware
    def clear_hook(self, act, hook):
        self.mask = self.offsets = None
        return act

    def current_mask(self, act: torch.Tensor) -> torch.Tensor | None:
        """The mask if it fits `act`'s (batch, pos), else None (do not patch)."""
        m = self.mask
        if m is None or act.dim() != 3 or tuple(m.shape) != tuple(act.shape[:2]):
            return None
        return m.to(act.device)


@pack_aware
def replace_at_subject_hook(act, hook, *, locator: SubjectLocator, value: torch.Tensor):
    """Replace act[b, pos] by `value` (d_model,) at the subject's last tokens."""
    m = locator.current_mask(act)
    if m is None or not m.any():
        return act
    locator.n_patched += int(m.sum())
    return torch.where(m[..., None], value.to(act.device, act.dtype), act)


@pack_aware
def replace_aligned_at_subject_hook(act, hook, *, locator: SubjectLocator, values: torch.Tensor):
    """Replace the subject's tokens by `values` (k, d_model), right-aligned: the subject's last
    token gets values[-1], the one before values[-2], ...; subject tokens beyond k stay."""
    m = locator.current_mask(act)
    if m is None or not m.any():
        return act
    if not locator.offsets_agree:  # packed: a shared position's offset differs between prompts
        raise PackingRefused("a packed position is a subject token for one prompt and not "
                             "for another")
    off = locator.offsets.to(act.device)
    k = values.shape[0]
    inside = (off >= 0) & (off < k)
    locator.n_patched += int(m.sum())
    src = values.to(act.device, act.dtype)[(k - 1 - off.clamp(0, k - 1))]  # (b, pos, d)
    return torch.where(inside[..., None], src, act)


@pack_aware
def add_at_subject_hook(act, hook, *, locator: SubjectLocator, delta: torch.Tensor):
    """Add `delta` (d_model,) to act[b, pos] at the subject's last tokens."""
    m = locator.current_mask(act)
    if m is None or not m.any():
        return act
    locator.n_patched += int(m.sum())
    return act + m[..., None].to(act.dtype) * delta.to(act.device, act.dtype)


def build_hooks(locator_factory, layer_hooks) -> callable:
    """A callable for `HookEdit`: a fresh locator per apply, its id/clear hooks, layer hooks."""

    def hooks():
        loc = locator_factory()
        out = [("embed.hook_in", loc.read_ids_hook)]
        for name, fn, kw in layer_hooks:
            out.append((name, functools.partial(fn, locator=loc, **kw)))
        out.append(("ln_final.hook_normalized", loc.clear_hook))
        hooks.last_locator = loc
        return out

    hooks.last_locator = None
    return hooks


# -- activations at a position ------------------------------------------------------------------
@torch.no_grad()
def activations_at(model, text: str, pos, hook_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of `text`'s token `pos` (int -> (d_model,)) or tokens (slice -> (k, d_model))
    at each hook point (one forward)."""
    store = {}

    def save_hook(act, hook, *, key):
        store[key] = act[0, pos].detach().clone()
        return act

    hooks = [(n, functools.partial(save_hook, key=n)) for n in hook_names]
    with model.bridge.hooks(fwd_hooks=hooks):
        model.hf(model.to_tensor(text))
    missing = set(hook_names) - set(store)
    if missing:
        raise EditError(f"hook point(s) {sorted(missing)} did not fire on {model.name}")
    bad = [n for n in hook_names if not torch.isfinite(store[n]).all()]
    if bad:  # patching them in would turn every probability after the subject into NaN
        raise EditError(f"activations of {text[:80]!r} at {bad} are not finite on {model.name} "
                        "(NaN or inf weights?); nothing to patch in")
    return store


def _is_index(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and \
        type(x).__name__ != "bool_"


def _resolve_layers(model, layers, name="layers") -> list[int]:
    if _is_index(layers):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not all(_is_index(x) for x in layers):
        raise EditError(f"{name}={layers!r} must be a list of layer indices (ints) in "
                        f"0..{model.n_layers - 1}")
    layers = [int(x) for x in layers]
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise EditError(f"{name} {layers} out of range for {model.name} (0..{model.n_layers - 1})")
    if not layers:
        raise EditError(f"{name} is empty")
    return layers


def _hook_names(model, site: str, layers) -> list[str]:
    if site not in SITES:
        raise EditError(f"site {site!r} unknown; use one of {sorted(SITES)}")
    return [SITES[site].format(L) for L in _resolve_layers(model, layers)]


# -- donors -------------------------------------------------------------------------------------
_POOLS: dict[str, list[tuple[str, str, str]]] = {}


# Which facts donors are drawn from (part of patch-donor's hyper-parameters, so rows made
# from another pool are never reused). 2: data files only (the implication cases, ROME's
# known_1000 facts, both CounterFact splits); 1 also read the most recently written knowledge
# table of the cache, so the pool depended on which notebook had run last.
DONOR_POOL_VERSION = 2


def _fact_pool(model) -> list[tuple[str, str, str]]:
    """(template, subject, true object) of facts to draw donors from (cached per model name).

    From data files only, whatever the cache holds: the implication cases' edits, ROME's
    known_1000 facts and both CounterFact splits (about 20k records). Candidates are ranked by
    the model's P(target_new) at edit time, so facts the model does not know are kept here.
    Sources that are missing (no data files) are skipped.
    """
    if model.name in _POOLS:
        return _POOLS[model.name]
    pool: list[tuple[str, str, str]] = []
    try:
        import json

        from loudfacts.paths import repo_path

        path = repo_path("data", "probes", "implications.jsonl")
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)["edit"]  # unknown ones too: donors are ranked by P anyway
                pool.append((e["prompt"], e["subject"].strip(), e["target_true"].strip()))
    except (OSError, ValueError, KeyError):
        pass
    try:
        from loudfacts.data import DataNotFoundError, load_known_facts

        pool += [(f.prompt, f.subject.strip(), f.attribute.strip())
                 for f in load_known_facts()]  # ROME's known_1000 facts
    except (ImportError, OSError, ValueError, DataNotFoundError):
        pass
    try:
        from loudfacts.data import neighbour_pool

        pool += [(r.prompt, r.subject.strip(), r.target_true.strip())
                 for r in neighbour_pool()]  # both CounterFact splits, about 20k records
    except (ImportError, OSError, ValueError):
        pass
    _POOLS[model.name] = pool
    return pool


def donor_coverage(records, pool) -> dict:
    """How many `records` (CounterFact records) have a donor in `pool` (records whose true
    objects are known): a subject other than the record's own whose true object is the
    record's target_new, under the same template, and under any template.

    Returns {"records", "same_template", "any_template"}: counts, from the data alone (whether
    the model agrees with a candidate is ranked at edit time by `PatchDonorEditor`).
    """
    by_template: dict[tuple[str, str], set] = {}
    by_object: dict[str, set] = {}
    for r in pool:
        obj, subj = r.target_true.strip(), r.subject.strip()
        by_template.setdefault((r.prompt, obj), set()).add(subj)
        by_object.setdefault(obj, set()).add(subj)
    same = other = 0
    records = list(records)
    for r in records:
        new, subj = r.target_new.strip(), r.subject.strip()
        same += bool(by_template.get((r.prompt, new), set()) - {subj})
        other += bool(by_object.get(new, set()) - {subj})
    return {"records": len(records), "same_template": same, "any_template": other}


# -- editors ------------------------------------------------------------------------------------
class _PatchingEditor(Editor):
    """Shared parts: hparams from one file with a section per editor, subject patterns."""

    hparams_dir = "patching"  # one section per editor, picked by Editor.__post_init__

    def __post_init__(self):
        super().__post_init__()  # known keys, types as the defaults'
        self._check_hparams()

    def _check_hparams(self):
        """Values in range, named in a ValueError (EditError) before any edit is computed."""
        h = self.hparams
        if "site" in h and h["site"] not in SITES:
            raise EditError(f"{self.name}: site={h['site']!r} unknown; use one of {sorted(SITES)}")
        if "layers" in h:
            try:
                _resolve_layers(self.model, h["layers"])
            except EditError as e:
                raise EditError(f"{self.name}: {e}") from e

    def _check_number(self, key: str, lo=None, hi=None, integer: bool = False):
        """hparams[key] must be a finite number (an int if `integer`) with lo <= x <= hi."""
        x = self.hparams[key]
        kind = "an integer" if integer else "a finite number"
        ok = (_is_index(x) if integer else
              isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x))
        if ok and ((lo is not None and x < lo) or (hi is not None and x > hi)):
            ok = False
        if not ok:
            rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (
                f" >= {lo}" if lo is not None else "")
            raise EditError(f"{self.name}: {key}={x!r} must be {kind}{rng}")

    def _locator_factory(self, request: EditRequest):
        patterns = subject_token_patterns(
            self.model, request.subject, [request.text], variants=bool(self.hparams["variants"])
        )
        return patterns, (lambda: SubjectLocator(patterns))


@register_editor("patch-donor")
class PatchDonorEditor(_PatchingEditor):
    """Patch a donor subject's activations in at the edited subject's last token.

    Hyper-parameters:
        donor: donor subject (None: search CounterFact / known facts for a subject whose true
            object is target_new under the same template, and keep the one the model ranks
            highest).
        site: "mlp_out" | "resid_post" | "resid_pre" | "attn_out".
        layers: layers to patch at that site.
        positions: "last" (the donor's last subject token into the subject's last token),
            "aligned" (the donor's subject tokens right-aligned onto the subject's: last onto
            last, the one before onto the one before, ...; for subjects like "The Eiffel
            Tower", whose fact lives on "iffel" rather than " Tower"), or "auto" (whichever
            gives target_new the higher probability on the rewrite prompt: two forwards).
        max_candidates: donor candidates scored when searching.
        min_donor_p: a same-template donor is preferred when the model gives target_new at
            least this probability after it; otherwise the best candidate of any template.
        donor_pool: the version of the pool donors come from (`DONOR_POOL_VERSION`; see
            `_fact_pool`), so results made from another pool are never reused.
    """

    defaults: ClassVar[dict] = {
        "donor": None,
        "site": "resid_post",
        "layers": [6],
        "positions": "auto",
        "max_candidates": 24,
        "min_donor_p": 0.2,
        "variants": True,
        "donor_pool": DONOR_POOL_VERSION,
    }

    def _check_hparams(self):
        super()._check_hparams()
        h = self.hparams
        self._check_number("max_candidates", lo=1, integer=True)
        self._check_number("min_donor_p", lo=0.0, hi=1.0)
        if h["donor_pool"] != DONOR_POOL_VERSION:
            raise EditError(f"{self.name}: donor_pool={h['donor_pool']!r}: only version "
                            f"{DONOR_POOL_VERSION} (data files only) exists in this code")
        if h["positions"] not in ("last", "aligned", "auto"):
            raise EditError(f"{self.name}: positions={h['positions']!r} unknown; use 'last', "
                            "'aligned' or 'auto'")
        donor = h["donor"]
        if donor is not None and (not isinstance(donor, str) or not donor.strip()):
            raise EditError(f"{self.name}: donor={donor!r} must be a subject (a non-empty "
                            "string) or None (search for one)")

    def _compute(self, request: EditRequest):
        hp = self.hparams
        t0 = time.perf_counter()
        donor, p_donor, n_cand = self.choose_donor(request)
        t_search = time.perf_counter() - t0
        names = _hook_names(self.model, hp["site"], hp["layers"])
        donor_text = fill(request.prompt, donor)
        spans = find_subject_spans(self.model, donor_text, donor)
        if not spans:
            raise EditError(f"donor {donor!r} not found in {donor_text!r}")
        t1 = time.perf_counter()
        a, b = spans[-1]
        acts = activations_at(self.model, donor_text, slice(a, b), names)
        t_cache = time.perf_counter() - t1
        patterns, factory = self._locator_factory(request)
        builders = {
            "last": lambda: build_hooks(factory, [(n, replace_at_subject_hook,
                                                   {"value": acts[n][-1]}) for n in names]),
            "aligned": lambda: build_hooks(factory, [(n, replace_aligned_at_subject_hook,
                                                      {"values": acts[n]}) for n in names]),
        }
        mode = hp["positions"]
        fit = {}
        if mode == "auto":  # keep the alignment that writes the fact on the rewrite prompt
            from loudfacts.scoring import target_probs

            for cand, make in builders.items():
                with HookEdit(self.model, make(), request, self.name).applied():
                    fit[cand] = float(target_probs(self.model, [request.text],
                                                   [request.target_new])[0])
            mode = max(fit, key=fit.get)
        elif mode not in builders:
            raise EditError(f"positions {mode!r} unknown; use 'last', 'aligned' or 'auto'")
        hooks = builders[mode]()
        info = {
            "positions": mode,
            "positions_fit": fit,
            "donor": donor,
            "donor_text": donor_text,
            "p_donor_target": p_donor,
            "donor_candidates": n_cand,
            "hook_points": names,
            "patterns": patterns,
            "timings": {"donor_search": t_search, "cache": t_cache},
        }
        return HookEdit(self.model, hooks, request, self.name, info)

    def donor_candidates(self, request: EditRequest) -> list[str]:
        """Subjects whose true object is `request.target_new`, same template first.

        Sources, in order: the edits of `data/probes/implications.jsonl` (facts checked on the
        embedded model), the cached known-facts table of notebook 00 (only if already built:
        building it here would take minutes), both CounterFact splits (`data.neighbour_pool`).
        `donor_coverage` says how many records this can serve.
        """
        new, subj = request.target_new.strip(), request.subject.strip()
        same_tpl, other = [], []
        for prompt, subject, true in _fact_pool(self.model):
            if true == new and subject != subj:
                (same_tpl if prompt == request.prompt else other).append(subject)
        self._same_template = set(same_tpl)
        return [s for s in dict.fromkeys(same_tpl + other) if s not in request.prompt]

    def choose_donor(self, request: EditRequest) -> tuple[str, float | None, int]:
        """(donor subject, P(target_new | donor prompt), number of candidates scored)."""
        from loudfacts.scoring import target_probs

        donor = self.hparams["donor"]
        if donor:
            text = fill(request.prompt, donor)
            p = float(target_probs(self.model, [text], [request.target_new])[0])
            return donor, p, 1
        cands = self.donor_candidates(request)[: int(self.hparams["max_candidates"])]
        if not cands:
            raise EditError(
                f"no donor subject with true object {request.target_new!r} found for "
                f"{request.text!r}; pass donor='...' (a subject whose true object it is)"
            )
        probs = target_probs(self.model, [fill(request.prompt, c) for c in cands],
                             [request.target_new] * len(cands))
        # Prefer a donor of the same relation (same template, e.g. another landmark) that the
        # model completes with target_new; fall back to the best-scoring candidate of any kind.
        same = [i for i, c in enumerate(cands) if c in self._same_template]
        good = [i for i in same if float(probs[i]) >= self.hparams["min_donor_p"]]
        i = max(good, key=lambda j: float(probs[j])) if good else int(torch.argmax(probs))
        return cands[i], float(probs[i]), len(cands)


@register_editor("patch-context")
class PatchContextEditor(_PatchingEditor):
    """Patch in the subject's activations from a run where the new fact was stated in context.

    Source text: ``context_template`` with ``{statement}`` = "The Louvre is located in the city
    of Rome." repeated ``repeats`` times, followed by the subject itself ("... Rome. The
    Louvre"). We read the activations at the *last* occurrence's last subject token. Since the
    model is causal, what follows the subject cannot change them, so ending the source text at
    the subject loses nothing; the earlier statements are what the subject's state can read
    from. Those states are then patched into bare prompts at the subject's last token.

    It does not work, and cannot as built: on known CounterFact records the stated fact
    never reaches the subject's state (the answer position reads it from the statement's
    tokens), so nothing that is patched here carries it. `loudfacts.incontext.sweep` measures
    that over layers, windows and mixing strengths (notebook 04). The editor is kept as a
    measured negative and left out of the report's headline.

    Hyper-parameters:
        site, layers: where to patch (see `PatchDonorEditor`).
        repeats: how many times the statement precedes the subject.
        context_template: format string with {statement} (joined repeats) and {subject}.
    """

    defaults: ClassVar[dict] = {
        "site": "resid_post",
        "layers": [6],
        "repeats": 2,
        "context_template": "{statement} {subject}",
        "variants": True,
    }

    def _check_hparams(self):
        super()._check_hparams()
        self._check_number("repeats", lo=1, integer=True)
        tpl = self.hparams["context_template"]
        try:
            probe = tpl.format(statement="S.", subject="\0")
        except (AttributeError, KeyError, IndexError, ValueError) as e:
            raise EditError(f"{self.name}: context_template={tpl!r} must be a format string "
                            f"with {{statement}} and {{subject}} only ({type(e).__name__}: {e})"
                            ) from e
        if "\0" not in probe:
            raise EditError(f"{self.name}: context_template={tpl!r} has no {{subject}} (the "
                            "activations are read at the subject's last occurrence)")

    def source_text(self, request: EditRequest) -> str:
        st = " ".join([request.statement] * int(self.hparams["repeats"]))
        return self.hparams["context_template"].format(statement=st, subject=request.subject.strip())

    def _compute(self, request: EditRequest):
        names = _hook_names(self.model, self.hparams["site"], self.hparams["layers"])
        src = self.source_text(request)
        spans = find_subject_spans(self.model, src, request.subject)
        if not spans:
            raise EditError(f"subject {request.subject!r} not found in source text {src!r}")
        t1 = time.perf_counter()
        acts = activations_at(self.model, src, spans[-1][1] - 1, names)
        t_cache = time.perf_counter() - t1
        patterns, factory = self._locator_factory(request)
        hooks = build_hooks(factory, [(n, replace_at_subject_hook, {"value": acts[n]}) for n in names])
        info = {"source_text": src, "hook_points": names, "patterns": patterns,
                "timings": {"cache": t_cache}}
        return HookEdit(self.model, hooks, request, self.name, info)


@register_editor("hook-delta")
class HookDeltaEditor(_PatchingEditor):
    """Add ROME's δ (v* - target_init) to the MLP output of ROME's layer at the subject's last
    token: the change ROME's weight edit makes there on the bare rewrite prompt (its update maps
    the bare prompt's key to v*), applied by a hook instead of a weight change.

    Hyper-parameters:
        rome: overrides passed to `get_editor("rome", model, **rome)`.
        scale: multiplier on δ (1.0 = what ROME writes at the bare prompt's key).
    """

    defaults: ClassVar[dict] = {"rome": {}, "scale": 1.0, "variants": True}

    def _check_hparams(self):
        super()._check_hparams()
        self._check_number("scale")

    def rome_editor(self):
        """The ROME editor whose components this control borrows (`rome` hparams applied)."""
        from loudfacts.editing.base import get_editor

        try:
            rome = get_editor("rome", self.model, **dict(self.hparams["rome"]))
        except ValueError as e:
            raise EditError(f"hook-delta needs the ROME editor: {e}") from e
        if not hasattr(rome, "components"):
            raise EditError("hook-delta needs RomeEditor.components(request); not available")
        return rome

    def _compute(self, request: EditRequest):
        return self.edit_from_components(request, self.rome_editor().components(request))

    def edit_from_components(self, request: EditRequest, comp: dict) -> HookEdit:
        """The hook edit for ROME components already computed (`RomeEditor.components`), so
        ROME's weight edit and this control can share one optimisation of v*."""
        layer = int(comp["layer"])
        delta = torch.as_tensor(comp["delta"]).detach().float().reshape(-1)
        if delta.numel() != self.model.d_model:
            raise EditError(f"ROME delta has {delta.numel()} values, expected d_model={self.model.d_model}")
        delta = delta * float(self.hparams["scale"])
        if not torch.isfinite(delta).all():
            raise EditError(f"hook-delta: ROME's delta for {request!r} is not finite")
        name = SITES["mlp_out"].format(layer)
        patterns, factory = self._locator_factory(request)
        hooks = build_hooks(factory, [(name, add_at_subject_hook, {"delta": delta})])
        info = {"layer": layer, "hook_points": [name], "patterns": patterns,
                "delta_norm": float(delta.norm()), "timings": dict(comp.get("timings", {})),
                # True when ROME had already optimised this δ (RomeEditor.components memo)
                "reused": bool(comp.get("reused", False))}
        if info["reused"]:  # timed as a fresh edit, as ROME's own reused edits are
            t = info["timings"]
            info["reused_seconds"] = float(t.get("k", 0.0)) + float(t.get("v", 0.0))
        return HookEdit(self.model, hooks, request, self.name, info)


def rome_weight_edit_from_components(rome, request: EditRequest, comp: dict):
    """ROME's weight edit built from precomputed components (`RomeEditor.edit_from_components`:
    W + δ uᵀ/(uᵀk_bare) for ROME, the k* form for r-ROME); pairs with
    `HookDeltaEditor.edit_from_components`, which adds the same δ at inference time."""
    return rome.edit_from_components(request, comp)
