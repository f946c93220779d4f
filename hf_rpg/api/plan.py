"""The one planning step: a config and a model give the layout and the per-target plan.

``make_plan`` decides, when RPG is applied, which targets can be served, which ring each
draws from, how the DoF budget is shared between rings, each target's rank and scale (the
``hf_rpg.format.manifest.Layout`` a checkpoint stores and loading follows), and then, like
``plan_for_layout`` does for a loaded checkpoint's layout, how each target is served, its
dtype and device, which parameters train and are stored, how the rings start, and the
engine's caching policy: a ``hf_rpg.runtime.plan.Plan``, computed once and read by the
engine, the loader and the DoF report. Nothing after this step reads the config.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct

import torch
from torch import nn

from ..errors import RPGConfigError
from ..format.manifest import Layout, RingLayout, TargetLayout
from ..runtime.plan import ADDITIVE, LORA, LOWRANK, MERGED, REPLACE, Plan, Serving, TargetPlan
from ..spec.generator import MAX_POSITIONS
from ..spec.lowrank_shapes import LORA_VERSION, LOWRANK_KINDS, LOWRANK_VERSION, features, gained_numel, generated_shape
from .config import AUTO_INDEX_CACHE_ELEMENTS, AUTO_RANK, AUTO_RANK_ELEMENTS_PER_DOF, RPGConfig
from .targets import FoundTarget, select


def make_plan(
    model: nn.Module, config: RPGConfig, device: torch.device | None, on_meta: bool
) -> tuple[list[FoundTarget], Plan]:
    """Apply time: the targets ``config`` picks in ``model`` (``select``; targets hf_rpg cannot
    serve are refused there) and their plan, with a fresh layout (rings assigned, gains
    measured, ranks picked, rings sized). ``on_meta``: the model is on the meta device."""
    if on_meta:
        check_meta_config(config, device)
    targets, rings, stored, gains = select(model, config)
    config = _settle_update(config, targets)
    layout = build_layout(targets, rings, gains, config, _ranks(targets, config))
    ring_init = "zeros" if config.is_delta else config.init
    return targets, plan_for_layout(model, config, layout, targets, device, stored, ring_init)


def plan_for_layout(
    model: nn.Module,
    config: RPGConfig,
    layout: Layout,
    targets: list[FoundTarget],
    device: torch.device | None,
    stored: set[int],
    ring_init: str = "empty",
) -> Plan:
    """The plan of ``targets`` laid out by ``layout`` (a fresh one, or a checkpoint's).
    ``device``: where weights of targets on the meta device will live (None: each target's
    own device); ``stored``: the ids of ``stored_parameter_ids``."""
    delta = config.is_delta
    plans = []
    for entry, target in zip(layout.targets, targets, strict=True):
        owner = target.owners[0]
        plans.append(
            TargetPlan(
                entry=entry,
                serving=_serving(target, config, entry),
                dtype=target.param.dtype if target.quantization is None else torch.float32,
                device=device if device is not None and target.param.is_meta else target.param.device,
                base_slot=(owner.module, owner.attr) if delta else None,
                rowwise=_rowwise(target, config) and entry.rank is None,
            )
        )
    return Plan(
        layout=layout,
        targets=tuple(plans),
        seed=config.seed,
        delta=delta,
        cache_indices=_caches_indices(config, layout),
        regenerate=_regenerates(config, layout),
        inference_cache=config.inference_cache,
        ring_init=ring_init,
        ring_dtype=config.torch_ring_dtype,
        # by name: wrappers such as FSDP replace the Parameter objects, never their names
        stored_names=frozenset(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in stored),
        # "train" keeps the model's own requires_grad; a narrower policy unfreezes what it picked
        unfreeze_stored=config.resolved_other_parameters != "train" or config.modules_to_save is not None,
    )


def check_meta_config(config: RPGConfig, device: torch.device | None) -> None:
    """Refuse what a model on the meta device cannot do: no device, delta mode, ``init="project"``."""
    if device is None:
        raise RPGConfigError(
            "the model is on the meta device: pass device= (where the rings, the parameters that are not "
            "generated and the buffers are materialised), e.g. apply_rpg(model, config, device='cpu')"
        )
    if torch.device(device).type == "meta":
        raise RPGConfigError("device='meta' is not a place to materialise anything; pass e.g. device='cpu'")
    if config.is_delta:
        raise RPGConfigError(
            "mode='delta' needs the pretrained weights, and a model on the meta device has none; load it first, "
            "or use mode='replace'"
        )
    if config.init == "project":
        raise RPGConfigError("init='project' fits the model's weights, and a model on the meta device has none")


def _settle_update(config: RPGConfig, targets: list[FoundTarget]) -> RPGConfig:
    """``update="auto"``: full rank where ``rpg-lora-v1`` would generate fewer values than the
    ring has entries (a small model at a large ``dof``), which could not hold the budget."""
    if config.update != "auto" or config.resolved_update != "lora":
        return config
    ranks = _uniform_ranks(targets, config)
    elements = sum(generated_numel(t, r, LORA_VERSION) for t, r in zip(targets, ranks, strict=True))
    return config if elements >= config.dof else dataclasses.replace(config, update="full")


def _lowrank_eligible(target: FoundTarget) -> bool:
    """A rank applies to the ``weight`` of linear layers (dense or quantized, one owner)."""
    return (
        target.kind in LOWRANK_KINDS
        and len(target.owners) == 1
        and target.owners[0].attr == "weight"
        and len(target.shape) == 2
    )


def _ranks(targets: list[FoundTarget], config: RPGConfig) -> list[int | None]:
    """Each target's low-rank factor rank, or None for a full-rank update (``rank``, with
    ``rank_pattern`` overriding it for the layers its keys match)."""
    ranks = _uniform_ranks(targets, config)
    if not config.rank_pattern:
        return ranks
    for i, target in enumerate(targets):
        key = rank_pattern_key(config.rank_pattern, target.layer_name or target.name)
        if key is not None and _lowrank_eligible(target):
            ranks[i] = config.rank_pattern[key]
    return ranks


def rank_pattern_key(rank_pattern: dict[str, int], name: str) -> str | None:
    """The first ``rank_pattern`` key matching ``name`` or a suffix of it (PEFT's rule)."""
    for key in rank_pattern:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def _uniform_ranks(targets: list[FoundTarget], config: RPGConfig) -> list[int | None]:
    rank = config.resolved_rank
    if rank is None or not config.is_delta:  # replace mode generates whole weights
        return [None] * len(targets)
    eligible = [_lowrank_eligible(t) for t in targets]
    if rank == "auto":
        outs = sum(features(t.shape, t.kind)[1] for t, ok in zip(targets, eligible, strict=True) if ok)
        rank = AUTO_RANK
        if isinstance(config.dof, int) and outs:
            rank = max(rank, math.ceil(AUTO_RANK_ELEMENTS_PER_DOF * config.dof / outs))
        return [min(rank, *features(t.shape, t.kind)) if ok else None for t, ok in zip(targets, eligible, strict=True)]
    return [rank if ok else None for ok in eligible]


def _rowwise(target: FoundTarget, config: RPGConfig) -> bool:
    """Untied plain embeddings can generate only the rows a batch looks up."""
    if not config.embedding_rows or len(target.owners) != 1:
        return False
    owner = target.owners[0]
    module = owner.module
    return (
        owner.attr == "weight"
        and isinstance(module, nn.Embedding)
        # only nn.Embedding's own forward: subclasses (scaled, learned positions) run theirs
        and type(module).forward is nn.Embedding.forward
        and target.quantization is None
        and module.max_norm is None
        and not module.sparse
        and not module.scale_grad_by_freq
    )


def _caches_indices(config: RPGConfig, layout: Layout) -> bool:
    if config.index_cache == "auto":
        # low-rank factors are small: their indices are computed on the fly, nothing is kept
        if all(t.rank is not None for t in layout.targets):
            return False
        return layout.generated_elements <= AUTO_INDEX_CACHE_ELEMENTS
    return config.index_cache == "int32"


def _regenerates(config: RPGConfig, layout: Layout) -> bool:
    if config.weights_in_backward == "auto":
        return layout.generated_elements > AUTO_INDEX_CACHE_ELEMENTS
    return config.weights_in_backward == "regenerate"


def _serving(target: FoundTarget, config: RPGConfig, entry: TargetLayout) -> Serving:
    """How a target is served (see ``hf_rpg.runtime.plan``)."""
    if not config.is_delta:
        return REPLACE
    if entry.update == LORA_VERSION:
        return LORA
    if entry.rank is not None:
        return LOWRANK
    return ADDITIVE if target.quantization is not None else MERGED


def allocate_dof(dof: int | float, elements: dict[str, int]) -> dict[str, int]:
    """Ring sizes for a DoF budget: a float is a fraction of each ring's elements; an int
    is split in proportion to the elements (largest remainder, at least one entry each)."""
    total = sum(elements.values())
    if isinstance(dof, float):
        return {name: max(1, min(p, round(dof * p))) for name, p in elements.items()}
    if dof > total:
        raise RPGConfigError(
            f"dof={dof} is larger than the {total} targeted elements; use at most {total} or a float fraction in (0, 1]"
        )
    if dof < len(elements):
        raise RPGConfigError(f"dof={dof} is smaller than the number of rings ({len(elements)}); each needs one entry")
    # Each ring gets one entry first, the rest is shared by largest remainder, capped at p.
    sizes = dict.fromkeys(elements, 1)
    rest = dof - len(elements)
    shares = {n: rest * (p - 1) / max(1, total - len(elements)) for n, p in elements.items()}
    for name, share in shares.items():
        sizes[name] += int(share)
    leftover = dof - sum(sizes.values())
    for name in sorted(shares, key=lambda n: (-(shares[n] - int(shares[n])), n)):
        if leftover == 0:
            break
        if sizes[name] < elements[name]:
            sizes[name] += 1
            leftover -= 1
    return sizes


def low_rank_update(config: RPGConfig) -> str:
    """The version string of the config's low-rank update kind (for the targets with a rank)."""
    return LORA_VERSION if config.resolved_update == "lora" else LOWRANK_VERSION


def generated_numel(target: FoundTarget, rank: int | None, update: str = LOWRANK_VERSION) -> int:
    """Elements the ring generates for ``target``: the tensor, or its low-rank factor(s)."""
    return target.numel if rank is None else math.prod(generated_shape(target.shape, target.kind, rank, update))


def ring_scales(
    targets: list[FoundTarget],
    rings: list[str],
    gains: list[float],
    ranks: list[int | None] | None = None,
    update: str = LOWRANK_VERSION,
) -> dict[str, float]:
    """RMS of the absolute gains of each ring's targets, weighted by the values each gain scales."""
    ranks = ranks if ranks is not None else [None] * len(targets)
    sums: dict[str, list[float]] = {}
    for target, ring, gain, rank in zip(targets, rings, gains, ranks, strict=True):
        acc = sums.setdefault(ring, [0.0, 0.0])
        numel = gained_numel(target.shape, target.kind, rank, update if rank is not None else None)
        acc[0] += numel * gain * gain
        acc[1] += numel
    return {ring: _round32(math.sqrt(acc[0] / acc[1])) for ring, acc in sums.items()}


def _round32(value: float) -> float:
    """Round through float32, so that the JSON value and the tensor value agree exactly."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def build_layout(
    targets: list[FoundTarget],
    rings: list[str],
    gains: list[float],
    config: RPGConfig,
    ranks: list[int | None] | None = None,
) -> Layout:
    """Lay the targets out on their rings in discovery order and size the rings.

    ``gains`` are absolute (the scale each tensor expects); the manifest stores them
    relative to their ring's scale. ``ranks``: each target's low-rank factor rank, or
    ``None`` for a full-rank target (all of them when ``ranks`` is ``None``).
    """
    ranks = ranks if ranks is not None else [None] * len(targets)
    update = low_rank_update(config)
    scales = ring_scales(targets, rings, gains, ranks, update)
    # delta mode: a float gain scales the update (ring values stay on the weights' scale)
    multiplier = config.gain if config.is_delta and isinstance(config.gain, float) else 1.0
    offsets: dict[str, int] = {}
    entries = []
    for target, ring, gain, rank in zip(targets, rings, gains, ranks, strict=True):
        offset = offsets.get(ring, 0)
        numel = generated_numel(target, rank, update)
        offsets[ring] = offset + numel
        tied = tuple(o.path for o in target.owners if o.path != target.name)
        relative = _round32(multiplier * gain / scales[ring])
        kind = update if rank is not None else None
        entries.append(TargetLayout(target.name, target.shape, ring, offset, relative, target.kind, tied, rank, kind))
    for ring, elements in offsets.items():
        if elements > MAX_POSITIONS:
            raise RPGConfigError(f"ring {ring!r} would generate {elements} elements; at most 2**62 are supported")
    sizes = allocate_dof(config.dof, offsets)
    ring_layouts = {name: RingLayout(name, sizes[name], offsets[name], scales[name]) for name in offsets}
    return Layout(rings=ring_layouts, targets=entries)


def base_weights(
    plan: Plan, targets: list[FoundTarget]
) -> list[tuple[str, tuple[int, ...], torch.Tensor, nn.Module | None]]:
    """``(name, shape, weight, layer)`` of every target's base, what ``base_fingerprint`` samples
    (taken before wrapping and before any sharding: saving under FSDP then needs no gather)."""
    return [(e.name, e.shape, t.param, t.layer) for e, t in zip(plan.layout.targets, targets, strict=True)]
