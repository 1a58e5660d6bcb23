"""Probabilities of targets after prompts: ROME's convention, batched.

The probability of a (possibly multi-token) target after a prompt is exp(-mean token NLL) of the
target's tokens, teacher-forced: P("New York" | prompt) = exp(-(nll(" New") + nll(" York")) / 2).
For single-token targets that is the plain next-token probability.

`target_probs(model, prompts, targets)` scores many (prompt, target) pairs in a handful of
forward passes rather than one per pair. Forwards go through `model.hf`; since the
TransformerLens bridge wraps that module in place, hook edits that are applied take effect here
too.

Two ways to batch, chosen per call (`logits_at`):

* **packed** (no hook anywhere on the model, and the model passed `supports_packing`): the
  sequences go into a prefix tree, so a token that several sequences share from their start
  (the CounterFact+ statement before ten neighbour prompts, the same prompt scored for its
  true and its new object) is one position, computed once. The tree's positions lie side by
  side in a row of at most `PACK_TOKENS`, each attending to its own ancestors only (a 4-D mask)
  at its depth (`position_ids`): the attention each sequence sees is the one it would see
  alone, and no padding is computed. On notebook 06's probes this computes about a third of
  the padded batches' positions (`bench/bench_scoring.py`).
* **padded** (a hook is applied that reads positions as "row, position" of a batch of separate
  prompts): right padding and an attention mask, `batch_size` prompts per forward.

The scorers below cut a call into chunks by route (`_chunks`): `batch_size` prompts each where
forwards are padded, and where they are packed as many as one packed forward holds
(`PACK_ROWS` x `PACK_TOKENS` tokens before sharing, at most `PACK_CHUNK` x `batch_size`
prompts), so that a record's probes, which share their starts, are one tree and one forward
rather than one per `batch_size` prompts.

Hooks marked `pack_aware` keep the packed path: they find where each sequence lies in a packed
row through `current_layout` (the hook edits of `loudfacts.editing.patching` and `.gated`,
which locate the subject per sequence and write at its tree positions). A pack-aware hook that
meets a tree where sequences sharing a position would disagree about it raises
`PackingRefused`, and `logits_at` redoes that call padded.

The two agree to float rounding (`tests/unit/test_scoring.py`); `packing(False)` turns the
packed path off for a block.

With no hook at all on the model, packed forwards skip the bridge's per-module wrappers: the
same arithmetic as plain tensor operations (`lean.LeanPacked`), used where `lean_packing`
checked once per model that it gives the bridge's hidden states (`tests/unit/test_lean.py`).
`lean.lean_route(False)` sends them through the bridge again.

`prompt_scores` reads next-token distributions and teacher-forced multi-token objects from the
same forwards, so a prompt read both ways (`probes.pair_probs`, under every `cases.score`) is
computed once.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Sequence

import torch

from loudfacts.tokens import check_context, target_ids


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


def _chunks(model, tokens: Sequence[int], batch_size: int):
    """Index ranges over a call's items (`tokens[i]`: the tokens item i puts into forwards),
    one `logits_at` call each: `batch_size` items where that call would be padded; where it
    would be packed (`packs_now`), as many items as fit `PACK_ROWS` x `PACK_TOKENS` tokens
    (counted before shared starts are merged, so about one packed forward) and at most
    `PACK_CHUNK` x `batch_size` items (which bounds the logits a call holds)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(tokens)
    if not packs_now(model):
        yield from _batches(n, batch_size)
        return
    cap_tokens, cap_items = PACK_ROWS * PACK_TOKENS, PACK_CHUNK * batch_size
    start = total = 0
    for i, t in enumerate(tokens):
        if i > start and (total + t > cap_tokens or i - start >= cap_items):
            yield range(start, i)
            start, total = i, 0
        total += t
    if start < n:
        yield range(start, n)


def packs_now(model) -> bool:
    """Whether `logits_at` takes the packed route on this model now: packing on, no hook that
    is not `pack_aware`, and the model passed `supports_packing` (a hook may still refuse one
    tree, and that call is padded)."""
    return _PACKING["on"] and not _any_hooks(model) and supports_packing(model)


