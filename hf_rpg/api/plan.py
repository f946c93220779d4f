"""From a config and the targets found in a model to the layout manifest: rings, DoF and scales.

Which ring each target draws from, how the DoF budget is shared between rings, and the
scale (gain) of each ring; the result is a ``hf_rpg.format.manifest.Layout``, which is what
a checkpoint stores and what loading follows.
"""

from __future__ import annotations

import math
import struct

from ..errors import RPGConfigError
from ..format.manifest import Layout, RingLayout, TargetLayout
from ..spec.generator import MAX_POSITIONS
from ..spec.lowrank import factor_shape
from .config import DEFAULT_RING, RPGConfig
from .targets import FoundTarget, matches


def assign_rings(targets: list[FoundTarget], config: RPGConfig) -> list[str]:
    """The ring of each target: the first ``config.rings`` pattern it matches, else default."""
    if config.rings is None:
        return [DEFAULT_RING] * len(targets)
    assigned = []
    for target in targets:
        ring = next(
            (name for name, pattern in config.rings.items() if any(matches(n, pattern) for n in target.match_names)),
            DEFAULT_RING,
        )
        assigned.append(ring)
    for name in config.rings:
        if name not in assigned:
            raise RPGConfigError(f"rings[{name!r}]={config.rings[name]!r} matches no targeted module or parameter")
    return assigned


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


def generated_numel(target: FoundTarget, rank: int | None) -> int:
    """Elements the ring generates for ``target``: the tensor, or its ``[out, rank]`` factor."""
    return target.numel if rank is None else math.prod(factor_shape(target.shape, target.kind, rank))


def ring_scales(
    targets: list[FoundTarget], rings: list[str], gains: list[float], ranks: list[int | None] | None = None
) -> dict[str, float]:
    """Element-weighted RMS of the absolute gains of each ring's targets."""
    ranks = ranks if ranks is not None else [None] * len(targets)
    sums: dict[str, list[float]] = {}
    for target, ring, gain, rank in zip(targets, rings, gains, ranks, strict=True):
        acc = sums.setdefault(ring, [0.0, 0.0])
        numel = generated_numel(target, rank)
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
    scales = ring_scales(targets, rings, gains, ranks)
    # delta mode: a float gain scales the update (ring values stay on the weights' scale)
    multiplier = config.gain if config.mode == "delta" and isinstance(config.gain, float) else 1.0
    offsets: dict[str, int] = {}
    entries = []
    for target, ring, gain, rank in zip(targets, rings, gains, ranks, strict=True):
        offset = offsets.get(ring, 0)
        numel = generated_numel(target, rank)
        offsets[ring] = offset + numel
        tied = tuple(o.path for o in target.owners if o.path != target.name)
        relative = _round32(multiplier * gain / scales[ring])
        entries.append(TargetLayout(target.name, target.shape, ring, offset, relative, target.kind, tied, rank))
    for ring, elements in offsets.items():
        if elements > MAX_POSITIONS:
            raise RPGConfigError(f"ring {ring!r} would generate {elements} elements; at most 2**62 are supported")
    sizes = allocate_dof(config.dof, offsets)
    ring_layouts = {name: RingLayout(name, sizes[name], offsets[name], scales[name]) for name in offsets}
    return Layout(rings=ring_layouts, targets=entries)
