"""Untied plain ``nn.Embedding`` s: generate only the rows a batch looks up.

A vocabulary table is the largest weight of many language models, and a batch reads a few
hundred of its rows: the ring indices of just those rows are looked up (``RingIndices.at``)
and gathered, with autograd to the ring (``WeightEngine.run_rowwise_embedding`` decides
when; this module does the gathering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..spec import index_encoding

if TYPE_CHECKING:
    from torch import nn

    from .index_cache import RingIndices
    from .plan import TargetPlan


def embedding_rows(
    module: nn.Embedding, target: TargetPlan, ring: torch.Tensor, indices: RingIndices, ids: torch.Tensor
) -> torch.Tensor:
    """The rows ``ids`` of the generated embedding table ``target``, with autograd to ``ring``."""
    entry = target.entry
    vocab, dim = entry.shape
    ids = _checked_ids(ids, vocab, indices.layout.rings[entry.ring].elements, entry.offset, dim)
    columns = torch.arange(dim, device=ids.device, dtype=torch.int64)
    positions = (ids.to(torch.int64).unsqueeze(-1) * dim + columns).add_(entry.offset)
    index = indices.at(entry.ring, positions.flatten())
    values = index_encoding.lookup(ring, index, indices.sign_bit_layout(entry.ring, ring.device))
    rows = (values * entry.gain).view(*ids.shape, dim)
    base = target.base()
    if base is not None:
        rows = (F.embedding(ids, base).to(rows.dtype) + rows).to(base.dtype)
    else:
        rows = rows.to(device=target.device, dtype=target.dtype)
    if module.padding_idx is not None and rows.requires_grad:
        # as F.embedding does: the padding row receives no gradient
        padding = (ids == module.padding_idx).unsqueeze(-1)
        rows = torch.where(padding, rows.detach(), rows)
    return rows


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _checked_ids(ids: torch.Tensor, vocab: int, elements: int, offset: int, dim: int) -> torch.Tensor:
    """Embedding ids checked against the table size on every path.

    On CPU in eager mode: F.embedding's own ``IndexError``. Elsewhere (CUDA, where a check
    would sync the host, or under torch.compile) an out-of-range id is mapped to a row past
    the ring's last position, so the index lookup fails (a device-side assert on CUDA, the
    compiled kernel's bounds check) instead of reading another tensor's weights.
    """
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"embedding ids must be integers, got {ids.dtype}")
    if not ids.is_cuda and not _compiling():
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise IndexError(f"index out of range in self: ids must be in [0, {vocab})")
        return ids
    outside = (elements - offset) // dim + 1  # its positions all lie past the ring's end
    return torch.where((ids >= 0) & (ids < vocab), ids, torch.full_like(ids, outside))
