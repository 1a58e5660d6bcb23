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
