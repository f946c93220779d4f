"""``rpg-lowrank-v1``: low-rank delta updates whose factor is generated from the ring.

A target with ``rank = r`` (a linear layer, ``y = x Wᵀ + b`` with ``W`` of shape
``[out, in]``) gets the update ``ΔW = F P``:

- ``F`` (``[out, r]``) is generated from the ring by ``rpg-v1`` exactly as a full-rank
  target of that shape would be (its positions on the ring, the ring's permutation, signs
  and the target's gain): it is what trains.
- ``P`` (``[r, in]``) is a fixed projection, ``P[k, j] = s(k · in + j) · sqrt(8) / r``,
  with the ``rpg-v1`` sign function ``s`` under the key ``derive_key(seed,
  "rpg-lowrank-v1/" + target name)``. It is regenerated from the seed whenever it is
  needed and never stored.

The layer computes ``x Wᵀ + ((x Pᵀ) Fᵀ)``: two thin matrix products, as LoRA does, so the
cost and memory follow the rank, not the layer's size, and no dense ``ΔW`` is ever made in
training. With the ring at zero the update is exactly zero.

The scale ``sqrt(8) / r`` is LoRA's ``alpha / r`` rule anchored at rank 8: Adam moves every
entry of ``F`` by about the learning rate per step, and the ``r`` terms of a row of ``F P``
add up coherently, so dividing by ``r`` makes a step move the layer's output by the same
amount at any rank, and one learning rate serves every rank (``rank="auto"`` grows the
rank with the ring). At rank 8 an entry of ``ΔW`` is as large as one ring value (a sum of 8
signed terms over ``sqrt(8)``), as in a full-rank target. ``docs/generator.md`` is the full
specification; the golden vectors in ``tests/test_lowrank.py`` pin it.
"""

from __future__ import annotations

import math

import torch

from .generator import derive_key, is_negative, reference_is_negative
from .lowrank_shapes import LOWRANK_VERSION, REFERENCE_RANK


def projection_key_name(target_name: str) -> str:
    """The name the projection's key is derived from (with the model's seed)."""
    return f"{LOWRANK_VERSION}/{target_name}"


def projection(
    seed: int,
    target_name: str,
    rank: int,
    in_features: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The fixed projection ``P`` (``[rank, in_features]``) of a low-rank target."""
    key = derive_key(seed, projection_key_name(target_name))
    scale = math.sqrt(REFERENCE_RANK) / rank
    # (not while torch.compile traces: the tensor ops below compile into the graph)
    if device is not None and torch.device(device).type != "cpu" and not torch.compiler.is_compiling():
        from . import index_kernels

        kernels = index_kernels.triton_for(device)
        if kernels is not None:  # one kernel instead of a dozen tensor ops
            return kernels.projection(key, rank, in_features, scale, dtype, device)
    positions = torch.arange(rank * in_features, dtype=torch.int64, device=device)
    negative = is_negative(positions, key)
    values = (1 - 2 * negative).to(dtype) * scale
    return values.view(rank, in_features)


def reference_projection_sign(seed: int, target_name: str, k: int, j: int, in_features: int) -> int:
    """Pure-Python sign (+1 / -1) of ``P[k, j]``: the executable form of the spec."""
    return 1 - 2 * reference_is_negative(k * in_features + j, derive_key(seed, projection_key_name(target_name)))


def delta_weight(factor: torch.Tensor, proj: torch.Tensor, kind: str) -> torch.Tensor:
    """The dense update ``F P`` in the layout of the layer's own weight."""
    delta = factor @ proj.to(factor.dtype)
    return delta.t().contiguous() if kind == "conv1d_transposed" else delta
