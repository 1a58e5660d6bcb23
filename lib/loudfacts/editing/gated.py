"""`hook-gated`: hook-delta whose write counts only where the edited fact is being asked for.

`hook-delta` (`loudfacts.editing.patching`) adds ROME's δ to MLP L's output at the subject's
last token wherever the subject occurs, so every later position that reads the subject reads
the new fact: "The Louvre is in Rome. The Eiffel Tower is in" and "The Louvre is cool. Obama
is from" leak "Rome" as ROME's weight edit does (notebook 07). This editor keeps that write and
adds a **gate** that decides, for every position t, whether t's next-token prediction comes from
the edited forward pass or from the unedited one:

    open_t = in_clause_t  and  max_{s_t ≤ t' ≤ t} cos(h_t', h*) ≥ tau

- s_t is the last position ≤ t where the edited subject's last token sits, as
  `patching.SubjectLocator` finds it on the input ids; in_clause_t holds when there is one and
  no sentence-ending token (a token whose text holds ".", "!", "?" or a newline) lies in
  (s_t, t]. A mention of the subject in an earlier sentence therefore never opens the gate:
  the CounterFact+ prefix ("The Louvre is in Rome. ") and the tangential prefix ("The Louvre is
  cool. ") are cut off by their full stop.
- h_t is the unedited model's residual stream after layer `gate_layer` at position t, minus
  the mean of that residual at the last token of generic prompts (`quiet.QUIET_TRAIN_PROMPTS`,
  which no evaluation scores); h* is the same vector at the last token of the bare rewrite
  prompt. The cosine asks whether position t's query resembles "{subject} is located in" more
  than a generic query does. Once it passes at some t' after the subject, the gate stays open
  to the end of the clause, so the tokens of a multi-token object are predicted by the edited
  model too.

Where the gate is open, the output equals hook-delta's exactly; where it is closed, it equals
the unedited model's exactly. Each forward therefore runs twice: a forward pre-hook on the HF
base model (`model.hf.base_model`, which every scorer and `LoadedModel.generate` go through)
first runs the unedited pass, which gives h_t and the unedited final residual stream, and the
edited pass then replaces the last block's output at closed positions by the unedited one (the
final norm and the unembedding act per position, so that is the unedited prediction there).
Positions never see a mixture: a closed position's prediction reads nothing the edit wrote.

The gate is a heuristic, stated so that its failures can be counted: a question about another
subject in the *same* sentence as a mention of the edited subject ("The Louvre is cool, and the
Eiffel Tower is in") opens it whenever the query resembles the rewrite prompt's, and a
paraphrase whose query does not resemble it stays closed. Notebook 07 measures both rates.
Neither setting is tuned: `gate_layer` is ROME's edit layer and `tau` is 0 (the query is on
h*'s side of the generic mean), so no evaluated record chose them. `clause_rule=False` drops
the sentence test (in_clause_t becomes "the subject occurs at or before t"), so the cosine alone
decides; notebook 07 sweeps `tau` under both and reads the gate's rates for every `tau` from
`GatedHookEdit.gate_scores`, which returns the threshold-free score at each prompt's last token.

In a packed forward (`loudfacts.scoring`: prompts merged into prefix trees) the gate is
decided for each prompt along its own path (`scoring.current_layout`) and put at its tree
positions, so scoring keeps its packed route under this edit too.

A forward that does not go through `model.hf.base_model` (the partial forwards of
`loudfacts.forward`, used by ROME's v* and `leak.patch_paths`) cannot compute the gate; the
write hook raises `EditError` there instead of writing ungated. Forwards given a KV cache are
refused, since they may hold only the newest tokens (the gate needs the whole sequence).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch

from loudfacts.editing.base import EditError, HookEdit, EditRequest, register_editor
from loudfacts.editing.patching import SITES, HookDeltaEditor, SubjectLocator, activations_at
from loudfacts.scoring import PackingRefused, current_layout, pack_aware

RESID_POST = "blocks.{}.hook_resid_post"
BOUNDARY_CHARS = (".", "!", "?", "\n")


@functools.lru_cache(maxsize=8)
def _boundary_table(tokenizer) -> torch.Tensor:
    """(vocab,) bool: tokens whose text ends a sentence (holds one of `BOUNDARY_CHARS`)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    return torch.tensor([any(c in t for c in BOUNDARY_CHARS) for t in texts], dtype=torch.bool)


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """(b, pos) long: for each position, the last position ≤ it where `mask` holds, else -1."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, -1)).cummax(dim=1).values


def gate_mask(subject_last: torch.Tensor, boundary: torch.Tensor, relation_ok: torch.Tensor):
    """The gate (module docstring) from three (b, pos) bool masks: where the subject's last token
    is, which tokens end a sentence, and where cos(h_t, h*) ≥ tau."""
    s = _last_index(subject_last)
    in_clause = (s >= 0) & (_last_index(boundary) <= s)
    r = _last_index(relation_ok & in_clause)
    return in_clause & (r >= s)


class _GateState:
    """One applied edit's state, shared by its hooks and its pre-/post-hooks. `stack` holds one
    entry per base-model forward in progress (calls nest when edits are stacked: another gated
    edit's unedited pass runs inside this one's forward)."""

    def __init__(self, locator: SubjectLocator):
        self.locator = locator
        self.inner = False  # True while this edit's unedited pass runs
        self.h = None  # unedited residual after gate_layer (set by the inner pass)
        self.final0 = None  # unedited output of the last block (set by the inner pass)
        self.stack: list[dict] = []  # {"open": (b, pos) bool | None, "final0": tensor, ...}
        self.last = None  # the last finished forward's entry (cpu tensors), for diagnostics

    @property
    def last_open(self):
        """The last finished forward's gate, (b, pos) bool on the CPU (None: no ids)."""
        return None if self.last is None else self.last["open"]