def logits_at(model, seqs: Sequence[Sequence[int]], rows, positions) -> torch.Tensor:
    """Logits at chosen (row, position) pairs of `seqs` (row j: sequence `seqs[j]`).

    Forwards of the HF base model (the TransformerLens bridge wraps its modules in place, so
    applied hook edits take effect), then the unembedding of just the requested positions:
    for a small model the (batch, pos, d_vocab) unembedding of every position costs about as
    much as the transformer itself. Packed into prefix trees when no hook is on the model
    (`packed_logits_at`), else one right-padded batch.

    Returns:
        Float tensor (len(rows), d_vocab).
    """
    if packs_now(model):
        try:
            return packed_logits_at(model, seqs, rows, positions)
        except PackingRefused:
            _PACKING["refused"] += 1  # a pack-aware hook could not follow this tree: pad
    return padded_logits_at(model, seqs, rows, positions)


def padded_logits_at(model, seqs: Sequence[Sequence[int]], rows, positions) -> torch.Tensor:
    """`logits_at` by one forward of a right-padded batch of `seqs` with an attention mask."""
    pad = model.tokenizer.pad_token_id or 0
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[j, : len(s)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    rows = torch.as_tensor(rows, dtype=torch.long, device=model.device)
    positions = torch.as_tensor(positions, dtype=torch.long, device=model.device)
    if _output_hooks_attached(model):
        # a hook on the unembedding sees (batch, pos, ...) tensors: give it every position
        return model.hf(ids, attention_mask=mask).logits[rows, positions]
    hidden = model.hf.base_model(ids, attention_mask=mask).last_hidden_state
    return model.hf.get_output_embeddings()(hidden[rows, positions])


# -- packed forwards: shared prefixes once, no padding ------------------------------------------
PACK_TOKENS = 512  # positions per packed row (attention over a row grows with its square;
# bench/bench_scoring.py times 128, 256 and 512 on notebook 06's probes: 512 was fastest)
PACK_ROWS = 4      # packed rows per forward
PACK_CHUNK = 4     # a packed call's items: at most this many times batch_size (`_chunks`)
_PACKING = {"on": True, "hooks": True, "refused": 0}  # refused: calls redone padded
_MODULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> its modules


@contextlib.contextmanager
def packing(enabled: bool, hooks: bool = True):
    """Turn the packed path of `logits_at` on or off inside the block; `hooks=False` keeps it
    for hook-free forwards only, as before hooks could be `pack_aware` (benchmarks compare the
    routes; results agree to float rounding whichever is taken)."""
    before = dict(_PACKING)
    _PACKING["on"], _PACKING["hooks"] = bool(enabled), bool(hooks)
    try:
        yield
    finally:
        _PACKING["on"], _PACKING["hooks"] = before["on"], before["hooks"]


class PackingRefused(RuntimeError):
    """Raised by a pack-aware hook when a packed forward cannot give what separate rows would
    (sequences that share a tree position disagree about it, e.g. it is a subject token on one
    path and not on another); `logits_at` catches it and redoes the call padded."""


def pack_aware(fn):
    """Mark a hook (a TransformerLens hook function, or a torch module hook: function, bound
    method's function, or the function under a `functools.partial`) as correct on packed
    forwards: it reads positions through `current_layout`, so it does not send `logits_at` to
    the padded path. Returns `fn`."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    getattr(target, "__func__", target).pack_aware = True
    return fn


def _is_pack_aware(fn) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, "pack_aware", False))


def _any_hooks(model, pack_aware_ok: bool = True) -> bool:
    """Whether any module of the model has a forward (pre-)hook that a packed forward would
    mislead: any hook except the bridge's own capture hooks (TransformerLens blocks keep their
    handles in `_capture_hook_handles`) and, with `pack_aware_ok`, hooks marked `pack_aware`
    (for a TransformerLens hook, the function given to it, which its `LensHandle.user_hook`
    keeps). A patch or a recording hook may read positions as (row, position) of separate
    prompts, so such forwards stay padded. `pack_aware_ok=False` counts every hook (the lean
    route of `loudfacts.lean` runs no hook at all)."""
    got = _MODULES.get(model.bridge)
    if got is None:  # the module trees are fixed once loaded
        # the bridge's, and the HF model's (its containers, e.g. `hf.base_model`, which the
        # bridge does not list, take module hooks too)
        mods = list({id(m): m for tree in (model.bridge, getattr(model, "hf", None))
                     if tree is not None for m in tree.modules()}.values())
        got = _MODULES[model.bridge] = (
            mods, [m for m in mods if "_capture_hook_handles" in m.__dict__])
    mods, blocks = got
    hooked = [m for m in mods if m._forward_hooks or m._forward_pre_hooks]
    if not hooked:
        return False
    own = {h.id for b in blocks for h in b.__dict__["_capture_hook_handles"]}
    for m in hooked:
        lens = {h.hook.id: h.user_hook for h in (getattr(m, "fwd_hooks", None) or ())
                if getattr(h, "hook", None) is not None and hasattr(h.hook, "id")}
        for k, fn in (*m._forward_hooks.items(), *m._forward_pre_hooks.items()):
            if k not in own and not (pack_aware_ok and _PACKING["hooks"]
                                     and _is_pack_aware(lens.get(k, fn))):
                return True
    return False


class PackLayout:
    """Where the sequences of one packed forward lie, for pack-aware hooks (`current_layout`).

    Attributes:
        ids: LongTensor (rows, width), the packed input.
        row: LongTensor (n_seq,), each sequence's packed row.
        nodes: LongTensor (n_seq, max_len), the position in that row of each of its tokens
            (-1 beyond its end).
    """

    def __init__(self, ids: torch.Tensor, packs: Sequence[PrefixPack]):
        self.ids = ids
        paths = [(r, path) for r, p in enumerate(packs) for path in p.paths]
        longest = max(len(path) for _, path in paths)
        self.row = torch.tensor([r for r, _ in paths], dtype=torch.long, device=ids.device)
        nodes = torch.full((len(paths), longest), -1, dtype=torch.long)
        for k, (_, path) in enumerate(paths):
            nodes[k, :len(path)] = torch.tensor(path, dtype=torch.long)
        self.nodes = nodes.to(ids.device)
        self.valid = self.nodes >= 0
        # flat index of each sequence token in (rows * width)
        self._flat = (self.row[:, None] * ids.shape[1] + self.nodes.clamp(min=0))

    def per_sequence(self, values: torch.Tensor, fill) -> torch.Tensor:
        """Packed (rows, width, ...) values as each sequence's own row: (n_seq, max_len, ...),
        `fill` beyond a sequence's end."""
        flat = values.reshape(-1, *values.shape[2:])
        out = flat[self._flat.reshape(-1)].reshape(*self._flat.shape, *values.shape[2:])
        keep = self.valid.reshape(*self.valid.shape, *([1] * (values.dim() - 2)))
        return torch.where(keep, out, torch.as_tensor(fill, dtype=out.dtype, device=out.device))

    def to_positions(self, values: torch.Tensor, fill) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence (n_seq, max_len) bool or integer values back at their packed positions.

        Returns (packed (rows, width), agree (rows, width) bool): a position shared by several
        sequences gets their common value; `agree` is False where they differ (the value there
        is then the smallest). Positions no sequence reaches get `fill`.
        """
        rows, width = self.ids.shape
        v = values.long()[self.valid]
        idx = self._flat[self.valid]
        lo = torch.full((rows * width,), torch.iinfo(torch.long).max, dtype=torch.long,
                        device=v.device)
        hi = torch.full_like(lo, torch.iinfo(torch.long).min)
        lo.scatter_reduce_(0, idx, v, "amin")
        hi.scatter_reduce_(0, idx, v, "amax")
        seen = torch.zeros_like(lo, dtype=torch.bool)
        seen[idx] = True
        out = torch.where(seen, lo, torch.full_like(lo, int(fill)))
        agree = ~seen | (lo == hi)
        return out.reshape(rows, width).to(values.dtype), agree.reshape(rows, width)


_LAYOUTS: list[PackLayout] = []  # packed forwards in progress (innermost last)


def current_layout(ids: torch.Tensor | None = None) -> PackLayout | None:
    """The layout of the packed forward in progress, or None outside one. With `ids`, only if
    they are that forward's packed input (a hook reading a forward's ids checks that the
    forward is the packed one)."""
    if not _LAYOUTS:
        return None
    layout = _LAYOUTS[-1]
    if ids is not None and (ids.shape != layout.ids.shape or not torch.equal(
            ids.to(layout.ids.device), layout.ids)):
        return None
    return layout


class PrefixPack:
    """Sequences merged into one prefix tree: position i holds token `ids[i]` at depth
    `depth[i]`, and attends to the positions on its path from the root (`ancestors[i, j]`).

    `paths[k][t]` is the position of token t of the k-th sequence added.
    """

    def __init__(self):
        self.ids: list[int] = []
        self.depth: list[int] = []
        self.parent: list[int] = []
        self.paths: list[list[int]] = []
        self._child: dict[tuple[int, int], int] = {}

    def new_positions(self, seq: Sequence[int]) -> int:
        """How many positions adding `seq` would create."""
        node = -1
        for d, t in enumerate(seq):
            node = self._child.get((node, int(t)))
            if node is None:
                return len(seq) - d
        return 0

    def add(self, seq: Sequence[int]) -> int:
        node, path = -1, []
        for d, t in enumerate(seq):
            nxt = self._child.get((node, int(t)))
            if nxt is None:
                nxt = len(self.ids)
                self.ids.append(int(t))
                self.depth.append(d)
                self.parent.append(node)
                self._child[(node, int(t))] = nxt
            path.append(nxt)
            node = nxt
        self.paths.append(path)
        return len(self.paths) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def ancestors(self) -> torch.Tensor:
        """Bool (n, n): position i sees j where j is i or one of its ancestors."""
        n = len(self.ids)
        anc = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(self.parent):  # parents come before their children
            if p >= 0:
                anc[i] = anc[p]
            anc[i, i] = True
        return anc


def pack_sequences(seqs: Sequence[Sequence[int]], max_tokens: int | None = None):
    """Sequences into prefix trees of at most `max_tokens` (default `PACK_TOKENS`) positions each
    (a longer sequence gets a tree of its own), in order. Returns
    [(PrefixPack, [index into seqs of each path])]."""
    max_tokens = PACK_TOKENS if max_tokens is None else int(max_tokens)
    packs: list[tuple[PrefixPack, list[int]]] = []
    for j, s in enumerate(seqs):
        if not s:
            raise ValueError(f"sequence {j} is empty")
        if not packs or len(packs[-1][0]) + packs[-1][0].new_positions(s) > max_tokens:
            packs.append((PrefixPack(), []))
        packs[-1][0].add(s)
        packs[-1][1].append(j)
    return packs


def _pack_inputs(model, packs: list[PrefixPack]):
    """(ids, position_ids, additive mask (rows, width, width)) of packed rows, on the model's
    device; a pad position sees only itself and is never read."""
    pad = model.tokenizer.pad_token_id or 0
    width = max(len(p) for p in packs)
    dtype = next(model.hf.parameters()).dtype
    ids = torch.full((len(packs), width), pad, dtype=torch.long)
    pos = torch.zeros((len(packs), width), dtype=torch.long)
    seen = torch.eye(width, dtype=torch.bool).repeat(len(packs), 1, 1)
    for r, p in enumerate(packs):
        n = len(p)
        ids[r, :n] = torch.tensor(p.ids, dtype=torch.long)
        pos[r, :n] = torch.tensor(p.depth, dtype=torch.long)
        seen[r, :n, :n] = p.ancestors()
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return ids.to(model.device), pos.to(model.device), mask.to(model.device)


def _packed_forward(model, packs: list[PrefixPack], lean: bool | None = None) -> torch.Tensor:
    """Final hidden states of packed rows, (len(packs), width, d_model). Through
    `lean.LeanPacked` where `lean_packing(model)` allows it (`lean` True/False forces a route),
    else the HF base model (hooks applied)."""
    ids, pos, mask = _pack_inputs(model, packs)
    if lean if lean is not None else lean_packing(model):
        from loudfacts.lean import LeanPacked

        return LeanPacked(model, pos, mask)(ids)
    _LAYOUTS.append(PackLayout(ids, packs))
    try:
        out = model.hf.base_model(ids, attention_mask=mask[:, None], position_ids=pos)
    finally:
        _LAYOUTS.pop()
    return out.last_hidden_state


_LEAN_PACK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> bool


@torch.no_grad()
def lean_packing(model) -> bool:
    """Whether packed forwards run as plain tensor operations (`lean.LeanPacked`, skipping the
    bridge's per-module wrappers): only where the lean route may run now (`lean.can_use`: no
    hook of any kind on the model, no autocast, not inside `lean.lean_route(False)`) and
    `LeanPacked` gave the bridge's final hidden states on this model, checked once per model
    object on random prefix trees to `lean.TOLERANCE` of their scale. While the bridge's own
    result is not finite (a weight broken on purpose), it says False without remembering."""
    from loudfacts.lean import TOLERANCE, can_use

    if not can_use(model):
        return False
    key = model.bridge
    if key in _LEAN_PACK:
        return _LEAN_PACK[key]
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.d_vocab, 1000)
    stem = torch.randint(0, vocab, (5,), generator=gen).tolist()
    seqs = [stem + torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (4, 2)]
    seqs.append(torch.randint(0, vocab, (3,), generator=gen).tolist())
    packs = [p for p, _ in pack_sequences(seqs)]
    want = _packed_forward(model, packs, lean=False)
    real = torch.zeros(want.shape[:2], dtype=torch.bool)
    for r, p in enumerate(packs):
        real[r, :len(p)] = True
    if not torch.isfinite(want[real]).all():
        return False
    ok = False
    try:
        got = _packed_forward(model, packs, lean=True)
        scale = max(float(want[real].abs().max()), 1.0)
        ok = bool(torch.isfinite(got[real]).all()) and float(
            (got - want)[real].abs().max()) <= TOLERANCE * scale
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError):
        ok = False
    _LEAN_PACK[key] = ok
    return ok


def packed_logits_at(model, seqs: Sequence[Sequence[int]], rows, positions) -> torch.Tensor:
    """`logits_at` with `seqs` packed into prefix trees (`pack_sequences`), `PACK_ROWS` trees per
    forward. Positions a requested (row, position) does not need are still computed (every
    sequence's tokens up to its end), as in the padded batch."""
    rows = [int(r) for r in rows]
    positions = [int(q) for q in positions]
    packs = pack_sequences(seqs)
    where = {}  # sequence index -> (pack index, path)
    for i, (p, members) in enumerate(packs):
        for k, j in enumerate(members):
            where[j] = (i, p.paths[k])
    out = torch.empty(len(rows), model.d_vocab)
    for start in range(0, len(packs), PACK_ROWS):
        group = list(range(start, min(len(packs), start + PACK_ROWS)))
        hidden = _packed_forward(model, [packs[i][0] for i in group])
        pick = [(k, group.index(where[r][0]), where[r][1][q])
                for k, (r, q) in enumerate(zip(rows, positions)) if where[r][0] in group]
        if not pick:
            continue
        k_idx = torch.tensor([k for k, _, _ in pick])
        h = hidden[torch.tensor([g for _, g, _ in pick]), torch.tensor([n for _, _, n in pick])]
        out[k_idx] = model.hf.get_output_embeddings()(h).float().cpu()
    return out


_PACK_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> bool


@torch.no_grad()
def supports_packing(model) -> bool:
    """Whether packed forwards give the padded batch's logits on this model (checked once per
    model object, on random sequences that share prefixes, to 1e-4 of the logits; False where
    the architecture ignores `position_ids` or a 4-D mask).

    While the padded logits themselves are not finite (a weight broken on purpose, as the
    hostile tests do), or a pack-aware hook on the model refuses the check's tree
    (`PackingRefused`), the check says False without remembering it, so the model packs again
    once its weights are restored or the hook is gone."""
    key = model.bridge
    if key in _PACK_SUPPORT:
        return _PACK_SUPPORT[key]
    ok = False
    try:
        gen = torch.Generator().manual_seed(0)
        base = torch.randint(1, min(model.d_vocab, 1000), (9,), generator=gen).tolist()
        seqs = [base[:6] + [base[7]], base[:4], base[:6] + [base[8], base[2]], base[3:9], base[:6]]
        rows = [j for j, s in enumerate(seqs) for _ in s]
        positions = [q for s in seqs for q in range(len(s))]
        want = padded_logits_at(model, seqs, rows, positions).float().cpu()
        if not torch.isfinite(want).all():
            return False  # nothing to compare against: ask again next time
        got = packed_logits_at(model, seqs, rows, positions)
        scale = float(want.abs().max()) or 1.0
        ok = bool(torch.isfinite(got).all()) and float(
            (got - want).abs().max()) <= 1e-4 * max(1.0, scale)
    except PackingRefused:
        return False  # a hook's refusal says nothing about the architecture: ask again later
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError):
        ok = False
    _PACK_SUPPORT[key] = ok
    return ok


