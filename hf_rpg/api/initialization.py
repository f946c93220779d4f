"""Where a fresh RPG model's values come from: the rings' first values and, for a model built
on the meta device, its other parameters and buffers (initialised by the model's own rules,
with nothing dense ever generated or allocated)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..runtime.parametrize import is_generated
from ..spec.generator import ring_normal_init

if TYPE_CHECKING:
    from ..format.manifest import Layout
    from ..runtime.engine import WeightEngine
    from ..runtime.index_cache import RingIndices
    from ..runtime.plan import Plan
    from .targets import FoundTarget


def _initialise(module: nn.Module, init: Any) -> None:
    if callable(init):
        init(module)
    elif callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()


def has_meta_tensors(model: nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is on the meta device."""
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def materialize_meta(base: nn.Module, engine: WeightEngine, device: torch.device) -> None:
    """Give every parameter and buffer still on the meta device memory on ``device`` and
    initialise it by the model's own rules (transformers' ``_init_weights``, else the
    modules' ``reset_parameters``). Generated attributes read as meta placeholders
    meanwhile, so nothing dense is generated or allocated."""
    touched = []
    made: dict[int, torch.Tensor] = {}  # a tensor shared by several modules (tied) stays shared
    for module in base.modules():
        fresh = False
        for slots, wrap in ((module._parameters, True), (module._buffers, False)):
            for name, tensor in list(slots.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                if id(tensor) not in made:
                    empty = torch.empty_like(tensor, device=device)
                    made[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if wrap else empty
                slots[name] = made[id(tensor)]
                fresh = True
        if fresh or is_generated(module):
            touched.append(module)
    init = getattr(base, "_init_weights", None)
    with torch.no_grad():
        for module in touched:
            try:
                with engine.placeholders():
                    _initialise(module, init)
            except (RuntimeError, NotImplementedError):
                # a computation mixing meta and real tensors (a weight_norm parametrization):
                # this module's placeholders are real (and freed right after)
                with engine.placeholders(device):
                    _initialise(module, init)


def initial_ring(
    layout: Layout, indices: RingIndices, ring_name: str, plan: Plan, targets: list[FoundTarget]
) -> torch.Tensor:
    """The first values of ring ``ring_name``: ``random`` (normal, scaled), ``project`` (the
    least-squares fit of the model's weights), ``zeros`` (delta mode) or ``empty`` (loading)."""
    ring = layout.rings[ring_name]
    ids = layout.ring_targets(ring_name)
    ring_init, dtype = plan.ring_init, plan.ring_dtype
    if ring_init == "empty":
        values = torch.empty(ring.size, dtype=dtype)
    elif ring_init == "zeros":
        values = torch.zeros(ring.size, dtype=dtype)
    elif ring_init == "random":
        values = ring_normal_init(ring.size, indices.keys[ring_name]) * ring.scale
    elif ring_init == "project":
        values = _projected_ring(layout, indices, ring_name, ids, targets)
    else:  # pragma: no cover - internal
        raise ValueError(ring_init)
    return values.to(dtype=dtype)


def _projected_ring(
    layout: Layout, indices: RingIndices, ring_name: str, ids: list[int], targets: list[FoundTarget]
) -> torch.Tensor:
    """Least-squares ring: each entry is the gain-weighted mean of the weights it feeds,
    ``theta_i = sum(g * s * W) / sum(g**2)`` over its uses."""
    n = layout.rings[ring_name].size
    numerator = torch.zeros(n, dtype=torch.float64)
    denominator = torch.zeros(n, dtype=torch.float64)
    for tid in ids:
        entry = layout.targets[tid]
        index = indices.indices(ring_name, entry, targets[tid].param.device).cpu().to(torch.int64)
        negative = index >= n
        entry_index = index - n * negative
        sign = 1.0 - 2.0 * negative.to(torch.float64)
        values = targets[tid].param.detach().cpu().to(torch.float64).flatten()
        numerator.index_add_(0, entry_index, sign * values, alpha=entry.gain)
        denominator.index_add_(0, entry_index, torch.full_like(values, entry.gain**2))
    return numerator / denominator
