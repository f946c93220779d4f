"""The layout manifest: where every generated tensor lives on which ring, and DoF accounting.

The manifest is saved with each checkpoint and loading follows it, not the order in which
a model happens to register its modules.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULT_RING, RING_NAME_PATTERN, RPGConfig
from .describe import is_int as _is_int
from .describe import short
from .errors import RPGConfigError, RPGManifestMismatchError
from .generator import MAX_POSITIONS
from .lowrank import LOWRANK_KINDS, LOWRANK_VERSION, SUPPORTED_LOWRANK, factor_shape
from .targets import FoundTarget, matches

# Manifest fields are read strictly: a float offset or a string shape is refused rather
# than rounded or iterated, since a silently coerced value would generate other weights.
_MISSING = object()


_short = functools.partial(short, limit=120)


def _where(kind: str, data: dict[str, Any]) -> str:
    """How an error names a manifest entry: by its name when it has a usable one."""
    name = data.get("name")
    return f"manifest {kind} {name!r}" if isinstance(name, str) and name else f"manifest {kind} entry {_short(data)}"


def _field(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, where: str, default: Any = _MISSING
) -> Any:
    if key not in data:
        if default is _MISSING:
            raise RPGManifestMismatchError(f"{where} lacks the field {key!r}")
        return default
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RPGManifestMismatchError(f"{where}: {key!r} must be {what}, got {_short(value)} ({type(value).__name__})")
    return value


def _name(data: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> str:
    value = _field(data, key, str, "a non-empty string", where, default)
    if not value:
        raise RPGManifestMismatchError(f"{where}: {key!r} must be a non-empty string")
    return value


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = _field(data, key, int, "a non-negative int", where)
    if value < 0:
        raise RPGManifestMismatchError(f"{where}: {key!r} must be a non-negative int, got {value}")
    return value


def _finite(data: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> float:
    value = _field(data, key, (int, float), "a finite number", where, default)
    if _is_int(value):
        if abs(value) > 2**53:  # no gain or scale is near this, and float() of a huge int overflows
            raise RPGManifestMismatchError(f"{where}: {key!r} must be a finite number, got {value}")
        value = float(value)
    if not math.isfinite(value):
        raise RPGManifestMismatchError(f"{where}: {key!r} must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class TargetLayout:
    """One generated tensor: elements ``[offset, offset + numel)`` of its ring's positions.

    ``shape`` is the shape of the model's tensor. With a ``rank`` (delta mode, linear
    layers: ``rpg-lowrank-v1``, see ``hf_rpg.lowrank``) the ring generates the factor ``F``
    of shape ``generated_shape = [out, rank]`` and the update is ``F P``.
    """

    name: str
    shape: tuple[int, ...]
    ring: str
    offset: int
    gain: float
    kind: str = "parameter"
    tied: tuple[str, ...] = ()
    rank: int | None = None

    @property
    def generated_shape(self) -> tuple[int, ...]:
        """Shape of what the ring generates: the tensor itself, or its low-rank factor."""
        return self.shape if self.rank is None else factor_shape(self.shape, self.kind, self.rank)

    @property
    def numel(self) -> int:
        """Number of generated elements (the product of ``generated_shape``)."""
        return math.prod(self.generated_shape)

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry as a JSON-serialisable dict."""
        data: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "ring": self.ring,
            "offset": self.offset,
            "gain": self.gain,
            "kind": self.kind,
        }
        if self.tied:
            data["tied"] = list(self.tied)
        if self.rank is not None:
            data["rank"] = self.rank
            data["update"] = LOWRANK_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetLayout:
        """Parse and check a manifest entry (``RPGManifestMismatchError`` when malformed)."""
        where = _where("target", data)
        shape = _field(data, "shape", list, "a list of non-negative ints", where)
        if not all(_is_int(s) and s >= 0 for s in shape):
            raise RPGManifestMismatchError(f"{where}: 'shape' must be a list of non-negative ints, got {_short(shape)}")
        tied = data.get("tied", [])
        if not isinstance(tied, list) or not all(isinstance(t, str) and t for t in tied):
            raise RPGManifestMismatchError(f"{where}: 'tied' must be a list of parameter names, got {_short(tied)}")
        kind = _name(data, "kind", where, default="parameter")
        rank = None
        if "rank" in data or "update" in data:
            update = _name(data, "update", where)
            if update not in SUPPORTED_LOWRANK:
                raise RPGManifestMismatchError(
                    f"{where}: update {update!r} is not supported by this hf_rpg (it knows "
                    f"{', '.join(SUPPORTED_LOWRANK)}); upgrade hf_rpg to load this checkpoint"
                )
            rank = _count(data, "rank", where)
            if rank < 1 or kind not in LOWRANK_KINDS or len(shape) != 2:
                raise RPGManifestMismatchError(
                    f"{where}: a low-rank target needs rank >= 1, a 2-D shape and kind in {LOWRANK_KINDS}, got "
                    f"rank {rank}, shape {_short(shape)}, kind {kind!r}"
                )
        return cls(
            name=_name(data, "name", where),
            shape=tuple(shape),
            ring=_name(data, "ring", where),
            offset=_count(data, "offset", where),
            gain=_finite(data, "gain", where),
            kind=kind,
            tied=tuple(tied),
            rank=rank,
        )


