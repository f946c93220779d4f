"""How every quality benchmark picks a learning rate: the best seed-0 validation accuracy on a
grid, and the grid widened past the edge its pick lies at until the pick is interior."""

from __future__ import annotations

import math
from typing import Any

MAX_WIDENINGS = 3  # a grid is widened at most this many steps past its edges


def pick_lr(runs: list[dict[str, Any]]) -> float | None:
    """The lr of the best seed-0 validation accuracy among finite runs (ties: lower validation
    loss, then lower lr); None when there is none."""
    seed0 = [r for r in runs if r["seed"] == 0 and r.get("finite", True)]
    if not seed0:
        return None
    return min(seed0, key=lambda r: (-r["val_acc"], r["val_loss"], r["lr"]))["lr"]


def widen(lrs: list[float], picked: float) -> float | None:
    """One more lr a grid step beyond the edge that ``picked`` lies at, else None (interior)."""
    ordered = sorted(lrs)
    if len(ordered) < 2:
        return None
    step = ordered[1] / ordered[0]
    if math.isclose(picked, ordered[0]):
        return ordered[0] / step
    if math.isclose(picked, ordered[-1]):
        return ordered[-1] * step
    return None
