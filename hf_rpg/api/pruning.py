"""Magnitude pruning of the ring(s): the paper's "the ring can be further pruned".

``prune_ring`` sets the smallest-magnitude ring entries to zero, once. No mask is kept:
training afterwards updates the zeroed entries like any other (re-prune after training to
keep them at zero). Every generated weight that reads a zeroed entry becomes zero, so
pruning a fraction ``f`` of the ring zeroes about ``f`` of the generated weights. Save a
pruned ring with ``save_pretrained(..., ring_storage="sparse")`` to drop the zeros from disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ..errors import RPGConfigError

if TYPE_CHECKING:
    from .model import RPGModel


def prune_ring(
    model: RPGModel, *, fraction: float | None = None, amount: int | None = None, rings: Iterable[str] | None = None
) -> dict[str, int]:
    """Zero the smallest-magnitude entries of the ring(s) of ``model``, in place (one shot).

    Args:
        model: An ``RPGModel``.
        fraction: Share of the entries to zero, in ``[0, 1]``.
        amount: Number of entries to zero, in ``[0, total ring size]`` (instead of ``fraction``).
        rings: Names of the rings to prune (default: all; a string is one ring name). The entries of the
            chosen rings are ranked together by magnitude (ties broken by position).

    Returns:
        Ring name -> number of entries now zero that were pruned by this call.
    """
    if (fraction is None) == (amount is None):
        raise RPGConfigError("prune_ring needs exactly one of fraction= (a share) or amount= (a count)")
    names = list(model.rpg_rings) if rings is None else [rings] if isinstance(rings, str) else list(rings)
    unknown = [n for n in names if n not in model.rpg_rings]
    if unknown or not names:
        raise RPGConfigError(f"rings must name rings of the model ({', '.join(model.rpg_rings)}), got {names!r}")
    total = sum(model.rpg_rings[n].numel() for n in names)
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise RPGConfigError(f"fraction must be a number in [0, 1], got {fraction!r}")
        amount = round(fraction * total)
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= total:
        raise RPGConfigError(f"amount must be an int in [0, {total}] (the ring entries), got {amount!r}")
    magnitudes = torch.cat([model.rpg_rings[n].detach().abs().flatten().float().cpu() for n in names])
    # a stable sort: equal magnitudes are pruned in position order, the same on every run
    order = torch.sort(magnitudes, stable=True).indices[:amount]
    pruned = torch.zeros(total, dtype=torch.bool)
    pruned[order] = True
    counts, start = {}, 0
    with torch.no_grad():
        for name in names:
            ring = model.rpg_rings[name]
            mask = pruned[start : start + ring.numel()].to(ring.device)
            start += ring.numel()
            ring.masked_fill_(mask, 0.0)  # bumps the ring's version: cached weights are regenerated
            counts[name] = int(mask.sum())
    return counts


__all__ = ["prune_ring"]
