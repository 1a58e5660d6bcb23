"""Where a fact stated in context lives in the model: the sweep behind patch-context (notebook 04).

`patch-context` borrows the subject's state from a run that states the new fact ("The Louvre is
located in the city of Rome. The Louvre") and writes it into bare prompts at the subject's last
token. For that to edit anything, the stated fact has to be *in* the subject's state. This
module measures whether it is, on any list of `EditRequest`s, with one row per (request,
variant) and both P(new) and P(true) on the bare rewrite prompt:

- ``bare``: no patch (the unedited model).
- ``in-context``: the rewrite prompt after the statement, `repeats` times. This is the most
  any patch of this run's activations could carry: if the new object does not win here, there
  is nothing to borrow.
- ``in-context, subject state from bare run``: the in-context run with the subject's
  last-token residual stream replaced, at every layer, by the bare run's. If P(new) stays, the
  in-context answer does not pass through the subject's state.
- ``subject state`` at one layer, or over a window of layers: the context run's residual
  stream after layer L at the subject's last token, written into the bare prompt there (what
  patch-context does).
- ``subject delta xS``: the bare state plus S times (context state - bare state) at one
  layer: the same direction mixed in more strongly.
- ``final position``: the context run's residual stream after layer L at the *last* prompt
  token, written into the bare prompt's last token. It shows from which layer on the answer
  position has read the fact from the statement.
- ``tail, all layers``: every position from the subject's last token on, at every layer
  (aligned from the end). The bare prompt's next-token distribution then equals the context
  run's: a positive control that the hooks write where they should. Its row holds
  ``control_gap``, the largest difference of the two next-token log-probabilities (P(new) of
  a multi-token object may still differ: its later tokens attend to the bare prefix).

All patches are hooks on ``blocks.{L}.hook_resid_post``; no weight changes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch

from loudfacts.editing.base import EditError, EditRequest
from loudfacts.editing.patching import activations_at
from loudfacts.scoring import next_token_logprobs, target_probs
from loudfacts.tokens import last_subject_token

RESID = "blocks.{}.hook_resid_post"

BARE = "bare"
IN_CONTEXT = "in-context"
KNOCKOUT = "in-context, subject state from bare run"
SUBJECT = "subject state"
WINDOW = "subject state, window"
DELTA = "subject delta"
FINAL = "final position"
CONTROL = "tail, all layers"


def context_text(request: EditRequest, repeats: int = 2) -> str:
    """The statement `repeats` times, then the rewrite prompt: "... of Rome. The Louvre is
    located in the city of"."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise EditError(f"repeats={repeats!r} must be an integer >= 1")
    return " ".join([request.statement] * repeats) + " " + request.text


def _states(model, text: str, positions: Sequence[int]) -> torch.Tensor:
    """Residual stream after every layer at `positions`: (n_layers, len(positions), d_model)."""
    names = [RESID.format(L) for L in range(model.n_layers)]
    acts = activations_at(model, text, list(positions), names)
    return torch.stack([acts[n] for n in names])


def _write(act, hook, *, positions, values):
    act = act.clone()
    act[:, positions] = values.to(act.device, act.dtype)  # every row: the same prompt, right-padded
    return act


def _hooks(patches: Iterable) -> list:
    return [(RESID.format(L), functools.partial(_write, positions=list(pos), values=v))
            for L, pos, v in patches]


@torch.no_grad()
def _probs(model, text: str, request: EditRequest, patches: Iterable = ()) -> tuple[float, float]:
    """(P(new), P(true)) after `text` with `patches` = [(layer, positions, values)] applied."""
    with model.bridge.hooks(fwd_hooks=_hooks(patches)):
        p = target_probs(model, [text, text], [request.target_new, request.target_true])
    return float(p[0]), float(p[1])


