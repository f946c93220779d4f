"""Where each generated element's ring index comes from: an int32 cache per ring, or the seed.

With ``cache_indices`` every ring keeps one int32 tensor of the signed-ring indices of all
its generated elements (built from the seed on first use, never saved), in the layout the
device and the ring dtype call for (``hf_rpg.spec.index_encoding``). Without it the indices
are computed from the seed at each use (the numba / fused kernels compute them inside the
gather and the scatter). The autograd function (``ring_autograd``) and the embedding rows
read their indices here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spec import index_encoding, index_kernels
from ..spec.generator import GeneratorKey, build_signed_index, derive_key, signed_index_dtype, signed_indices

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..format.manifest import Layout, TargetLayout


class RingIndices:
    """The ring indices of one model's generated elements.

    ``ring_itemsize(name)`` gives the element size of ring ``name`` now (the index layout
    depends on it); rings are looked up by the caller, so dtype casts are followed.
    """

    def __init__(self, layout: Layout, seed: int, cache_indices: bool, ring_itemsize: Callable[[str], int]) -> None:
        self.layout = layout
        self.seed = seed
        self.keys: dict[str, GeneratorKey] = {name: derive_key(seed, name) for name in layout.rings}
        self.cache_indices = cache_indices
        self._ring_itemsize = ring_itemsize
        self._index: dict[str, torch.Tensor] = {}
        self.sign_bit: dict[str, bool] = {}  # per ring: whether its cache is in the sign-bit layout
        self._index_for: dict[str, int] = {}  # ring itemsize the layout was picked for

    def build(self, device: torch.device | str | None = None) -> None:
        """Build the int32 index caches now (they are built on first use otherwise)."""
        if self.cache_indices:
            for name in self.layout.rings:
                self.cached(name, torch.device(device or "cpu"))

    def cached(self, ring_name: str, device: torch.device) -> torch.Tensor:
        """The ring's int32 cache on ``device``, in the layout picked for that device and
        ring dtype (see ``index_layout``): built from the seed on first use, re-encoded
        only when the device or the ring's dtype changes."""
        index = self._index.get(ring_name)
        if (
            index is not None
            and index.device == device
            and self._index_for.get(ring_name) == self._ring_itemsize(ring_name)
        ):
            return index
        return self._prepare(ring_name, device)

    # Built (and re-encoded) on first use, which may be inside a compiled graph: the NumPy
    # uint32 code must run eagerly, never be traced (dynamo has no uint32 shifts). Only this
    # slow path leaves the graph; the lookup above stays in it. torch._disable_dynamo is
    # torch.compiler.disable imported on first call: the decorator would import torch._dynamo
    # (about 2 s) with hf_rpg, for models that are never compiled.
    @torch._disable_dynamo
    def _prepare(self, ring_name: str, device: torch.device) -> torch.Tensor:
        ring = self.layout.rings[ring_name]
        index = self._index.get(ring_name)
        itemsize = self._ring_itemsize(ring_name)
        was_sign_bit = self.sign_bit.get(ring_name, False)
        if index is None:
            index = _new_index(ring.elements, ring.size, self.keys[ring_name], device)
            was_sign_bit = False
        elif index.device != device:
            index = index.to(device)
        sign_bit = index_encoding.use_sign_bit(ring.size, itemsize, index.dtype, device)
        if sign_bit and not was_sign_bit:
            index = index_encoding.signed_to_sign_bit_(index, ring.size)
        elif was_sign_bit and not sign_bit:
            index = index_encoding.sign_bit_to_signed(index, ring.size)
        self._index[ring_name], self.sign_bit[ring_name] = index, sign_bit
        self._index_for[ring_name] = itemsize
        return index

    def sign_bit_layout(self, ring_name: str, device: torch.device) -> bool:
        """Whether ``raw_indices`` of this ring come in the sign-bit layout on ``device``."""
        if not self.cache_indices:
            return False
        self.cached(ring_name, device)
        return self.sign_bit[ring_name]

    def raw_indices(self, ring_name: str, target: TargetLayout, device: torch.device) -> torch.Tensor:
        """The cached indices of ``target`` (1-D) in the ring's layout on ``device``
        (``sign_bit_layout`` says which), or signed-ring indices computed from the seed."""
        if self.cache_indices:
            return self.cached(ring_name, device).narrow(0, target.offset, target.numel)
        ring = self.layout.rings[ring_name]
        return build_signed_index(
            ring.elements,
            ring.size,
            self.keys[ring_name],
            start=target.offset,
            stop=target.offset + target.numel,
            device=device,
        )

    def indices(self, ring_name: str, target: TargetLayout, device: torch.device) -> torch.Tensor:
        """Signed-ring indices of every element of ``target`` (1-D): into ``[ring, -ring]``."""
        index = self.raw_indices(ring_name, target, device)
        if self.sign_bit_layout(ring_name, device):
            return index_encoding.sign_bit_to_signed(index, self.layout.rings[ring_name].size)
        return index

    def at(self, ring_name: str, positions: torch.Tensor) -> torch.Tensor:
        """Indices of arbitrary positions of a ring (any shape), in the ring's layout."""
        if self.cache_indices:
            return self.cached(ring_name, positions.device)[positions]
        ring = self.layout.rings[ring_name]
        return signed_indices(positions, ring.elements, ring.size, self.keys[ring_name])

    def override(self, ring_name: str, signed_index: torch.Tensor) -> None:
        """Replace ring ``ring_name``'s cache by ``signed_index`` (see
        ``WeightEngine.set_index_override``, the study-only entry point)."""
        if ring_name not in self.layout.rings:
            raise KeyError(f"no ring {ring_name!r}; rings: {', '.join(self.layout.rings)}")
        if not self.cache_indices:
            raise RuntimeError("set_index_override replaces the index cache: it needs index_cache='int32'")
        ring = self.layout.rings[ring_name]
        if signed_index.dtype != torch.int32 or tuple(signed_index.shape) != (ring.elements,):
            raise ValueError(
                f"signed_index must be int32 of shape [{ring.elements}], got {signed_index.dtype} "
                f"{list(signed_index.shape)}"
            )
        if signed_index.numel() and (int(signed_index.min()) < 0 or int(signed_index.max()) >= 2 * ring.size):
            raise ValueError(f"signed_index values must lie in [0, {2 * ring.size}) (the signed ring)")
        self._index[ring_name] = signed_index.detach().clone()
        self.sign_bit[ring_name] = False
        self._index_for.pop(ring_name, None)  # re-encoded for the device and dtype on next use

    def bytes(self) -> int:
        """Bytes held by the index caches right now."""
        return sum(t.numel() * t.element_size() for t in self._index.values())


def _new_index(total: int, ring_size: int, key: GeneratorKey, device: torch.device) -> torch.Tensor:
    """A ring's signed-index cache: one Triton kernel on CUDA devices (the generator's tensor
    path there runs dozens of ops per chunk of positions), else ``build_signed_index``."""
    kernels = index_kernels.triton_for(device)
    if kernels is None:
        return build_signed_index(total, ring_size, key, device=device)
    index = torch.empty(total, dtype=signed_index_dtype(ring_size), device=device)
    kernels.signed_indices(key, total, ring_size, 0, None, index)
    return index
