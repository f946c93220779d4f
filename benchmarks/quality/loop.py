"""The training loop's parts every run and the ViT pretraining share: the schedule, the evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .protocol import WARMUP_FRACTION


def schedule(total: int) -> Callable[[int], float]:
    warmup = max(1, round(WARMUP_FRACTION * total))

    def factor(step: int) -> float:  # step = number of optimizer steps already taken
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, split, collate, chunks) -> tuple[float, float]:
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for idx in chunks:
        batch = collate(split, idx)
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * len(idx)
        n += len(idx)
    model.train()
    return correct / n, loss_sum / n
