"""Candidate structures for a win at <= 1k trainable numbers, measured here before any of them
becomes an update kind of hf_rpg (issue 17, item 5: each new kind then gets a version string,
a spec section and golden vectors; a candidate that loses never does).

``cand-rpg-lora``: the ring generates **both** factors of a LoRA-shaped update. For a
``q_proj``/``v_proj`` target ``W`` (``[out, in]``) and rank ``r``:

    ΔW = F (P + A),   F = g · ring[π(p)] · s(p)     (out · r positions)
                      A = (sqrt(8) / r) · ring[π(p)] · s(p)   (r · in positions, after F's)

with ``π`` and ``s`` the ``rpg-v1`` permutation and signs over all the targets' positions (one
key, ``derive_key(seed, "cand-rpg-lora")``), ``P`` the fixed sign projection of
``rpg-lowrank-v1`` (entries ``±sqrt(8)/r``) and ``g`` the target's relative gain as the library
computes it for ``F`` (the weight's standard deviation over the RMS of those of every target,
weighted by their factors' sizes: ring values live on the weights' scale).

The ring starts at zero, so the update starts at zero. As in ``rpg-lowrank-v1`` (which is this
with ``A = 0``), the first steps train ``F`` through ``P``; ``A`` trains once ``F`` is
non-zero, as LoRA's ``A`` does once ``B`` has moved. ``A``'s scale makes a ring value of 1
move an entry of the projection by one entry of ``P``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hf_rpg.spec.generator import derive_key, signed_indices
from hf_rpg.spec.lowrank import projection

# Runs of a candidate are keyed by its name and config, not by the numbers it computes: a change
# to what a candidate computes must give it a new name (``cand-rpg-lora-2``), never reuse one.
CANDIDATES: dict[str, dict[str, int]] = {"cand-rpg-lora": {"rank": 8}}
KEY_NAME = "cand-rpg-lora"


class RingFactors(nn.Module):
    """The shared ring and every target's signed indices into ``[ring, -ring]``."""

    def __init__(self, ring_size: int, total: int, seed: int):
        super().__init__()
        self.ring = nn.Parameter(torch.zeros(ring_size))
        positions = torch.arange(total, dtype=torch.int64)
        index = signed_indices(positions, total, ring_size, derive_key(seed, KEY_NAME))
        self.register_buffer("index", index.to(torch.int64), persistent=False)

    def values(self, start: int, stop: int) -> torch.Tensor:
        """The generated values of positions ``[start, stop)`` (before their tensor's gain)."""
        return torch.cat([self.ring, -self.ring])[self.index[start:stop]]


class LoRAFromRing(nn.Module):
    """A frozen linear layer plus ``x (P + A)ᵀ Fᵀ``, both factors read from the shared ring."""

    def __init__(
        self, base: nn.Linear, factors: RingFactors, offset: int, rank: int, gain: float, projection_: torch.Tensor
    ):
        super().__init__()
        self.base = base
        object.__setattr__(self, "factors", factors)  # shared: registered once, on the model
        self.offset, self.rank, self.gain = offset, rank, gain
        self.a_gain = math.sqrt(8) / rank
        self.register_buffer("projection", projection_, persistent=False)

    @property
    def positions(self) -> int:
        return self.rank * (self.base.out_features + self.base.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_f, in_f, r = self.base.out_features, self.base.in_features, self.rank
        split = self.offset + out_f * r
        factor = self.factors.values(self.offset, split).view(out_f, r) * self.gain
        a = self.factors.values(split, split + r * in_f).view(r, in_f) * self.a_gain
        update = F.linear(F.linear(x, (self.projection + a).to(x.dtype)), factor.to(x.dtype))
        return self.base(x) + update


def apply_candidate(model: nn.Module, method: str, budget: int, seed: int, target_leaves: list[str]) -> int:
    """Wrap ``model``'s targets in place with ``method`` (every other parameter frozen); the
    number of generated positions."""
    model.requires_grad_(False)
    rank = CANDIDATES[method]["rank"]
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_leaves
    ]
    total = sum(rank * (m.out_features + m.in_features) for _, m in targets)
    device = targets[0][1].weight.device
    factors = RingFactors(budget, total, seed).to(device)  # the benchmark's --device cuda
    model.rpg_candidate_factors = factors
    stds = [float(m.weight.detach().double().std()) for _, m in targets]
    sizes = [m.out_features * rank for _, m in targets]
    scale = math.sqrt(sum(n * g * g for n, g in zip(sizes, stds, strict=True)) / sum(sizes))
    offset = 0
    for (name, module), std in zip(targets, stds, strict=True):
        proj = projection(seed, f"{name}.weight", rank, module.in_features, device=device)
        wrapper = LoRAFromRing(module, factors, offset, rank, std / scale, proj)
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, wrapper)
        offset += wrapper.positions
    return total