class GatedHookEdit(HookEdit):
    """ROME's δ at the subject's last token, with the per-position gate of the module docstring."""

    def __init__(self, model, request: EditRequest, editor: str, *, layer: int, delta, patterns,
                 gate_layer: int, h_ref, centre, tau: float, info: dict,
                 clause_rule: bool = True):
        super().__init__(model, self._make_hooks, request, editor, info)
        self.layer, self.delta, self.patterns = layer, delta, patterns
        self.gate_layer, self.tau, self.clause_rule = gate_layer, float(tau), bool(clause_rule)
        self.h_ref, self.centre = h_ref, centre
        self.boundary = _boundary_table(model.tokenizer)
        self.state: _GateState | None = None
        self._module_hooks = []

    # -- hooks -----------------------------------------------------------------------------
    def _make_hooks(self):
        st = self.state
        loc = st.locator
        last = RESID_POST.format(self.model.n_layers - 1)

        @pack_aware
        def write(act, hook):
            if st.inner:
                return act
            if not st.stack:
                raise EditError("hook-gated: this forward did not go through "
                                "model.hf.base_model, so the gate was not computed; use a "
                                "full forward (scoring, model.hf, LoadedModel.generate)")
            if st.stack[-1]["open"] is None:
                return act
            m = loc.current_mask(act)
            if m is None or not m.any():
                return act
            loc.n_patched += int(m.sum())
            return act + m[..., None].to(act.dtype) * self.delta.to(act.device, act.dtype)

        @pack_aware
        def keep_gate(act, hook):
            if st.inner:
                st.h = act.detach()
            return act

        @pack_aware
        def mix(act, hook):
            if st.inner:
                st.final0 = act.detach()
                return act
            top = st.stack[-1] if st.stack else None
            if top is None or top["open"] is None or (
                    tuple(top["open"].shape) != tuple(act.shape[:2])):
                return act
            return torch.where(top["open"][..., None].to(act.device), act,
                               top["final0"].to(act.device, act.dtype))

        hooks = [("embed.hook_in", loc.read_ids_hook),
                 (SITES["mlp_out"].format(self.layer), write)]
        if self.gate_layer == self.model.n_layers - 1:
            hooks.append((last, pack_aware(lambda a, hook: mix(keep_gate(a, hook), hook))))
        else:
            hooks += [(RESID_POST.format(self.gate_layer), keep_gate), (last, mix)]
        return hooks + [("ln_final.hook_normalized", loc.clear_hook)]

    @pack_aware
    def _before(self, module, args, kwargs):
        """Forward pre-hook on the HF base model: the unedited pass, then the gate."""
        st = self.state
        if st.inner:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache_keys = [k for k in ("past_key_values", "cache") if k in kwargs]
        for k in cache_keys:
            if kwargs[k] is not None:  # (under the bridge HF's cache stays empty: see models)
                raise EditError("hook-gated needs whole sequences: a forward given a KV cache "
                                "may see only the newest tokens, so the gate cannot be "
                                "computed (LoadedModel.generate decodes without one)")
        if ids is None or ids.dim() != 2:
            st.stack.append({"open": None})  # no ids (inputs_embeds): no subject, no write
            return None
        inner_kwargs = {**kwargs, "use_cache": False, **{k: None for k in cache_keys}}
        st.inner = True
        try:
            with torch.no_grad():
                module(*args, **inner_kwargs)
        finally:
            st.inner = False
        finder = SubjectLocator(self.patterns)
        finder.read_ids_hook(ids, None)
        subj = finder.mask if finder.mask is not None else torch.zeros_like(ids, dtype=torch.bool)
        h = st.h.float() - self.centre.to(st.h.device)
        cos = torch.nn.functional.cosine_similarity(h, self.h_ref.to(h.device)[None, None], dim=-1)
        boundary = self.boundary.to(ids.device)[ids.clamp(0, len(self.boundary) - 1)]
        subj = subj.to(ids.device)
        cut = boundary if self.clause_rule else torch.zeros_like(boundary)
        layout = current_layout(ids)
        if layout is None:
            gate = gate_mask(subj, cut, cos >= self.tau)
        else:  # packed: decide along each prompt's own path, then back to tree positions
            seq = [layout.per_sequence(x, False) for x in (subj, cut, cos >= self.tau)]
            gate, agree = layout.to_positions(gate_mask(*seq), False)
            if not bool(agree.all()):  # cannot happen (the gate reads only earlier tokens)
                st.h = st.final0 = None
                raise PackingRefused("hook-gated: prompts sharing a packed position disagree "
                                     "about its gate")
        st.stack.append({"open": gate, "final0": st.final0,
                         "cos": cos, "subject": subj, "boundary": boundary})
        st.h = st.final0 = None
        return None

    @pack_aware
    def _after(self, module, args, kwargs, output):
        """Forward hook on the HF base model: this forward's gate is done."""
        st = self.state
        if not st.inner and st.stack:
            top = st.stack.pop()
            top.pop("final0", None)
            st.last = {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                       for k, v in top.items()}
        return None

    # -- apply / restore ---------------------------------------------------------------------
    def _apply(self):
        self.state = _GateState(SubjectLocator(self.patterns))
        base = self.model.hf.base_model
        self._module_hooks = [
            base.register_forward_pre_hook(self._before, with_kwargs=True),
            base.register_forward_hook(self._after, with_kwargs=True)]
        try:
            super()._apply()
        except BaseException:
            self._remove_module_hooks()
            raise

    def _remove_module_hooks(self):
        hooks, self._module_hooks = self._module_hooks, []
        for h in hooks:
            h.remove()

    def _restore(self):
        try:
            super()._restore()
        finally:
            self._remove_module_hooks()

    # -- diagnostics ---------------------------------------------------------------------------
    @torch.no_grad()
    def gate_scores(self, prompts, batch_size: int = 32) -> list[dict]:
        """The gate at the last token of each prompt, with what it was decided from.

        Returns one dict per prompt: `open` (this edit's gate), `subject_seen` (the edited
        subject occurs in the prompt), `in_clause` (its last mention is in the last token's
        sentence, whatever `clause_rule` is) and `score`, the largest centred cosine from that
        mention to the last token (NaN without a mention). For any threshold, the gate would be
        open exactly where `score >= tau` and `in_clause` (`clause_rule=False`: `subject_seen`)
        hold, so one call gives the gate's rates for every `tau`. Prompts run in right-padded
        batches (each row gated as if alone); the edit is applied for the call and restored.
        """
        m = self.model
        enc = [m.encode(p) for p in prompts]
        for p, e in zip(prompts, enc):
            if not e:
                raise ValueError(f"gate_scores: prompt {p!r} is empty")
        pad = m.tokenizer.pad_token_id or 0
        out = []
        with self.applied():
            for i in range(0, len(enc), batch_size):
                seqs = enc[i:i + batch_size]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for j, s in enumerate(seqs):
                    ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[j, :len(s)] = 1
                m.hf.base_model(ids.to(m.device), attention_mask=mask.to(m.device))
                last = self.state.last
                s_idx = _last_index(last["subject"])
                cut = _last_index(last["boundary"])
                for j, s in enumerate(seqs):
                    t, st = len(s) - 1, int(s_idx[j, len(s) - 1])
                    seen = st >= 0
                    score = float(last["cos"][j, st:t + 1].max()) if seen else float("nan")
                    out.append({"open": bool(last["open"][j, t]), "subject_seen": seen,
                                "in_clause": seen and int(cut[j, t]) <= st, "score": score})
        return out

    def gate_at_last(self, prompts) -> list[bool]:
        """Whether the gate is open at the last token of each prompt (`gate_scores`)."""
        return [r["open"] for r in self.gate_scores(prompts)]


