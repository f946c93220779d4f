"""What ``rpg-lowrank-v1`` is and which shapes it gives (its version string, the kinds of target
it applies to, the factor's shape), apart from how it computes (``lowrank``): the checkpoint
format and the planner read these without reaching the kernels."""

from __future__ import annotations

LOWRANK_VERSION = "rpg-lowrank-v1"
SUPPORTED_LOWRANK = (LOWRANK_VERSION,)
# Kinds of target a rank applies to (their weight is a 2-D linear map).
LOWRANK_KINDS = ("linear", "conv1d_transposed")
# The rank at which P's scale sqrt(REFERENCE_RANK) / r is 1 / sqrt(r) (see the module docstring).
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
    """Shape of the generated factor ``F``: ``[out, rank]``."""
    return features(shape, kind)[1], rank
