"""When generated weights exist: per layer in training, once per ring version in inference.

- **Training** (grad enabled): a target's weight is generated when its owner module runs
  — inside the owner's ``forward``, after the owner's pre-forward hooks (FSDP's unshard
  among them) — used by the owner's own forward, and released when it returns. Autograd
  does not keep it: while the owner runs, a saved-tensor hook replaces every tensor that
  shares the weight's memory with a small token, and backward regenerates the weight from
  the ring when it needs it. The generating autograd function itself saves nothing per
  element (``hf_rpg.ring_autograd``). So only the weights of the layers computing right
  now exist, the same trade activation checkpointing makes, applied to weights: one more
  gather per weight in backward. Under gradient checkpointing the recomputed forward
  generates again, and under ``torch.compile`` the compiled graph decides what it saves.
  Untied plain ``nn.Embedding`` s generate only the rows a batch looks up.
- **Inference** (no grad, model in eval mode, ``inference_cache=True``): the weights are
  generated once and reused until a ring changes (its version counter moves, as every
  optimizer step and ``load_state_dict`` does). ``RPGModel.clear_cache()`` drops them.
- **Elsewhere** (a weight read outside its owner's forward): generated on each access.

Each generated weight has its own target's dtype and device (a bf16 base keeps an fp32
ring; the weight is cast after generation, so the cast is the only rounding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from . import index_encoding, index_kernels
from .errors import RPGStateError
from .generator import GeneratorKey, build_signed_index, derive_key, signed_index_dtype, signed_indices
from .lowrank import delta_weight, features, projection
from .manifest import Layout, TargetLayout
from .quantized import prepare_for_grad
from .ring_autograd import _GenerateFromRing, _Request, buffer_is_free

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from torch import nn

# Freed generated weights are kept for reuse up to this many bytes (or four times the
# largest target, if more): first-touching fresh pages costs about as much as the gather
# itself on CPU, and reusing memory keeps the per-layer engine as fast as generating all
# weights into one buffer, without holding a dense copy of a large model.
POOL_MIN_BYTES = 256 << 20
# Servings whose update is added to the layer's own output (the attribute stays the base).
ADDED_TO_OUTPUT = ("additive", "lowrank")


@dataclass(frozen=True)
class TargetSpec:
    """How a target is served: dtype and device of its weight (replace mode), and where
    its frozen base lives (delta mode: ``module._parameters[attr]``, read at each use)."""

    dtype: torch.dtype
    device: torch.device
    serving: str = "replace"
    base_slot: tuple[nn.Module, str] | None = None


@dataclass(frozen=True)
class _Regenerate:
    """What autograd keeps instead of a generated weight (or a view of it)."""

    target_id: int
    versions: tuple[int, ...]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    update_only: bool
    dtype: torch.dtype
    device: torch.device


class WeightEngine:
    """Generates the targeted tensors of one RPG model from its rings.

    It holds the layout, the generator keys, the int32 index caches (never saved), the
    weights alive in the owners running now, and the inference cache. Rings are looked up
    on ``root.rpg_rings`` at each use, so device moves, dtype casts and wrappers that swap
    Parameters (FSDP) are followed.
    """

    def __init__(
        self,
        root: nn.Module,
        layout: Layout,
        seed: int,
        *,
        specs: list[TargetSpec],
        rowwise: set[int] | None = None,
        cache_indices: bool = True,
        inference_cache: bool = True,
        regenerate: bool = True,
    ) -> None:
        self.root = root
        self.layout = layout
        self.seed = seed
        self.keys: dict[str, GeneratorKey] = {name: derive_key(seed, name) for name in layout.rings}
        self.specs = list(specs)
        self.rowwise = rowwise or set()
        self.cache_indices = cache_indices
        self.inference_cache = inference_cache
        self.regenerate = regenerate  # False: autograd keeps each weight for backward (no regeneration)
        self._index: dict[str, torch.Tensor] = {}
        self._sign_bit: dict[str, bool] = {}
        self._index_for: dict[str, int] = {}  # ring itemsize the layout was picked for
        self._materialized: dict[int, torch.Tensor] | None = None
        self._materialized_key: tuple | None = None
        self._live: dict[int, torch.Tensor] = {}  # target id -> weight of an owner running now
        self._live_storage: dict[int, tuple[int, torch.Tensor]] = {}  # storage ptr -> (id, weight)
        self._scope_depth: dict[int, int] = {}
        self._pool: dict[tuple[int, torch.dtype, torch.device], list[torch.Tensor]] = {}
        self._pool_bytes = 0
        largest = max((t.numel for t in layout.targets), default=0)
        self._pool_cap = max(POOL_MIN_BYTES, 4 * 4 * largest)
        self._placeholders: torch.device | None = None
        self.enabled = True
        self.update_enabled = True  # False inside RPGModel.disable_rpg(): the untouched base runs

    # ------------------------------------------------------------------ indices

    def build_index_caches(self, device: torch.device | str | None = None) -> None:
        """Build the int32 index caches now (``apply_rpg`` does this once)."""
        if self.cache_indices:
            for name in self.layout.rings:
                self._ring_index(name, torch.device(device or "cpu"))

    def _ring_index(self, ring_name: str, device: torch.device) -> torch.Tensor:
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
        return self._prepare_ring_index(ring_name, device)

    # Built (and re-encoded) on first use, which may be inside a compiled graph: the NumPy
    # uint32 code must run eagerly, never be traced (dynamo has no uint32 shifts). Only this
    # slow path leaves the graph; the lookup above stays in it. torch._disable_dynamo is
    # torch.compiler.disable imported on first call: the decorator would import torch._dynamo
    # (about 2 s) with hf_rpg, for models that are never compiled.
    @torch._disable_dynamo
    def _prepare_ring_index(self, ring_name: str, device: torch.device) -> torch.Tensor:
        ring = self.layout.rings[ring_name]
        index = self._index.get(ring_name)
        itemsize = self._ring_itemsize(ring_name)
        was_sign_bit = self._sign_bit.get(ring_name, False)
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
        self._index[ring_name], self._sign_bit[ring_name] = index, sign_bit
        self._index_for[ring_name] = itemsize
        return index

    def _ring_itemsize(self, ring_name: str) -> int:
        rings = getattr(self.root, "rpg_rings", None)
        return rings[ring_name].element_size() if rings is not None and ring_name in rings else 4

    def sign_bit_layout(self, ring_name: str, device: torch.device) -> bool:
        """Whether ``raw_indices`` of this ring come in the sign-bit layout on ``device``."""
        if not self.cache_indices:
            return False
        self._ring_index(ring_name, device)
        return self._sign_bit[ring_name]

    def raw_indices(self, ring_name: str, target: TargetLayout, device: torch.device) -> torch.Tensor:
        """The cached indices of ``target`` (1-D) in the ring's layout on ``device``
        (``sign_bit_layout`` says which), or signed-ring indices computed from the seed."""
        if self.cache_indices:
            return self._ring_index(ring_name, device).narrow(0, target.offset, target.numel)
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

    def _indices_at(self, ring_name: str, positions: torch.Tensor) -> torch.Tensor:
        """Indices of arbitrary positions of a ring (any shape), in the ring's layout."""
        if self.cache_indices:
            return self._ring_index(ring_name, positions.device)[positions]
        ring = self.layout.rings[ring_name]
        return signed_indices(positions, ring.elements, ring.size, self.keys[ring_name])

    def set_index_override(self, ring_name: str, signed_index: torch.Tensor) -> None:
        """STUDY ONLY (the ablations of ``hf_rpg.sweep``): make ring ``ring_name`` use
        ``signed_index`` instead of its ``rpg-v1`` indices.

        ``signed_index`` is int32, one entry per generated element of the ring in layout
        order (ring position ``p`` = target offset + element), each an index into the signed
        ring ``[θ, −θ]`` (``k < N``: ``+θ[k]``; ``k >= N``: ``−θ[k − N]``). It replaces the
        ring's int32 cache (so ``index_cache="int32"`` is needed); nothing else changes. The
        model no longer follows ``rpg-v1``: a checkpoint does not record the override and
        reloads with the ``rpg-v1`` indices. The library itself never calls this.
        """
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
        self._sign_bit[ring_name] = False
        self._index_for.pop(ring_name, None)  # re-encoded for the device and dtype on next use
        self._drop_inference_weights()

    def index_cache_bytes(self) -> int:
        """Bytes held by the index caches right now."""
        return sum(t.numel() * t.element_size() for t in self._index.values())

    # ------------------------------------------------------------------ generation

    def ring(self, name: str) -> torch.Tensor:
        """The ring Parameter ``name``, looked up on the root model at each use."""
        return self.root.rpg_rings[name]

    def _base(self, target_id: int) -> torch.Tensor | None:
        slot = self.specs[target_id].base_slot
        return None if slot is None else slot[0]._parameters[slot[1]]

    def _merged_base(self, target_id: int) -> torch.Tensor | None:
        """The base added inside the generation (delta mode with a dense base)."""
        return self._base(target_id) if self.specs[target_id].serving == "merged" else None

    def _out_dtype_device(self, target_id: int) -> tuple[torch.dtype, torch.device]:
        base = self._merged_base(target_id)
        if base is not None:
            return base.dtype, base.device
        spec = self.specs[target_id]
        return spec.dtype, spec.device

    def _pooled_buffer(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer no autograd graph or live tensor holds, reused across layers and steps."""
        key = (numel, dtype, device)
        buffers = self._pool.setdefault(key, [])
        for buffer in buffers:
            if buffer_is_free(buffer):
                return buffer
        buffer = torch.empty(numel, dtype=dtype, device=device)
        size = numel * buffer.element_size()
        if self._pool_bytes + size <= self._pool_cap:
            buffers.append(buffer)
            self._pool_bytes += size
        return buffer

    def _raw(self, target_ids: list[int], *, with_base: bool, pooled: bool) -> dict[int, torch.Tensor]:
        """``gain * G(ring)`` (+ the merged base) in the ring's dtype, with autograd to the
        rings when grad is enabled."""
        by_ring: dict[str, list[int]] = {}
        for tid in target_ids:
            by_ring.setdefault(self.layout.targets[tid].ring, []).append(tid)
        weights: dict[int, torch.Tensor] = {}
        for ring_name, ids in by_ring.items():
            ring = self.ring(ring_name)
            requests = [_Request(self.layout.targets[i], self._merged_base(i) if with_base else None) for i in ids]
            out = None
            if pooled:
                out = self._pooled_buffer(sum(r.target.numel for r in requests), ring.dtype, ring.device)
            outputs = _GenerateFromRing.apply(ring, self, ring_name, requests, out)
            weights.update(zip(ids, outputs, strict=True))
        return weights

    def generate(self, target_ids: list[int]) -> dict[int, torch.Tensor]:
        """The full current value of the given targets, each in its own dtype and device
        (with autograd to the rings when grad is enabled). Quantized (additive) targets
        give their update ``ΔW`` only: their base cannot be added densely."""
        raw = self._raw(target_ids, with_base=True, pooled=False)
        return {tid: self._finish(tid, weight) for tid, weight in raw.items()}

    def _finish(self, target_id: int, weight: torch.Tensor) -> torch.Tensor:
        if self.specs[target_id].serving in ADDED_TO_OUTPUT:
            return weight
        dtype, device = self._out_dtype_device(target_id)
        return weight if weight.dtype == dtype and weight.device == device else weight.to(device=device, dtype=dtype)

    def _weight(self, target_id: int) -> torch.Tensor:
        """One target's weight for a running owner (pooled memory, except in compiled graphs,
        whose memory the compiler plans)."""
        raw = self._raw([target_id], with_base=True, pooled=not torch.compiler.is_compiling())[target_id]
        return self._finish(target_id, raw)

    def _update(self, target_id: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``ΔW`` of an additive (quantized-base) target, or the factor ``F`` of a low-rank
        one, in ``dtype`` on ``device``. (Low-rank factors are small: not pooled, so no
        buffer is held between steps.)"""
        pooled = self.specs[target_id].serving == "additive" and not torch.compiler.is_compiling()
        raw = self._raw([target_id], with_base=False, pooled=pooled)[target_id]
        return raw if raw.dtype == dtype and raw.device == device else raw.to(device=device, dtype=dtype)

    def projection(self, target_id: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The fixed projection ``P`` (``[rank, in]``) of a low-rank target, regenerated from
        the seed at each use (a few thousand sign hashes; nothing is kept between steps)."""
        target = self.layout.targets[target_id]
        in_features, _ = features(target.shape, target.kind)
        return projection(self.seed, target.name, target.rank, in_features, dtype=dtype, device=device)

    def lowrank_delta(self, target_id: int, factor: torch.Tensor) -> torch.Tensor:
        """The dense update ``F P`` of a low-rank target, in the layout of its weight."""
        target = self.layout.targets[target_id]
        return delta_weight(factor, self.projection(target_id, factor.dtype, factor.device), target.kind)

    # ------------------------------------------------------------------ inference cache

    def _cache_key(self) -> tuple:
        rings = tuple(
            (name, ring._version, ring.data_ptr(), ring.device, ring.dtype)
            for name, ring in ((n, self.ring(n)) for n in self.layout.rings)
        )
        bases = tuple(
            (tid, base.data_ptr(), base._version, base.dtype, base.device)
            for tid in range(len(self.specs))
            if (base := self._merged_base(tid)) is not None
        )
        return rings, bases, tuple((s.dtype, s.device) for s in self.specs)

    def inference_cache_applies(self) -> bool:
        """Weights are reused across forwards without grad while the model is in eval mode
        (not in compiled graphs: they generate each layer's weight, always current)."""
        return (
            self.inference_cache
            and not torch.is_grad_enabled()
            and not self.root.training
            and not torch.compiler.is_compiling()
        )

    def materialized(self) -> dict[int, torch.Tensor]:
        """All weights generated without grad, reused until a ring changes."""
        key = self._cache_key()
        if self._materialized is None or self._materialized_key != key:
            self._drop_inference_weights()  # free the stale copy before making a new one
            with torch.no_grad():
                self._materialized = self.generate(list(range(len(self.layout.targets))))
            self._materialized_key = key
        return self._materialized

    def _drop_inference_weights(self) -> None:
        self._materialized = None
        self._materialized_key = None

    def clear_cache(self) -> None:
        """Drop the inference weights and the reusable buffers (index caches stay)."""
        self._drop_inference_weights()
        self._pool.clear()
        self._pool_bytes = 0

    def begin_forward(self) -> None:
        """Called by ``RPGModel.forward``: training frees the inference copy."""
        if torch.is_grad_enabled() and self._materialized is not None:
            self._drop_inference_weights()

    # ------------------------------------------------------------------ owners

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise RPGStateError("this RPG model was unloaded; use the model merge_and_unload() returned")

    @contextlib.contextmanager
    def placeholders(self, device: torch.device | str = "meta") -> Iterator[None]:
        """Inside this block generated attributes read as empty tensors of their shape on
        ``device`` (meta by default): initialisers that visit every module (on a model built
        on the meta device) touch nothing dense."""
        self._placeholders = torch.device(device)
        try:
            yield
        finally:
            self._placeholders = None

    def attribute(self, target_id: int) -> torch.Tensor:
        """What ``module.<attr>`` returns. Replace mode: the generated tensor. Delta mode:
        ``W0 + ΔW`` inside the owner's own forward, where the layer computes with it, and
        the frozen base Parameter everywhere else (as PEFT's layers do): wrappers such as
        FSDP find, shard and swap the real Parameter there, and never a generated copy."""
        if self._placeholders is not None:
            spec = self.specs[target_id]
            return torch.empty(self.layout.targets[target_id].shape, dtype=spec.dtype, device=self._placeholders)
        if self.specs[target_id].serving == "merged" and target_id not in self._scope_depth:
            self._check_enabled()
            return self._base(target_id)
        return self.tensor(target_id)

    def tensor(self, target_id: int) -> torch.Tensor:
        """The current value of a generated tensor (``RPGModel.generated_weights``)."""
        self._check_enabled()
        if not self.update_enabled:
            base = self._base(target_id)
            if base is None:  # pragma: no cover - disable_rpg() refuses replace mode
                raise RPGStateError("disable_rpg() needs mode='delta'")
            return base
        live = self._live.get(target_id)
        if live is not None:
            return live
        if self.inference_cache_applies():
            return self.materialized()[target_id]
        if target_id not in self._scope_depth:
            return self.generate([target_id])[target_id]
        weight = self._weight(target_id)
        self._keep_live(target_id, weight)
        return weight

    def _keep_live(self, target_id: int, weight: torch.Tensor) -> None:
        self._live[target_id] = weight
        if weight.requires_grad and self._hooks_apply():
            self._live_storage[weight.untyped_storage().data_ptr()] = (target_id, weight)

    def _enter(self, target_ids: list[int]) -> None:
        for tid in target_ids:
            self._scope_depth[tid] = self._scope_depth.get(tid, 0) + 1

    def _exit(self, target_ids: list[int]) -> None:
        for tid in target_ids:
            depth = self._scope_depth[tid] - 1
            if depth:
                self._scope_depth[tid] = depth
                continue
            del self._scope_depth[tid]
            weight = self._live.pop(tid, None)
            if weight is not None and self._live_storage:
                self._live_storage.pop(weight.untyped_storage().data_ptr(), None)

    def _hooks_apply(self) -> bool:
        # Under torch.compile the compiled graph chooses what to save (and may recompute).
        return self.regenerate and torch.is_grad_enabled() and not torch.compiler.is_compiling()

    def run_owner(
        self,
        module: nn.Module,
        sources: dict[str, Any],  # attribute -> parametrize.GeneratedSource
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run an owner's own ``forward`` with its generated weights alive for the call."""
        self._check_enabled()
        ids = [source.target_id for source in sources.values()]
        self._enter(ids)
        try:
            if self._hooks_apply():
                with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                    return self._call(module, sources, forward, args, kwargs)
            return self._call(module, sources, forward, args, kwargs)
        finally:
            self._exit(ids)

    def _call(self, module, sources, forward, args, kwargs) -> Any:
        if torch.is_grad_enabled() and (
            module.training or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        ):
            prepare_for_grad(module)  # a quantized base in its CPU inference layout has no backward
        output = forward(module, *args, **kwargs)
        if not self.update_enabled:
            return output
        for source in sources.values():
            if source.serving in ADDED_TO_OUTPUT:
                output = self._add_update(source.target_id, args, kwargs, output)
        return output

    def _add_update(self, target_id: int, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        """``output + x · ΔWᵀ`` for a quantized linear base, ``output + (x Pᵀ) Fᵀ`` for a
        low-rank target (the layer's own forward made ``output``)."""
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            raise RPGStateError(
                f"the delta update of {self.layout.targets[target_id].name!r} needs a layer called with one input "
                "tensor that returns one tensor"
            )
        if self.inference_cache_applies():
            delta = self.materialized()[target_id].to(device=x.device, dtype=x.dtype)
        else:
            delta = self._update(target_id, x.dtype, x.device)
            self._keep_live(target_id, delta)
        if self.specs[target_id].serving == "lowrank":
            return output + F.linear(F.linear(x, self.projection(target_id, x.dtype, x.device)), delta).to(output.dtype)
        return output + F.linear(x, delta).to(output.dtype)

    def _pack(self, tensor: torch.Tensor) -> Any:
        """Saved-tensor hook: a generated weight (or a view of it) becomes a token."""
        if not self._live_storage:
            return tensor
        try:
            entry = self._live_storage.get(tensor.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
            return tensor
        if entry is None:
            return tensor
        target_id, weight = entry
        if tensor.dtype != weight.dtype or tensor.device != weight.device:
            return tensor
        versions = tuple(self.ring(name)._version for name in self.layout.rings)
        return _Regenerate(
            target_id,
            versions,
            tuple(tensor.size()),
            tuple(tensor.stride()),
            tensor.storage_offset() - weight.storage_offset(),
            self.specs[target_id].serving in ADDED_TO_OUTPUT,
            weight.dtype,
            weight.device,
        )

    def _unpack(self, packed: Any) -> torch.Tensor:
        """Saved-tensor hook: regenerate a weight that autograd needs in backward."""
        if not isinstance(packed, _Regenerate):
            return packed
        versions = tuple(self.ring(name)._version for name in self.layout.rings)
        if versions != packed.versions:
            raise RuntimeError(
                "a ring of this RPG model was modified in place between the forward and the backward pass "
                "(an optimizer step before backward?); the generated weights needed for the gradient changed"
            )
        with torch.no_grad():
            if packed.update_only:
                weight = self._update(packed.target_id, packed.dtype, packed.device)
            else:
                weight = self._weight(packed.target_id)
        return weight.as_strided(packed.size, packed.stride, weight.storage_offset() + packed.offset)

    # ------------------------------------------------------------------ embeddings

    def run_rowwise_embedding(self, module: nn.Embedding, target_id: int, args: tuple, kwargs: dict) -> torch.Tensor:
        """``module(ids)`` for an untied plain ``nn.Embedding``: only the looked-up rows."""
        self._check_enabled()
        if len(args) + len(kwargs) != 1:
            raise TypeError(f"{type(module).__name__}.forward() takes one input tensor")
        ids = args[0] if args else next(iter(kwargs.values()))
        if not self.update_enabled:
            return F.embedding(ids, self._base(target_id), module.padding_idx, module.max_norm, module.norm_type,
                               module.scale_grad_by_freq, module.sparse)  # fmt: skip
        if self.inference_cache_applies():
            weight = self.materialized()[target_id]
            return F.embedding(ids, weight, module.padding_idx, module.max_norm, module.norm_type,
                               module.scale_grad_by_freq, module.sparse)  # fmt: skip
        return self.embedding_rows(module, target_id, ids)

    def embedding_rows(self, module: nn.Embedding, target_id: int, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``ids`` of a generated embedding table, with autograd to the ring."""
        target = self.layout.targets[target_id]
        vocab, dim = target.shape
        ids = _checked_ids(ids, vocab, self.layout.rings[target.ring].elements, target.offset, dim)
        ring = self.ring(target.ring)
        columns = torch.arange(dim, device=ids.device, dtype=torch.int64)
        positions = (ids.to(torch.int64).unsqueeze(-1) * dim + columns).add_(target.offset)
        index = self._indices_at(target.ring, positions.flatten())
        values = index_encoding.lookup(ring, index, self.sign_bit_layout(target.ring, ring.device))
        rows = (values * target.gain).view(*ids.shape, dim)
        base = self._base(target_id)
        if base is not None:
            rows = (F.embedding(ids, base).to(rows.dtype) + rows).to(base.dtype)
        else:
            dtype, device = self._out_dtype_device(target_id)
            rows = rows.to(device=device, dtype=dtype)
        if module.padding_idx is not None and rows.requires_grad:
            # as F.embedding does: the padding row receives no gradient
            padding = (ids == module.padding_idx).unsqueeze(-1)
            rows = torch.where(padding, rows.detach(), rows)
        return rows


def _new_index(total: int, ring_size: int, key: GeneratorKey, device: torch.device) -> torch.Tensor:
    """A ring's signed-index cache: one Triton kernel on CUDA devices (the generator's tensor
    path there runs dozens of ops per chunk of positions), else ``build_signed_index``."""
    kernels = index_kernels.triton_for(device)
    if kernels is None:
        return build_signed_index(total, ring_size, key, device=device)
    index = torch.empty(total, dtype=signed_index_dtype(ring_size), device=device)
    kernels.signed_indices(key, total, ring_size, 0, None, index)
    return index


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