@register_editor("hook-gated")
class HookGatedEditor(HookDeltaEditor):
    """hook-delta with a per-position gate on the edited relation (module docstring).

    Hyper-parameters: hook-delta's (`rome`, `scale`, `variants`), plus
        gate_layer: the layer after which h_t is read (None: ROME's edit layer).
        tau: the cosine threshold, in [-1, 1] (0: closer to h* than the generic mean is).
        clause_rule: True (default): the gate closes at a sentence end; False: a mention of
            the subject anywhere earlier counts, and the cosine alone decides.
    """

    defaults: ClassVar[dict] = {**HookDeltaEditor.defaults, "gate_layer": None, "tau": 0.0,
                                "clause_rule": True}

    def _check_hparams(self):
        super()._check_hparams()
        if self.hparams["gate_layer"] is not None:
            self._check_number("gate_layer", 0, self.model.n_layers - 1, integer=True)
        self._check_number("tau", -1.0, 1.0)

    @torch.no_grad()
    def _reference(self, request: EditRequest, gate_layer: int):
        """(h* − centre, centre) after `gate_layer`, from the unedited model."""
        from loudfacts.editing.quiet import QUIET_TRAIN_PROMPTS

        name = RESID_POST.format(gate_layer)
        centres = self.__dict__.setdefault("_centres", {})
        if gate_layer not in centres:  # depends only on the layer: once per editor
            centres[gate_layer] = torch.stack([
                activations_at(self.model, p, -1, [name])[name].float()
                for p in QUIET_TRAIN_PROMPTS]).mean(0)
        centre = centres[gate_layer]
        h_ref = activations_at(self.model, request.text, -1, [name])[name].float() - centre
        return h_ref, centre

    def edit_from_components(self, request: EditRequest, comp: dict) -> GatedHookEdit:
        base = super().edit_from_components(request, comp)  # checks δ, finds the patterns
        d = torch.as_tensor(comp["delta"]).detach().float().reshape(-1) * float(
            self.hparams["scale"])
        gl = self.hparams["gate_layer"]
        gl = int(comp["layer"]) if gl is None else int(gl)
        h_ref, centre = self._reference(request, gl)
        rule = bool(self.hparams["clause_rule"])
        info = {**base.info, "gate_layer": gl, "tau": float(self.hparams["tau"]),
                "clause_rule": rule}
        return GatedHookEdit(self.model, request, self.name, layer=int(comp["layer"]), delta=d,
                             patterns=base.info["patterns"], gate_layer=gl, h_ref=h_ref,
                             centre=centre, tau=float(self.hparams["tau"]), info=info,
                             clause_rule=rule)