def sweep(model, requests: Sequence[EditRequest], *, repeats: int = 2,
          layers: Sequence[int] | None = None, windows: Sequence[tuple[int, int]] | None = None,
          delta_layers: Sequence[int] | None = None, scales: Sequence[float] = (2.0, 4.0, 8.0),
          other_repeats: Sequence[int] = (1, 4)):
    """The variants of the module docstring for each request; a long DataFrame.

    Args:
        requests: edits with `target_true` set (P(true) is read too).
        layers: single layers for "subject state" and "final position" (default every other
            layer).
        windows: [a, b) layer windows for "subject state, window" (default: 10-layer windows
            every 5 layers, and all layers).
        delta_layers, scales: where and how strongly the context direction is mixed in
            (default: four layers spread over the first two thirds).
        other_repeats: the statement stated this many times instead: the in-context run and
            the subject's state at every layer patched from it (rows with that `repeats`).

    Returns:
        DataFrame with case_id, subject, variant, repeats, layer (start of the window; NaN
        where the variant has none), window_end, scale, p_new, p_true, success (p_new >
        p_true), and control_gap on the control's rows.
    """
    import pandas as pd

    n = model.n_layers
    layers = list(range(0, n, 2)) if layers is None else [int(x) for x in layers]
    if windows is None:
        windows = [(a, min(a + 10, n)) for a in range(0, n - 5, 5)] + [(0, n)]
    if delta_layers is None:
        delta_layers = sorted({max(0, round(f * n)) for f in (0.13, 0.27, 0.4, 0.53)})
    for L in [*layers, *delta_layers, *[x for w in windows for x in (w[0], w[1] - 1)]]:
        if not 0 <= L < n:
            raise EditError(f"layer {L} out of range for {model.name} (0..{n - 1})")
    rows = []
    for req in requests:
        if req.target_true is None:
            raise EditError(f"request {req!r} has no target_true: the sweep reads P(true) too")
        bare, ctx = req.text, context_text(req, repeats)
        sb = last_subject_token(model, bare, req.subject)
        sc = last_subject_token(model, ctx, req.subject)
        nb, nc = len(model.encode(bare)), len(model.encode(ctx))
        tail_b = list(range(sb, nb))
        tail_c = list(range(nc - len(tail_b), nc))
        if nc - len(tail_b) != sc:
            raise EditError(f"the bare prompt {bare!r} is not the tail of the context text "
                            f"{ctx!r} token for token")
        s_bare = _states(model, bare, tail_b)  # (n, tail, d): index 0 = subject, -1 = final
        s_ctx = _states(model, ctx, tail_c)

        def add(variant, p, layer=None, end=None, scale=None, req=req, r=repeats):
            rows.append({"case_id": req.case_id, "subject": req.subject, "variant": variant,
                         "repeats": r, "layer": layer, "window_end": end, "scale": scale,
                         "p_new": p[0], "p_true": p[1]})

        add(BARE, _probs(model, bare, req))
        add(IN_CONTEXT, _probs(model, ctx, req))
        add(KNOCKOUT, _probs(model, ctx, req, [(L, [sc], s_bare[L, :1]) for L in range(n)]))
        for L in layers:
            add(SUBJECT, _probs(model, bare, req, [(L, [sb], s_ctx[L, :1])]), layer=L)
            add(FINAL, _probs(model, bare, req, [(L, [nb - 1], s_ctx[L, -1:])]), layer=L)
        for a, b in windows:
            add(WINDOW, _probs(model, bare, req, [(L, [sb], s_ctx[L, :1]) for L in range(a, b)]),
                layer=a, end=b)
        for L in delta_layers:
            d = s_ctx[L, :1] - s_bare[L, :1]
            for s in scales:
                add(DELTA, _probs(model, bare, req, [(L, [sb], s_bare[L, :1] + float(s) * d)]),
                    layer=L, scale=float(s))
        control = [(L, tail_b, s_ctx[L]) for L in range(n)]
        add(CONTROL, _probs(model, bare, req, control))
        # the check itself: next-token log-probabilities after the prompt, which the control
        # makes equal to the context run's (later target tokens attend to the bare prefix)
        want = next_token_logprobs(model, [ctx])[0]
        with model.bridge.hooks(fwd_hooks=_hooks(control)):
            got = next_token_logprobs(model, [bare])[0]
        rows[-1]["control_gap"] = float((got - want).abs().max())
        for r in [x for x in other_repeats if x != repeats]:
            ctx_r = context_text(req, r)
            s_r = _states(model, ctx_r, [last_subject_token(model, ctx_r, req.subject)])
            add(IN_CONTEXT, _probs(model, ctx_r, req), r=r)
            add(WINDOW, _probs(model, bare, req, [(L, [sb], s_r[L]) for L in range(n)]),
                layer=0, end=n, r=r)
    df = pd.DataFrame(rows)
    if len(df):
        df["success"] = df["p_new"] > df["p_true"]
    return df


def summarize(df):
    """Per variant (and repeats / layer / window / scale): mean P(new), the share of requests where the
    new object beats the true one with its Wilson 95% interval, and n."""
    from loudfacts.claims import wilson

    keys = ["variant", "repeats", "layer", "window_end", "scale"]
    out = []
    for k, g in df.groupby(keys, dropna=False, sort=False):
        lo, hi = wilson(int(g["success"].sum()), len(g))
        out.append(dict(zip(keys, k), p_new=g["p_new"].mean(), success=g["success"].mean(),
                        success_low=lo, success_high=hi, n=len(g)))
    import pandas as pd

    return pd.DataFrame(out)