@dataclass(frozen=True)
class RingLayout:
    """One ring: ``size`` trainable entries generating ``elements`` weights.

    ``scale`` is the element-weighted RMS of its targets' absolute gains. Ring values live
    on that scale (random init draws ``scale * N(0, 1)``) and each target's manifest gain
    is relative to it, so the ring sits on the same scale as the weights it generates and
    optimizer settings (learning rate, weight decay) carry over from dense training.
    """

    name: str
    size: int
    elements: int
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry as a JSON-serialisable dict."""
        return {"name": self.name, "size": self.size, "elements": self.elements, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RingLayout:
        """Parse and check a manifest ring entry (``RPGManifestMismatchError`` when malformed)."""
        where = _where("ring", data)
        ring = cls(
            name=_name(data, "name", where),
            size=_count(data, "size", where),
            elements=_count(data, "elements", where),
            scale=_finite(data, "scale", where, default=1.0),
        )
        if not RING_NAME_PATTERN.fullmatch(ring.name) or not 1 <= ring.size <= ring.elements <= MAX_POSITIONS:
            raise RPGManifestMismatchError(
                f"{where} is invalid: need a name of 1-64 letters, digits, '_' or '-' and "
                f"1 <= size <= elements <= 2**62"
            )
        return ring


@dataclass
class Layout:
    """Every ring and target of an RPG model, in generation order."""

    rings: dict[str, RingLayout]
    targets: list[TargetLayout]
    _by_name: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: i for i, t in enumerate(self.targets)}
        self._check_consistency()

    def _check_consistency(self) -> None:
        if len(self._by_name) != len(self.targets):
            raise RPGManifestMismatchError("manifest lists a target name twice")
        for ring in self.rings.values():
            spans = sorted((t.offset, t.numel, t.name) for t in self.targets if t.ring == ring.name)
            position = 0
            for offset, numel, name in spans:
                if offset != position:
                    raise RPGManifestMismatchError(
                        f"manifest target {name!r} starts at offset {offset} of ring {ring.name!r}, expected "
                        f"{position}: the targets of a ring must tile its positions without gaps or overlaps"
                    )
                position += numel
            if position != ring.elements:
                raise RPGManifestMismatchError(
                    f"manifest ring {ring.name!r} claims {ring.elements} elements but its targets cover {position}"
                )
        for target in self.targets:
            if target.ring not in self.rings:
                raise RPGManifestMismatchError(f"manifest target {target.name!r} uses unknown ring {target.ring!r}")

    def index_of(self, name: str) -> int:
        """Position of the target ``name`` in ``targets``."""
        return self._by_name[name]

    def ring_targets(self, ring: str) -> list[int]:
        """Indices of the targets on ``ring``, by offset."""
        ids = [i for i, t in enumerate(self.targets) if t.ring == ring]
        return sorted(ids, key=lambda i: self.targets[i].offset)

    @property
    def ring_dof(self) -> int:
        """Total size of the rings."""
        return sum(r.size for r in self.rings.values())

    @property
    def generated_elements(self) -> int:
        """Total number of generated elements."""
        return sum(r.elements for r in self.rings.values())

    def to_dict(self) -> dict[str, Any]:
        """The manifest as saved in ``rpg_config.json``."""
        return {
            "rings": [r.to_dict() for r in self.rings.values()],
            "targets": [t.to_dict() for t in self.targets],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Parse and check a manifest (``RPGManifestMismatchError`` on the first problem)."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("rings"), list)
            or not isinstance(data.get("targets"), list)
        ):
            raise RPGManifestMismatchError("manifest must be an object with lists 'rings' and 'targets'")
        if not data["rings"] or not data["targets"]:
            raise RPGManifestMismatchError("manifest must list at least one ring and one target")
        for entry in data["rings"] + data["targets"]:
            if not isinstance(entry, dict):
                raise RPGManifestMismatchError(f"manifest entry {_short(entry)} is not an object")
        rings = [RingLayout.from_dict(r) for r in data["rings"]]
        if len({r.name for r in rings}) != len(rings):
            raise RPGManifestMismatchError("manifest lists a ring name twice")
        return cls(rings={r.name: r for r in rings}, targets=[TargetLayout.from_dict(t) for t in data["targets"]])


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