def _output_hooks_attached(model) -> bool:
    """Whether a hook sits on the unembedding (TransformerLens `unembed.*`)."""
    unembed = getattr(model.bridge, "unembed", None)
    if unembed is None:
        return False
    return any(m._forward_hooks or m._forward_pre_hooks for m in unembed.modules())


def target_nll(
    model,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean per-token negative log-likelihood (nats) of each target after its prompt.

    Args:
        prompts: full prompt texts (subject filled in), one per pair.
        targets: objects ("Rome"), scored with a leading space (see `tokens.target_ids`).

    Returns:
        Float tensor of shape (n_pairs,).
    """
    return score_targets(model, prompts, targets, batch_size)[0]


@torch.no_grad()
def score_targets(
    model,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched pass giving, per (prompt, target) pair, the target's mean token NLL and
    whether the greedy next token after the prompt is the target's first token. `batch_size`
    pairs per padded forward; a packed call takes more (`_chunks`).

    Returns:
        (nll, top1): float tensor and bool tensor, both of shape (n_pairs,).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows = []
    for p, t in zip(prompts, targets):
        p_ids, t_ids = model.encode(p), target_ids(model, t)
        if not p_ids:
            raise ValueError(f"prompt {p!r} is empty")
        check_context(model, len(p_ids) + len(t_ids), p)
        rows.append((p_ids, t_ids))
    out = torch.empty(len(rows))
    top1 = torch.zeros(len(rows), dtype=torch.bool)
    sizes = [len(p_ids) + len(t_ids) - 1 for p_ids, t_ids in rows]
    for idx in _chunks(model, sizes, batch_size):
        seqs = [rows[i][0] + rows[i][1][:-1] for i in idx]
        # positions that predict each target token, and the token they should predict
        r_of, pos, tok, first = [], [], [], []
        for j, i in enumerate(idx):
            p_ids, t_ids = rows[i]
            first.append(len(pos))
            for k, t in enumerate(t_ids):
                r_of.append(j)
                pos.append(len(p_ids) - 1 + k)
                tok.append(t)
        logp = torch.log_softmax(logits_at(model, seqs, r_of, pos).float(), dim=-1).cpu()
        tok_nll = -logp[torch.arange(len(tok)), torch.tensor(tok)]
        for j, i in enumerate(idx):
            n_t = len(rows[i][1])
            a = first[j]
            out[i] = tok_nll[a:a + n_t].mean()
            top1[i] = bool(logp[a].argmax() == rows[i][1][0])
    return out, top1


@torch.no_grad()
def prompt_scores(
    model,
    next_of: Sequence[str],
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`next_token_logprobs(model, next_of)` and `target_nll(model, prompts, targets)` from the
    same forwards: each prompt's teacher-forced continuations go into one forward with the
    prompt itself, so on the packed path (`logits_at`) a prompt that is read both ways (its
    next-token distribution, and a multi-token object after it) is computed once.

    `batch_size` counts distinct prompts per padded forward, each with all of its
    continuations (two targets after one prompt are two sequences sharing that prompt); a
    packed call takes as many prompts as about one packed forward holds (`_chunks`). Agrees
    with the two functions to float rounding (`tests/unit/test_scoring.py`).

    Returns:
        (next-token log-probs (len(next_of), d_vocab) float32, mean target NLL (len(prompts),)).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    enc = {}
    for p in [*next_of, *prompts]:
        if p not in enc:
            enc[p] = model.encode(p)
            if not enc[p]:
                raise ValueError(f"prompt {p!r} is empty")
    t_enc = [target_ids(model, t) for t in targets]
    for p, t in zip(prompts, t_enc):
        check_context(model, len(enc[p]) + len(t), p)
    for p in next_of:
        check_context(model, len(enc[p]), p)
    groups: dict[str, tuple[list[int], list[int]]] = {}  # prompt -> (next_of idx, pair idx)
    for j, p in enumerate(next_of):
        groups.setdefault(p, ([], []))[0].append(j)
    for i, p in enumerate(prompts):
        groups.setdefault(p, ([], []))[1].append(i)
    next_logp = torch.empty(len(next_of), model.d_vocab)
    nll = torch.empty(len(prompts))
    order = list(groups)
    sizes = [(len(enc[p]) if groups[p][0] else 0)
             + sum(len(enc[p]) + len(t_enc[i]) - 1 for i in groups[p][1]) for p in order]
    for idx in _chunks(model, sizes, batch_size):
        seqs, r_of, pos = [], [], []
        reads = []  # (kind, index, first request, n requests, target ids)
        for g in idx:
            p = order[g]
            p_ids = enc[p]
            nexts, pairs = groups[p]
            if nexts:
                reads.append(("next", nexts, len(pos), 1, None))
                r_of.append(len(seqs))
                pos.append(len(p_ids) - 1)
                seqs.append(p_ids)
            for i in pairs:
                t_ids = t_enc[i]
                reads.append(("pair", [i], len(pos), len(t_ids), t_ids))
                r_of.extend([len(seqs)] * len(t_ids))
                pos.extend(range(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids)))
                seqs.append(p_ids + t_ids[:-1])
        logp = torch.log_softmax(logits_at(model, seqs, r_of, pos).float(), dim=-1).cpu()
        for kind, which, a, n, t_ids in reads:
            if kind == "next":
                next_logp[which] = logp[a]
            else:
                nll[which[0]] = -logp[torch.arange(a, a + n), torch.tensor(t_ids)].mean()
    return next_logp, nll


def target_probs(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """exp(-mean NLL) of each target after its prompt; shape (n_pairs,)."""
    return torch.exp(-target_nll(model, prompts, targets, batch_size=batch_size))


@torch.no_grad()
def next_token_logprobs(model, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Log-softmax over the vocabulary for the token after each prompt; (n, d_vocab), float32.
    `batch_size` prompts per padded forward; a packed call takes more (`_chunks`)."""
    out = []
    enc = [model.encode(p) for p in prompts]
    for p, e in zip(prompts, enc):
        if not e:
            raise ValueError(f"prompt {p!r} is empty")
        check_context(model, len(e), p)
    for idx in _chunks(model, [len(e) for e in enc], batch_size):
        seqs = [enc[i] for i in idx]
        logits = logits_at(model, seqs, range(len(seqs)), [len(q) - 1 for q in seqs])
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.d_vocab)


def top1_matches(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """Whether the greedy next token after each prompt is the first token of its target."""
    logp = next_token_logprobs(model, prompts, batch_size=batch_size)
    first = torch.tensor([target_ids(model, t)[0] for t in targets])
    return logp.argmax(-1) == first
