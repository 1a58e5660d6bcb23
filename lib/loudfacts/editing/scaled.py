"""`rome-scaled`: ROME's own rank-one update, multiplied by a factor: the weakest edit that
quieting has to beat.

A quiet edit (`rome-quiet`, `hook-gated`) that lowers the leak but also lowers efficacy could
have got there by writing less. This editor writes less and nothing else:

    W' = W + delta_scale · ΔW_ROME,

with ΔW_ROME the reference's update (`RomeEditor.update_for`: δ uᵀ / (uᵀ k_bare), u = C⁻¹ k*)
from ROME's own k*, v* and C. Because the update is linear in δ, the layer's output changes by
delta_scale · c · δ for every key (c = uᵀk / uᵀk_bare, `loudfacts.leak`'s coefficient): the same
direction at every position, only shorter. A quieting method earns the name when its point on
notebook 07's frontier (efficacy against specificity) lies above the line this editor traces
as delta_scale runs from 0 to 1.

The components are ROME's: `components(request)` asks a plain ROME editor with the same
hyper-parameters (minus `delta_scale`), so notebook 07 reuses the v* its ROME edits already
optimised, and no cache entry ever holds a scaled δ.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from loudfacts.editing.base import EditRequest, register_editor
from loudfacts.editing.rome import RomeEditor


@register_editor("rome-scaled")
class RomeScaledEditor(RomeEditor):
    """ROME's weight update times `delta_scale` (module docstring).

    Hyper-parameters: ROME's (`RomeEditor`, from `hparams/rome/<model>.json` as for ROME), plus
        delta_scale: the factor on ROME's ΔW, a finite number >= 0 (1.0: ROME's edit; 0: none).
    """

    hparams_dir = "rome"
    defaults: ClassVar[dict] = {**RomeEditor.defaults, "delta_scale": 0.5}

    def __post_init__(self):
        super().__post_init__()
        s = self.hparams["delta_scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
                math.isfinite(s) and s >= 0):
            raise ValueError(f"{self.name}: delta_scale={s!r} must be a finite number >= 0")
        rome_hp = {k: v for k, v in self.hparams.items() if k != "delta_scale"}
        self._rome = RomeEditor(model=self.model, hparams=rome_hp)

    def deviations(self) -> dict:
        dev = super().deviations()
        dev["delta_scale"] = self.hparams["delta_scale"]
        return dev

    def rome_editor(self) -> RomeEditor:
        """The ROME editor whose components (k*, v*, δ) this editor scales."""
        return self._rome

    def context_templates(self) -> list[str]:
        return self._rome.context_templates()

    def use_context_templates(self, templates: list[str]) -> None:
        self._rome.use_context_templates(templates)

    def components(self, request: EditRequest) -> dict:
        """ROME's components for `request` (shared with ROME's memo and disk cache)."""
        return self._rome.components(request)

    def update_for(self, comps: dict) -> torch.Tensor:
        return float(self.hparams["delta_scale"]) * super().update_for(comps)
