"""What the low-rank update kinds are and which shapes they give (their version strings, the
kinds of target they apply to, what the ring generates for a target), apart from how they
compute (``lowrank``, ``lora``): the checkpoint format and the planner read these without
reaching the kernels.

- ``rpg-lowrank-v1``: the ring generates the factor ``F`` (``[out, r]``); ``ΔW = F P``.
- ``rpg-lora-v1``: the ring generates both factors, ``F`` (``[out, r]``) then ``A``
  (``[r, in]``), as one block of ``r · (out + in)`` values; ``ΔW = F (P + A)``.
"""

from __future__ import annotations

import math

LOWRANK_VERSION = "rpg-lowrank-v1"
LORA_VERSION = "rpg-lora-v1"
SUPPORTED_LOWRANK = (LOWRANK_VERSION, LORA_VERSION)
# Kinds of target a rank applies to (their weight is a 2-D linear map).
LOWRANK_KINDS = ("linear", "conv1d_transposed")
# The rank at which P's scale sqrt(REFERENCE_RANK) / r is 1 / sqrt(r) (see hf_rpg.spec.lowrank).
REFERENCE_RANK = 8


def features(shape: tuple[int, ...], kind: str) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear target's weight of ``shape``
    (transformers' ``Conv1D`` stores its weight as ``[in, out]``)."""
    if len(shape) != 2:
        raise ValueError(f"a low-rank target needs a 2-D weight, got shape {list(shape)}")
    if kind == "conv1d_transposed":
        return shape[0], shape[1]
    return shape[1], shape[0]


def factor_shape(shape: tuple[int, ...], kind: str, rank: int) -> tuple[int, int]:
    """Shape of the factor ``F``: ``[out, rank]``."""
    return features(shape, kind)[1], rank


def generated_shape(shape: tuple[int, ...], kind: str, rank: int, update: str) -> tuple[int, ...]:
    """Shape of what the ring generates for a target of ``update``: ``F`` itself
    (``rpg-lowrank-v1``), or the flat block ``[F, A]`` of ``rank · (out + in)`` values (``rpg-lora-v1``)."""
    if update == LORA_VERSION:
        in_features, out_features = features(shape, kind)
        return (rank * (out_features + in_features),)
    return factor_shape(shape, kind, rank)


def gained_numel(shape: tuple[int, ...], kind: str, rank: int | None, update: str | None) -> int:
    """How many generated values the target's gain scales: all of them, except ``A`` of an
    ``rpg-lora-v1`` target (fixed scale): a ring's scale is the RMS of the gains over these."""
    if rank is None or update is None:
        return math.prod(shape)
    return math.prod(factor_shape(shape, kind, rank))
