"""``rpg-lora-v1``: the ring generates **both** factors of a LoRA-shaped delta update.

A target with ``rank = r`` (a linear layer, ``y = x Wᵀ + b`` with ``W`` of shape
``[out, in]``) gets the update ``ΔW = F (P + A)``:

- The ring generates one block ``v`` of ``r · (out + in)`` values by ``rpg-v1`` at the
  target's positions, **without** the target's gain (as if its gain were 1).
- ``F = g · v[0 : out·r]`` viewed ``[out, r]`` (row-major), ``g`` the manifest gain: the
  factor on the weights' scale, exactly as ``rpg-lowrank-v1``'s factor.
- ``A = (sqrt(8) / r) · v[out·r :]`` viewed ``[r, in]`` (row-major): a ring value of 1 moves
  an entry of the projection by one entry of ``P``.
- ``P`` is ``rpg-lowrank-v1``'s fixed sign projection of the target (``hf_rpg.spec.lowrank``:
  entries ``±sqrt(8) / r`` under ``derive_key(seed, "rpg-lowrank-v1/" + target name)``).

The layer computes ``x Wᵀ + (x (P + A)ᵀ) Fᵀ``: two thin products, as LoRA does. With the
ring at zero ``F = 0`` and the update is exactly zero; the first steps train ``F`` through
``P`` (``rpg-lowrank-v1`` is this with ``A = 0``), and ``A`` trains once ``F`` has moved, as
LoRA's ``A`` does once ``B`` has. A ring's scale counts the ``F`` values of its
``rpg-lora-v1`` targets only (the gain scales only those). ``docs/generator.md`` is the full
specification; the golden vectors in ``tests/test_lora_update.py`` pin it.
"""

from __future__ import annotations

import math

import torch

from .lowrank import delta_weight
from .lowrank_shapes import REFERENCE_RANK, features


def a_scale(rank: int) -> float:
    """The fixed scale of ``A``: ``sqrt(8) / rank`` (the scale of ``P``'s entries)."""
    return math.sqrt(REFERENCE_RANK) / rank


def part_scales(
    shape: tuple[int, ...], kind: str, rank: int, gain: float, *, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """The per-value scale of a target's generated block: ``gain`` on ``F``'s values, ``a_scale`` on ``A``'s."""
    in_features, out_features = features(shape, kind)
    scales = torch.empty(rank * (out_features + in_features), dtype=dtype, device=device)
    scales[: out_features * rank] = gain
    scales[out_features * rank :] = a_scale(rank)
    return scales


def split_factors(
    block: torch.Tensor, shape: tuple[int, ...], kind: str, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, A)`` (views ``[out, r]`` and ``[r, in]``) of a block already scaled by ``part_scales``."""
    in_features, out_features = features(shape, kind)
    split = out_features * rank
    return block[:split].view(out_features, rank), block[split:].view(rank, in_features)


def lora_delta_weight(
    block: torch.Tensor, proj: torch.Tensor, shape: tuple[int, ...], kind: str, rank: int
) -> torch.Tensor:
    """The dense update ``F (P + A)`` in the layout of the layer's own weight."""
    factor, a = split_factors(block, shape, kind, rank)
    return delta_weight(factor, proj.to(block.dtype) + a, kind)
