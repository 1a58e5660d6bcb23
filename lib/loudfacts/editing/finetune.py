"""Fine-tuning edits: FT and norm-constrained FT+L (ROME's baselines) under the edit contract.

The idea: to make "The Louvre is located in the city of" continue with " Rome", take a few
gradient steps on the negative log-likelihood of the target tokens (teacher-forced, mean over
the target's tokens) with respect to ONE layer's MLP weights and nothing else.

* `ft` ("FT"): unconstrained Adam steps on that layer until P(target_new) reaches `stop_prob`
  or `steps` run out.
* `ft-l` ("FT+L", Zhu et al. 2020 "Modifying memories in transformer models"; ROME's FT+L
  baseline): the same, but after every step each weight is clamped back into the L-infinity
  ball of radius `eps` around its original value, |w - w_0| <= eps elementwise.

Which weights: by default only the MLP output projection `arch.mlp_out.format(layer)` (Llama's
`down_proj`, GPT-2's `c_proj`), the same matrix ROME rewrites, so the comparison with ROME is
about *how* the matrix changes, not *which*. `module="mlp"` trains every weight matrix of the
layer's MLP (Llama: gate, up and down projections). Biases are never trained (ROME's FT also
trains `c_proj.bias` on GPT-2; our `WeightEdit` carries weights only).

Only one layer's MLP changes, so on a Llama-family model with no hook set each step reuses one
forward of the layers below and runs the blocks above through `loudfacts.lean` (plain tensor
operations, checked against the bridge; the same loss to float rounding, the trained weights'
change moved by ~1e-5 relative in bench/bench_finetune.py). Elsewhere, and inside
`lean.lean_route(False)`, every step is the HF forward.

Several requests can be edited together (`finetune_weights_batch`, `edit_many`; the study's
runner does so for the next `runner.EDIT_BATCH` records): FT's steps run one short prompt, whose
products read every weight of the blocks above for a few rows, and the matrix library reads
weights at about a third of the memory's rate then (`bench/bench_ceiling.py`), so a step costs
little more for several prompts than for one. Each request keeps its own matrix, Adam state,
stop and errors; the edits equal one-at-a-time ones up to float rounding, which Adam carries
into the trained weights (up to 6e-4 relative, losses within 1e-4, on 8 CounterFact records
with the embedded model).

The model is never left changed: training runs on the live parameter (so every forward is the
ordinary one) inside a try/finally that writes the original values back bit-exactly and
restores `requires_grad`; the trained values leave in a `WeightEdit`, which puts them in place
only inside `edit.applied()`.

Hyper-parameters live in `hparams/ft/<model>.json` with one section per editor:
`{"ft": {...}, "ft-l": {...}, "evidence": {...}}` (the class defaults fill missing keys).
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import ClassVar

import torch

from loudfacts.editing.base import (
    EditError,
    Editor,
    EditRequest,
    WeightEdit,
    register_editor,
    validate_request,
)
from loudfacts.tokens import check_context, target_ids

MODULE_CHOICES = ("mlp_out", "mlp")


def trained_paths(model, layer: int, module: str = "mlp_out") -> list[str]:
    """Module paths whose `weight` FT trains: the MLP output projection or every MLP matrix."""
    model._check_layer(layer)
    if module == "mlp_out":
        return [model.arch.mlp_out.format(layer)]
    if module == "mlp":
        root = model.arch.mlp.format(layer)
        paths, seen = [], set()
        for name, sub in model.module(root).named_modules():
            w = getattr(sub, "weight", None)
            if not name or not isinstance(w, torch.nn.Parameter) or w.dim() != 2 or id(w) in seen:
                continue
            # The TransformerLens bridge wraps each HF module and keeps it as
            # `_original_component`; the HF path without those segments resolves to the same
            # parameter, and is the path ROME-style code and WeightEdit use.
            clean = ".".join(part for part in name.split(".") if part != "_original_component")
            if model.module(f"{root}.{clean}").weight is w:
                seen.add(id(w))
                paths.append(f"{root}.{clean}")
        if not paths:
            raise EditError(f"no weight matrices found under {root}")
        return paths
    raise EditError(f"hyper-parameter module={module!r} must be one of {MODULE_CHOICES}")


def _training_batch(model, request: EditRequest):
    """Ids of prompt + target (minus its last token) and where the target's tokens sit.

    Returns:
        ids: (1, n_prompt + n_target - 1) LongTensor.
        pos: (n_target,) positions whose logits predict the target tokens.
        tgt: (n_target,) target token ids.
    """
    p_ids = model.encode(request.text)
    try:
        t_ids = target_ids(model, request.target_new)
        check_context(model, len(p_ids) + len(t_ids), request.text)
    except ValueError as e:
        raise EditError(f"cannot fine-tune on {request!r}: {e}") from e
    ids = torch.tensor([p_ids + t_ids[:-1]], dtype=torch.long, device=model.device)
    pos = torch.arange(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids), device=model.device)
    return ids, pos, torch.tensor(t_ids, dtype=torch.long, device=model.device)


def _target_nll(model, ids, pos, tgt) -> torch.Tensor:
    """Mean NLL (nats) of the target tokens; a scalar with a graph when gradients are on.

    The target sits at the end of `ids`, so only the last len(tgt) positions need logits
    (`logits_to_keep` skips the (pos, d_vocab) unembedding of the prompt, a large share of
    a small model's compute).
    """
    logits = model.hf(ids, logits_to_keep=len(tgt)).logits[0].float()
    return torch.nn.functional.cross_entropy(logits, tgt)


def _lean_inputs(model, ids, layer: int, w: dict):
    """One forward (no gradients) of `ids` (1, n) keeping, at block `layer`, the residual after
    its attention (`mid`) and its MLP's input (`x`), each (1, n, d_model); None unless the
    residual after the block rebuilds from them with the MLP weights `w` ("gate", "up",
    "down") to `lean.TOLERANCE` of its scale."""
    from loudfacts.forward import StopForward, _keep_hook, keep_activation_and_stop_hook
    from loudfacts.lean import TOLERANCE, llama_mlp_hidden

    store: dict = {}
    keep = {"mid": f"blocks.{layer}.hook_resid_mid", "x": f"blocks.{layer}.mlp.hook_in"}
    hooks = [(name, partial(_keep_hook, store=store, key=k)) for k, name in keep.items()]
    hooks.append((f"blocks.{layer}.hook_resid_post",
                  partial(keep_activation_and_stop_hook, store=store, key="post", detach=True)))
    with torch.no_grad():
        try:
            with model.bridge.hooks(fwd_hooks=hooks):
                model.bridge(ids)
        except StopForward:
            pass
        if set(store) != {"mid", "x", "post"}:
            return None
        mid, x, post = store["mid"], store["x"], store["post"]
        rebuilt = mid + torch.nn.functional.linear(llama_mlp_hidden(x, w["gate"], w["up"]),
                                                   w["down"])
        scale = max(float(post.abs().max()), 1.0)
        if not float((rebuilt - post).abs().max()) <= TOLERANCE * scale:
            return None
    return mid, x


def _lean_weights(model, layer: int, paths: list[str]) -> dict | None:
    """Layer `layer`'s MLP weights by role ("gate", "up", "down") where the lean route can
    train `paths` (a checked Llama model, no hook, not the last layer, only that MLP's
    matrices); None otherwise."""
    from loudfacts.lean import can_use

    if layer + 1 >= model.n_layers or not can_use(model):
        return None
    mlp = model.arch.mlp.format(layer)
    names = {p: f"{mlp}.{p}_proj" for p in ("gate", "up", "down")}
    if not set(paths) <= set(names.values()):
        return None
    return {p: model.module(path).weight for p, path in names.items()}


def _only_down(model, layer: int, paths: list[str]) -> bool:
    """Whether `paths` are layer `layer`'s MLP down projection alone (the default recipe)."""
    return set(paths) == {model.arch.mlp.format(layer) + ".down_proj"}


def _lean_target_nll(model, ids, pos, tgt, layer: int, paths: list[str]):
    """`_target_nll` through the lean route (`loudfacts.lean`), as a function of the live
    trained weights, or None where that route is closed (not a checked Llama model, a hook set,
    the last layer, or weights other than the layer's MLP matrices trained).

    Only layer `layer`'s MLP is trained, so everything below it, and the residual entering
    that MLP, are the same at every step: one forward (no gradients) keeps the residual after
    the layer's attention and the MLP's input. Each step then adds the MLP's output, computed
    with the live weights (for the down projection alone, from its stored input), and runs
    blocks `layer + 1`.. lean; only the target positions are unembedded. The first forward's
    residual after the layer must equal this reconstruction (to `lean.TOLERANCE` of its scale),
    or the bridge's route is used.
    """
    from loudfacts.forward import SuffixBatch, unembed
    from loudfacts.lean import LeanSuffix, llama_mlp_hidden

    w = _lean_weights(model, layer, paths) if ids.shape[0] == 1 else None
    inputs = _lean_inputs(model, ids, layer, w) if w is not None else None
    if inputs is None:
        return None
    mid, x = inputs
    with torch.no_grad():
        hidden = llama_mlp_hidden(x, w["gate"], w["up"])
        batch = SuffixBatch([ids[0].tolist()], [0], model.tokenizer.pad_token_id or 0,
                            device=model.device)
        lean = LeanSuffix(model, batch, None, layer + 1)
    only_down = _only_down(model, layer, paths)

    def nll() -> torch.Tensor:
        h = hidden if only_down else llama_mlp_hidden(x, w["gate"], w["up"])
        final = lean(mid + torch.nn.functional.linear(h, w["down"]))
        logits = unembed(model, final[0, pos]).float()
        return torch.nn.functional.cross_entropy(logits, tgt)

    return nll


def linf_bounds(w0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds with |bound - w0| <= eps exactly (measured in float64).

    `w0 + eps` in the weights' dtype rounds (and so does eps itself), which can land a
    fraction of an ulp outside the ball; such bounds are moved back towards w0 one ulp at a
    time, so the projected weights satisfy the constraint exactly rather than up to rounding.
    """
    w64 = w0.double()
    hi, lo = (w64 + eps).to(w0.dtype), (w64 - eps).to(w0.dtype)
    for _ in range(8):  # one step is always enough for float32; the loop is a safeguard
        over_hi, over_lo = hi.double() - w64 > eps, w64 - lo.double() > eps
        if not (over_hi.any() or over_lo.any()):
            break
        hi = torch.where(over_hi, torch.nextafter(hi, w0), hi)
        lo = torch.where(over_lo, torch.nextafter(lo, w0), lo)
    return lo, hi


def finetune_weights(model, request: EditRequest, hparams: dict, name: str = "ft") -> WeightEdit:
    """The whole FT / FT+L method: Adam on layer `hparams["layer"]`'s MLP weight(s), minimising the
    target's NLL on the rewrite prompt until P(target) reaches `stop_prob` or `steps` run out,
    each weight clamped into [w0 - eps, w0 + eps] after every step when `eps` is set. The live
    weights are restored bit-exactly before it returns; the trained values come back as a
    `WeightEdit` named `name`. `FineTune` / `FineTuneL` check `hparams` and call it."""
    h = hparams
    paths = trained_paths(model, h["layer"], h["module"])
    params = [model.module(p).weight for p in paths]
    originals = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    ids, pos, tgt = _training_batch(model, request)
    eps = h["eps"]
    bounds = [linf_bounds(p0, eps) for p0 in originals] if eps is not None else []
    losses: list[float] = []
    stopped = "steps"
    torch.manual_seed(h["seed"])  # Adam is deterministic; seeded for any future dropout
    was_training = model.hf.training
    try:
        model.hf.eval()  # no dropout: the edit is a deterministic function of its inputs
        # the same loss, lean where that route is open (`_lean_target_nll`)
        nll = (_lean_target_nll(model, ids, pos, tgt, h["layer"], paths)
               or partial(_target_nll, model, ids, pos, tgt))
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=h["lr"], weight_decay=h["weight_decay"])
        with torch.enable_grad():
            for _ in range(h["steps"]):
                opt.zero_grad(set_to_none=True)
                loss = nll()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    raise EditError(f"{name}: loss became {losses[-1]} for {request!r}")
                if math.exp(-losses[-1]) >= h["stop_prob"]:
                    stopped = "stop_prob"
                    break
                loss.backward()
                opt.step()
                if eps is not None:
                    with torch.no_grad():
                        for p, (lo, hi) in zip(params, bounds):
                            # Project onto the L-inf ball around the original weights.
                            p.copy_(torch.maximum(torch.minimum(p, hi), lo))
        with torch.no_grad():
            final = float(nll())
            new = {path: p.detach().clone() for path, p in zip(paths, params)}
    finally:
        with torch.no_grad():
            for p, p0, flag in zip(params, originals, flags):
                p.copy_(p0)  # bit-exact: copying the saved tensor back
                p.requires_grad_(flag)
                p.grad = None
        model.hf.train(was_training)
    # float64 differences: exact, so max_abs_delta <= eps holds as reported
    deltas = {path: new[path].double() - p0.double() for path, p0 in zip(paths, originals)}
    info = _edit_info(h, paths, losses, stopped, final, deltas)
    return WeightEdit(model, new, request, name, info)


def _edit_info(h: dict, paths: list[str], losses: list[float], stopped: str, final: float,
               deltas: dict) -> dict:
    return {
        "layer": h["layer"],
        "paths": paths,
        "steps_run": len(losses) if stopped == "steps" else len(losses) - 1,
        "stopped_by": stopped,
        "loss_first": losses[0],
        "loss_final": final,
        "p_new_final": math.exp(-final),
        "losses": losses,
        "max_abs_delta": max(float(d.abs().max()) for d in deltas.values()),
        "changed_fraction": sum(int((d != 0).sum()) for d in deltas.values())
        / sum(d.numel() for d in deltas.values()),
        "delta_norm": math.sqrt(sum(float(d.pow(2).sum()) for d in deltas.values())),
        "hparams": dict(h),
    }


def finetune_weights_batch(model, requests: list[EditRequest], hparams: dict,
                           name: str = "ft") -> list | None:
    """`finetune_weights` for several requests at once: one lean forward and backward per step
    for all of them, each request with its own copy of the trained matrix and its own stop.

    FT's steps run one short prompt, so each reads every weight of the blocks above the layer
    for a few rows; the matrix library reads weights at a third of the memory's rate then
    (`bench/bench_ceiling.py`, "small_m_gemm"), and one step for several prompts costs far
    less than a step for each. Here the prompts are rows of one right-padded batch; request
    r's matrix is slice r of one stacked tensor, trained by one Adam, which is elementwise, so
    each slice follows exactly the updates its own Adam would make. A request whose
    P(target) reaches `stop_prob` leaves the batch before that step's update, as it stops
    alone; its matrix is kept as it stood then (the shared Adam's momentum would still move
    its slice). The results equal one-at-a-time `finetune_weights` up to float rounding (the
    batched products add in another order; `tests/unit/test_finetune_batch.py`
    bounds it).

    Only the default recipe's case is batched: the layer's down projection alone trained, on
    the lean route (`_lean_target_nll`'s conditions). Returns None otherwise (the caller edits
    one at a time), else one entry per request: its `WeightEdit`, or the `EditError` that
    `finetune_weights` would raise for it (a prompt too long, a non-finite loss). The model's
    weights are never changed.
    """
    from loudfacts.forward import SuffixBatch, unembed
    from loudfacts.lean import LeanSuffix, llama_mlp_hidden

    h = hparams
    if not requests:
        return []
    layer = h["layer"]
    paths = trained_paths(model, layer, h["module"])
    w = _lean_weights(model, layer, paths)
    if w is None or not _only_down(model, layer, paths):
        return None
    t0 = time.perf_counter()
    out: list = [None] * len(requests)
    items = []  # (index, ids, pos, tgt, mid, hidden)
    for i, request in enumerate(requests):
        try:
            ids, pos, tgt = _training_batch(model, request)
        except EditError as e:
            out[i] = e
            continue
        inputs = _lean_inputs(model, ids, layer, w)
        if inputs is None:
            return None
        with torch.no_grad():
            hidden = llama_mlp_hidden(inputs[1], w["gate"], w["up"])[0]
        items.append((i, ids[0], pos, tgt, inputs[0][0], hidden))
    if not items:
        return out
    w0 = w["down"].detach()
    n = len(items)
    width = max(len(it[1]) for it in items)
    mid = torch.zeros(n, width, w0.shape[0], dtype=w0.dtype, device=w0.device)
    hid = torch.zeros(n, width, w0.shape[1], dtype=w0.dtype, device=w0.device)
    for r, it in enumerate(items):
        mid[r, :len(it[1])] = it[4]
        hid[r, :len(it[1])] = it[5]
    stack = w0.unsqueeze(0).repeat(n, 1, 1).requires_grad_(True)
    eps = h["eps"]
    lo, hi = linf_bounds(w0, eps) if eps is not None else (None, None)
    losses: list[list[float]] = [[] for _ in range(n)]
    stopped = ["steps"] * n
    pad = model.tokenizer.pad_token_id or 0
    torch.manual_seed(h["seed"])  # as `finetune_weights`
    opt = torch.optim.Adam([stack], lr=h["lr"], weight_decay=h["weight_decay"])
    built_for, run = None, None

    def batch_of(rows: tuple):
        """The lean run and target indices for these rows of the batch (rebuilt when a request
        leaves)."""
        nonlocal built_for, run
        if rows != built_for:
            sb = SuffixBatch([items[r][1].tolist() for r in rows], [0] * len(rows), pad,
                             device=model.device)
            lean = LeanSuffix(model, sb, None, layer + 1)
            t_row = torch.cat([torch.full((len(items[r][3]),), j) for j, r in enumerate(rows)])
            t_pos = torch.cat([items[r][2] for r in rows])
            t_tok = torch.cat([items[r][3] for r in rows])
            count = torch.tensor([len(items[r][3]) for r in rows], dtype=torch.float32)
            built_for, run = rows, (lean, sb.n_suffix, t_row, t_pos, t_tok, count)
        return run

    def row_nll(rows: tuple) -> torch.Tensor:
        lean, s, t_row, t_pos, t_tok, count = batch_of(rows)
        idx = torch.tensor(rows)
        down = torch.bmm(hid[idx, :s], stack[idx].transpose(1, 2))
        final = lean(mid[idx, :s] + down)
        logits = unembed(model, final[t_row, t_pos]).float()
        tok = torch.nn.functional.cross_entropy(logits, t_tok, reduction="none")
        return torch.zeros(len(rows)).index_add_(0, t_row, tok) / count

    active = tuple(range(n))
    trained: dict = {}  # row -> its trained matrix, kept when it leaves the batch
    with torch.enable_grad():
        for _ in range(h["steps"]):
            opt.zero_grad(set_to_none=True)
            nll = row_nll(active)
            keep, frozen = [], []
            for j, r in enumerate(active):
                losses[r].append(float(nll[j].detach()))
                if not math.isfinite(losses[r][-1]):
                    out[items[r][0]] = EditError(
                        f"{name}: loss became {losses[r][-1]} for {requests[items[r][0]]!r}")
                    frozen.append(r)
                elif math.exp(-losses[r][-1]) >= h["stop_prob"]:
                    stopped[r] = "stop_prob"
                    frozen.append(r)
                else:
                    keep.append(j)
            for r in frozen:  # its weights as it stops; the shared update would move them
                trained[r] = stack.detach()[r].clone()
            if not keep:
                break
            nll[keep].sum().backward()
            opt.step()
            if eps is not None:
                with torch.no_grad():
                    stack.copy_(torch.maximum(torch.minimum(stack, hi), lo))
            active = tuple(active[j] for j in keep)
    with torch.no_grad():
        for r, value in trained.items():
            stack[r] = value
        done = tuple(r for r in range(n) if out[items[r][0]] is None)
        final = row_nll(done) if done else torch.zeros(0)
    share = (time.perf_counter() - t0) / n
    for j, r in enumerate(done):
        i, request = items[r][0], requests[items[r][0]]
        new = stack[r].detach().clone()
        delta = {paths[0]: new.double() - w0.double()}
        info = _edit_info(h, paths, losses[r], stopped[r], float(final[j]), delta)
        info["batched"] = {"requests": n, "seconds_share": share}
        out[i] = WeightEdit(model, {paths[0]: new}, request, name, info)
    return out


class _FineTuneEditor(Editor):
    """Shared machinery of `ft` and `ft-l`: Adam on one layer's MLP weight(s)."""

    hparams_dir = "ft"
    defaults: ClassVar[dict] = {
        "layer": 0,
        "module": "mlp_out",  # "mlp_out" (down projection only) or "mlp" (every MLP matrix)
        "steps": 25,
        "lr": 5e-4,
        "weight_decay": 0.0,
        "eps": None,  # L-inf radius; None = unconstrained (ft)
        "stop_prob": 0.99,  # stop once P(target_new) = exp(-mean NLL) reaches this
        "seed": 0,
    }

    def __post_init__(self):
        # class defaults <- this editor's section of hparams/ft/<model>.json <- keyword args
        super().__post_init__()
        self._check_hparams()

    def _check_hparams(self):
        h = self.hparams
        if not isinstance(h["layer"], int) or not 0 <= h["layer"] < self.model.n_layers:
            raise ValueError(
                f"{self.name}: layer={h['layer']!r} out of range 0..{self.model.n_layers - 1}"
            )
        if h["module"] not in MODULE_CHOICES:
            raise ValueError(f"{self.name}: module={h['module']!r}; choose from {MODULE_CHOICES}")
        if not isinstance(h["steps"], int) or h["steps"] < 1:
            raise ValueError(f"{self.name}: steps={h['steps']!r} must be a positive integer")
        if not (math.isfinite(h["lr"]) and h["lr"] > 0):
            raise ValueError(f"{self.name}: lr={h['lr']!r} must be a finite number > 0")
        if not (math.isfinite(h["weight_decay"]) and h["weight_decay"] >= 0):
            raise ValueError(f"{self.name}: weight_decay={h['weight_decay']!r} must be a finite "
                             "number >= 0")
        eps = h["eps"]
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                                or not (math.isfinite(eps) and eps > 0)):
            raise ValueError(f"{self.name}: eps={eps!r} must be a finite number > 0 (or None: "
                             "no bound)")
        if not 0 < h["stop_prob"] <= 1:
            raise ValueError(f"{self.name}: stop_prob={h['stop_prob']!r} must be in (0, 1]")

    batches_edits: ClassVar[bool] = True

    def _compute(self, request: EditRequest) -> WeightEdit:
        return finetune_weights(self.model, request, self.hparams, self.name)

    def edit_many(self, requests) -> list:
        """Each request's edit (or its `EditError`), computed together by
        `finetune_weights_batch` where that route is open, else one at a time. Each edit's
        `info["seconds"]` is its share of the batch's time."""
        requests = list(requests)
        out: list = [None] * len(requests)
        valid = []
        for i, r in enumerate(requests):
            try:
                validate_request(self.model, r)
                valid.append(i)
            except EditError as e:
                out[i] = e
        got = finetune_weights_batch(self.model, [requests[i] for i in valid], self.hparams,
                                     self.name)
        if got is None:
            return super().edit_many(requests)
        for i, res in zip(valid, got):
            if isinstance(res, WeightEdit):
                res.info.setdefault("seconds", res.info["batched"]["seconds_share"])
            out[i] = res
        return out


@register_editor("ft")
class FineTune(_FineTuneEditor):
    """FT: unconstrained fine-tuning of one layer's MLP weight(s) on the rewrite prompt."""

    defaults: ClassVar[dict] = {**_FineTuneEditor.defaults, "eps": None}


@register_editor("ft-l")
class FineTuneL(_FineTuneEditor):
    """FT+L: fine-tuning with every weight kept within `eps` (L-inf) of its original value."""

    defaults: ClassVar[dict] = {**_FineTuneEditor.defaults, "eps": 5e-4}

    def _check_hparams(self):
        super()._check_hparams()
        if self.hparams["eps"] is None:
            raise ValueError("ft-l needs a numeric eps (L-inf radius); use editor 'ft' for none")
