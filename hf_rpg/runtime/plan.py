"""The per-target plan: what is generated, how it is served, computed once per model.

``hf_rpg.api.plan.make_plan`` fills a ``Plan`` from a config and a model when RPG is applied
(or a checkpoint loaded); the engine, the parametrization, the loader and the DoF report
read it and never look at the config again. How a target reaches its layer is a
``Serving`` strategy, chosen once per target:

- ``REPLACE``: the attribute is generated entirely; the Parameter is gone (``mode="replace"``).
- ``MERGED`` (delta mode, a dense base): inside the owner's forward the attribute reads
  ``W0 + ΔW`` (the generation adds the base), elsewhere the frozen base Parameter.
- ``ADDITIVE`` (delta mode, a quantized base): the attribute stays the base and the owner's
  output gets ``x · ΔWᵀ`` added after its own forward.
- ``LOWRANK`` (delta mode, ``rpg-lowrank-v1``): as additive, with ``ΔW = F P`` applied as
  ``(x Pᵀ) Fᵀ``; the ring generates the factor ``F``, ``P`` is fixed by the seed.
- ``LORA`` (delta mode, ``rpg-lora-v1``): as low-rank, with ``ΔW = F (P + A)``; the ring
  generates both ``F`` and ``A``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from ..format.manifest import Layout, TargetLayout


@dataclass(frozen=True)
class Serving:
    """How a generated target reaches its layer (one of the five instances below).

    Attributes:
        name: ``"replace"``, ``"merged"``, ``"additive"``, ``"lowrank"`` or ``"lora"``.
        replaces_parameter: The Parameter leaves the module; the attribute is generated.
        adds_base: The generation adds the frozen base: the attribute reads ``W0 + ΔW``.
        added_to_output: The update is added to the layer's output; the attribute stays the base.
        low_rank: The ring generates a low-rank factor ``F`` (the update is ``F P``).
        both_factors: The ring generates ``A`` as well (the update is ``F (P + A)``).
        pooled_update: The update's memory comes from the engine's buffer pool.
    """

    name: str
    replaces_parameter: bool = False
    adds_base: bool = False
    added_to_output: bool = False
    low_rank: bool = False
    both_factors: bool = False
    pooled_update: bool = False

    def __str__(self) -> str:
        return self.name


REPLACE = Serving("replace", replaces_parameter=True)
MERGED = Serving("merged", adds_base=True)
ADDITIVE = Serving("additive", added_to_output=True, pooled_update=True)
LOWRANK = Serving("lowrank", added_to_output=True, low_rank=True)
LORA = Serving("lora", added_to_output=True, low_rank=True, both_factors=True)


@dataclass(frozen=True)
class TargetPlan:
    """One generated target: its manifest entry (ring, offset, gain, rank), how it is
    served, and the dtype and device of its weight.

    ``base_slot`` is where the frozen base lives in delta mode (``module._parameters[attr]``,
    read at each use, so wrappers that swap the Parameter are followed); None in replace mode.
    ``rowwise``: an untied plain ``nn.Embedding`` that generates only the rows a batch looks up.
    """

    entry: TargetLayout
    serving: Serving
    dtype: torch.dtype
    device: torch.device
    base_slot: tuple[nn.Module, str] | None = None
    rowwise: bool = False

    def base(self) -> torch.Tensor | None:
        """The frozen base Parameter (delta mode), looked up now; None in replace mode."""
        return None if self.base_slot is None else self.base_slot[0]._parameters[self.base_slot[1]]


@dataclass(frozen=True)
class Plan:
    """Everything decided once about serving a model's generated weights.

    Attributes:
        layout: The layout manifest (targets, rings, offsets, gains).
        targets: One ``TargetPlan`` per manifest target, in manifest order.
        seed: The generator seed.
        delta: Delta mode (the pretrained weights stay, an update is generated).
        cache_indices: Keep an int32 index cache per ring (else indices are computed on the fly).
        regenerate: Backward regenerates weights instead of autograd keeping them.
        inference_cache: Reuse generated weights across forwards in eval mode without grad.
        ring_init: How the rings start: ``random``, ``project``, ``zeros`` or ``empty`` (loading).
        ring_dtype: The rings' dtype.
        stored_names: Names of the base model's non-generated parameters that train and
            that checkpoints store (delta mode; in replace mode every one is stored).
        unfreeze_stored: Whether those are made trainable (else they keep the model's own
            ``requires_grad``); every other non-generated parameter is frozen.
    """

    layout: Layout
    targets: tuple[TargetPlan, ...]
    seed: int
    delta: bool
    cache_indices: bool
    regenerate: bool
    inference_cache: bool
    ring_init: str = "empty"
    ring_dtype: torch.dtype = torch.float32
    stored_names: frozenset[str] = frozenset()
    unfreeze_stored: bool = False

    def servings(self) -> list[str]:
        """Each target's serving name, in manifest order."""
        return [t.serving.name for t in self.targets]

    def rowwise_ids(self) -> set[int]:
        """Target ids of the embeddings that generate only the rows looked up."""
        return {tid for tid, t in enumerate(self.targets) if t.rowwise}

    def moved(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Plan:
        """This plan after ``module._apply(fn)`` (``.to()``, ``.half()``): each weight's dtype
        and device follow, as those of the Parameters they replace would."""
        targets = []
        for target in self.targets:
            probe = fn(torch.empty(0, dtype=target.dtype, device=target.device))
            targets.append(replace(target, dtype=probe.dtype, device=probe.device))
        return replace(self, targets=tuple(targets))
