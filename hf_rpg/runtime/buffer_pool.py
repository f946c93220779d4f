"""Reusable flat buffers for generated weights, so that freed weights' memory is reused.

First-touching fresh pages costs about as much as the gather itself on CPU: a weight
generated into a buffer that no autograd graph or live tensor holds any more is as fast as
generating all weights into one buffer, without holding a dense copy of a large model.
"""

from __future__ import annotations

import torch


def _storage_refs(tensor: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


try:  # a private torch API; without it buffers are simply never reused
    _ALONE_REFS = _storage_refs(torch.empty(1))
except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
    _ALONE_REFS = None


def buffer_is_free(buffer: torch.Tensor) -> bool:
    """True when nothing but ``buffer`` itself holds its storage: no view of it is alive,
    in particular none saved by an autograd graph that has not run backward yet."""
    return _ALONE_REFS is not None and _storage_refs(buffer) <= _ALONE_REFS


# Freed generated weights are kept for reuse up to this many bytes (or four times the
# largest target, if more).
POOL_MIN_BYTES = 256 << 20


class BufferPool:
    """Flat buffers by ``(numel, dtype, device)``, kept up to ``cap`` bytes in all."""

    def __init__(self, largest_numel: int) -> None:
        self.cap = max(POOL_MIN_BYTES, 4 * 4 * largest_numel)
        self._buffers: dict[tuple[int, torch.dtype, torch.device], list[torch.Tensor]] = {}
        self._bytes = 0

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer no autograd graph or live tensor holds, reused across layers and steps."""
        buffers = self._buffers.setdefault((numel, dtype, device), [])
        for buffer in buffers:
            if buffer_is_free(buffer):
                return buffer
        buffer = torch.empty(numel, dtype=dtype, device=device)
        size = numel * buffer.element_size()
        if self._bytes + size <= self.cap:
            buffers.append(buffer)
            self._bytes += size
        return buffer

    def held_bytes(self) -> int:
        """Bytes of the buffers kept for reuse right now."""
        return self._bytes

    def in_use(self) -> int:
        """How many kept buffers something still holds (a live weight, an autograd graph)."""
        return sum(not buffer_is_free(b) for buffers in self._buffers.values() for b in buffers)

    def buffer_ids(self) -> set[int]:
        """ids of the buffers kept (to check that a step reuses rather than allocates)."""
        return {id(b) for buffers in self._buffers.values() for b in buffers}

    def clear(self) -> None:
        """Let go of every kept buffer."""
        self._buffers.clear()
        self._bytes = 0
