"""PEFT's ``merge_adapter`` / ``unmerge_adapter`` for delta mode: the update ``ΔW`` written
into the frozen base weights in place (forwards then cost what the base's cost), and taken
out again.

The rings are snapshotted at merge time (they are small), so ``unmerge_adapter`` subtracts
exactly the update that was added even if a ring changed meanwhile. As in PEFT, ``W0 + ΔW
- ΔW`` is ``W0`` up to floating-point rounding, not bit for bit.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import RPGStateError
from ..runtime.plan import ADDITIVE

# Functions here take an RPGModel (hf_rpg.api.model imports this module, so it is not imported back).
RPGModel = nn.Module


def require_delta(model: RPGModel, verb: str, why: str) -> None:
    """Raise ``RPGStateError`` unless the RPG model ``model`` is usable and in delta mode;
    ``why`` ends the message: what ``verb`` needs delta mode for."""
    model._check_usable()
    if not model.plan.delta:
        raise RPGStateError(f"{verb}() needs mode='delta'{why}")


def _check_mergeable(model: RPGModel, verb: str) -> None:
    why = " (an update added to frozen base weights); in replace mode the weights are generated whole: use "
    require_delta(model, verb, why + "merge_and_unload()")
    additive = [t.entry.name for t in model.plan.targets if t.serving is ADDITIVE]
    if additive:
        raise RPGStateError(
            f"{verb}() cannot write an update into quantized weights ({additive[0]!r}...): use merge_and_unload(), "
            "which replaces those layers by dense ones"
        )


def _updates(model: RPGModel, rings: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``ΔW`` of every target computed from ``rings`` (the live rings hold those values meanwhile)."""
    engine = model._engine
    live = {name: ring.detach().clone() for name, ring in model.rpg_rings.items()}
    with torch.no_grad():
        for name, ring in model.rpg_rings.items():
            ring.copy_(rings[name])
        try:
            ids = list(range(len(model.layout.targets)))
            raw = engine._raw(ids, with_base=False, pooled=False)
            return {tid: engine.dense_update(tid, update) for tid, update in raw.items()}
        finally:
            for name, ring in model.rpg_rings.items():
                ring.copy_(live[name])


def merge_adapter(model: RPGModel) -> None:
    """Add the current update into the base weights; the forward then runs the base alone."""
    _check_mergeable(model, "merge_adapter")
    if model.merged:
        warnings.warn("merge_adapter(): the update is already merged; nothing to do", UserWarning, stacklevel=3)
        return
    engine = model._engine
    snapshot = {name: ring.detach().clone() for name, ring in model.rpg_rings.items()}
    with torch.no_grad():
        for tid, update in _updates(model, snapshot).items():
            base = model.plan.targets[tid].base()
            base.copy_((base.to(update.dtype) + update.to(base.device)).to(base.dtype))
    engine.update_enabled = False
    engine.drop_inference_weights()
    model._merged_rings = snapshot


def unmerge_adapter(model: RPGModel) -> None:
    """Take the merged update out of the base weights again (the rings as they were at merge time)."""
    _check_mergeable(model, "unmerge_adapter")
    if not model.merged:
        warnings.warn("unmerge_adapter(): the update is not merged; nothing to do", UserWarning, stacklevel=3)
        return
    engine = model._engine
    with torch.no_grad():
        for tid, update in _updates(model, model._merged_rings).items():
            base = model.plan.targets[tid].base()
            base.copy_((base.to(update.dtype) - update.to(base.device)).to(base.dtype))
    engine.update_enabled = True
    engine.drop_inference_weights()
    model._merged_rings = None
