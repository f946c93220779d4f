"""The layout manifest: where every generated tensor lives on which ring.

The manifest is saved with each checkpoint and loading follows it, not the order in which
a model happens to register its modules.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..describe import is_int as _is_int
from ..describe import short
from ..errors import RPGManifestMismatchError
from ..spec.generator import MAX_POSITIONS
from ..spec.lowrank_shapes import LOWRANK_KINDS, LOWRANK_VERSION, SUPPORTED_LOWRANK, generated_shape

# Ring names become safetensors keys and ParameterDict keys: keep them plain.
RING_NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-]{1,64}")

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
    layers) ``update`` names the low-rank update kind: ``rpg-lowrank-v1`` (``hf_rpg.spec.lowrank``:
    the ring generates the factor ``F``, ``[out, rank]``, and the update is ``F P``) or
    ``rpg-lora-v1`` (``hf_rpg.spec.lora``: the ring generates ``F`` and ``A`` as one block of
    ``rank · (out + in)`` values, and the update is ``F (P + A)``).
    """

    name: str
    shape: tuple[int, ...]
    ring: str
    offset: int
    gain: float
    kind: str = "parameter"
    tied: tuple[str, ...] = ()
    rank: int | None = None
    update: str | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.update is None:  # a rank alone: rpg-lowrank-v1
            object.__setattr__(self, "update", LOWRANK_VERSION)

    @property
    def generated_shape(self) -> tuple[int, ...]:
        """Shape of what the ring generates: the tensor itself, or its low-rank factor(s)."""
        if self.rank is None:
            return self.shape
        return generated_shape(self.shape, self.kind, self.rank, self.update)

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
            data["update"] = self.update
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
        rank = update = None
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
            update=update,
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
