"""When generated weights exist: per layer in training, once per ring version in inference.

- **Training** (grad enabled): a target's weight is generated when its owner module runs
  — inside the owner's ``forward``, after the owner's pre-forward hooks (FSDP's unshard
  among them) — used by the owner's own forward, and released when it returns. Autograd
  does not keep it: while the owner runs, a saved-tensor hook replaces every tensor that
  shares the weight's memory with a small token, and backward regenerates the weight from
  the ring when it needs it. The generating autograd function itself saves nothing per
  element (``hf_rpg.runtime.ring_autograd``). So only the weights of the layers computing right
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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import RPGStateError
from ..spec.lora import lora_delta_weight, part_scales, split_factors
from ..spec.lowrank import delta_weight, projection
from ..spec.lowrank_shapes import features
from .buffer_pool import BufferPool
from .embedding_rows import embedding_rows
from .index_cache import RingIndices
from .quantized import prepare_for_grad
from .ring_autograd import _GenerateFromRing, _Request

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from torch import nn

    from .plan import Plan


@dataclass(frozen=True)
class RuntimeStats:
    """What the engine of an RPG model holds right now (``RPGModel.runtime_stats()``).

    Attributes:
        index_cache_bytes: Bytes of the int32 index caches (0 without ``index_cache``).
        sign_bit_rings: Per ring with a built cache, whether it is in the sign-bit layout.
        pooled_bytes: Bytes of freed weight buffers kept for reuse.
        pooled_buffer_ids: ids of those buffers (a training step should reuse, not allocate).
        pooled_in_use: How many of them something still holds (a live weight, an autograd graph).
        live_weights: Generated weights alive now (those of the layers running right now).
        inference_weights_held: Whether generated weights are kept for inference.
        generated: Targets generated since the model was built (each weight or update,
            in forward, backward and for the inference cache; not counted inside a
            ``torch.compile``d graph): a measure of the work done.
    """

    index_cache_bytes: int
    sign_bit_rings: dict[str, bool]
    pooled_bytes: int
    pooled_buffer_ids: frozenset[int]
    pooled_in_use: int
    live_weights: int
    inference_weights_held: bool
    generated: int


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
    """Generates the targeted tensors of one RPG model from its rings, as its ``Plan`` says.

    It holds the plan, the ring indices (``RingIndices``), the buffer pool, the weights
    alive in the owners running now, and the inference cache. Rings are looked up on
    ``root.rpg_rings`` at each use, so device moves, dtype casts and wrappers that swap
    Parameters (FSDP) are followed.
    """

    def __init__(self, root: nn.Module, plan: Plan) -> None:
        self.root = root
        self.plan = plan
        self.layout = plan.layout
        self.indices = RingIndices(plan.layout, plan.seed, plan.cache_indices, self._ring_itemsize)
        self.pool = BufferPool(max((t.numel for t in plan.layout.targets), default=0))
        self._materialized: dict[int, torch.Tensor] | None = None
        self._materialized_key: tuple | None = None
        self._live: dict[int, torch.Tensor] = {}  # target id -> weight of an owner running now
        self._live_storage: dict[int, tuple[int, torch.Tensor]] = {}  # storage ptr -> (id, weight)
        self._scope_depth: dict[int, int] = {}
        self._placeholders: torch.device | None = None
        self._generated = 0
        # rpg-lora-v1 targets generate their block without the gain, then scale F and A apart
        self._requested = [
            replace(t, gain=1.0) if s.serving.both_factors else t
            for t, s in zip(plan.layout.targets, plan.targets, strict=True)
        ]
        self._part_scales: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        self.enabled = True
        self.update_enabled = True  # False inside RPGModel.disable_rpg(): the untouched base runs

    def _ring_itemsize(self, ring_name: str) -> int:
        rings = getattr(self.root, "rpg_rings", None)
        return rings[ring_name].element_size() if rings is not None and ring_name in rings else 4

    def follow(self, plan: Plan) -> None:
        """Serve ``plan`` from now on (the same targets, moved or cast: ``Plan.moved``)."""
        self.plan = plan
        self._part_scales.clear()
        self.drop_inference_weights()

    def stats(self) -> RuntimeStats:
        """What the engine holds right now (see ``RuntimeStats``)."""
        return RuntimeStats(
            index_cache_bytes=self.indices.bytes(),
            sign_bit_rings=dict(self.indices.sign_bit),
            pooled_bytes=self.pool.held_bytes(),
            pooled_buffer_ids=frozenset(self.pool.buffer_ids()),
            pooled_in_use=self.pool.in_use(),
            live_weights=len(self._live),
            inference_weights_held=self._materialized is not None,
            generated=self._generated,
        )

    def set_index_override(self, ring_name: str, signed_index: torch.Tensor) -> None:
        """STUDY ONLY (the index ablations of the sweeps): make ring ``ring_name`` use
        ``signed_index`` instead of its ``rpg-v1`` indices.

        ``signed_index`` is int32, one entry per generated element of the ring in layout
        order (ring position ``p`` = target offset + element), each an index into the signed
        ring ``[θ, −θ]`` (``k < N``: ``+θ[k]``; ``k >= N``: ``−θ[k − N]``). It replaces the
        ring's int32 cache (so ``index_cache="int32"`` is needed); nothing else changes. The
        model no longer follows ``rpg-v1``: a checkpoint does not record the override and
        reloads with the ``rpg-v1`` indices. The library itself never calls this.
        """
        self.indices.override(ring_name, signed_index)
        self.drop_inference_weights()

    # ------------------------------------------------------------------ generation

    def ring(self, name: str) -> torch.Tensor:
        """The ring Parameter ``name``, looked up on the root model at each use."""
        return self.root.rpg_rings[name]

    def _merged_base(self, target_id: int) -> torch.Tensor | None:
        """The base added inside the generation (delta mode with a dense base)."""
        target = self.plan.targets[target_id]
        return target.base() if target.serving.adds_base else None

    def _raw(self, target_ids: list[int], *, with_base: bool, pooled: bool) -> dict[int, torch.Tensor]:
        """``gain * G(ring)`` (+ the merged base) in the ring's dtype, with autograd to the
        rings when grad is enabled."""
        by_ring: dict[str, list[int]] = {}
        for tid in target_ids:
            by_ring.setdefault(self.layout.targets[tid].ring, []).append(tid)
        weights: dict[int, torch.Tensor] = {}
        for ring_name, ids in by_ring.items():
            ring = self.ring(ring_name)
            requests = [_Request(self._requested[i], self._merged_base(i) if with_base else None) for i in ids]
            out = None
            if pooled:
                out = self.pool.take(sum(r.target.numel for r in requests), ring.dtype, ring.device)
            outputs = _GenerateFromRing.apply(ring, self.indices, ring_name, requests, out)
            weights.update(zip(ids, outputs, strict=True))
        for tid, weight in weights.items():
            if self.plan.targets[tid].serving.both_factors:
                weights[tid] = weight * self._scales_of(tid, weight.dtype, weight.device)
        if not torch.compiler.is_compiling():
            # a count, not part of the computation: inside a compiled graph dynamo would guard on
            # this integer and recompile each time it changes (hot-swapped rings, say)
            self._generated += len(target_ids)
        return weights

    def _scales_of(self, target_id: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``rpg-lora-v1``: the per-value scales of a target's block (``F``'s gain, ``A``'s fixed scale)."""
        key = (target_id, dtype, device)
        scales = self._part_scales.get(key)
        if scales is None:
            entry = self.layout.targets[target_id]
            scales = part_scales(entry.shape, entry.kind, entry.rank, entry.gain, dtype=dtype, device=device)
            self._part_scales[key] = scales
        return scales

    def generate(self, target_ids: list[int]) -> dict[int, torch.Tensor]:
        """The full current value of the given targets, each in its own dtype and device
        (with autograd to the rings when grad is enabled). Targets whose update is added to
        the layer's output give their update only (``ΔW``, the low-rank factor ``F``, or the
        ``rpg-lora-v1`` block of ``F`` and ``A``)."""
        raw = self._raw(target_ids, with_base=True, pooled=False)
        return {tid: self._finish(tid, weight) for tid, weight in raw.items()}

    def _finish(self, target_id: int, weight: torch.Tensor) -> torch.Tensor:
        target = self.plan.targets[target_id]
        if target.serving.added_to_output:
            return weight
        base = self._merged_base(target_id)
        dtype, device = (base.dtype, base.device) if base is not None else (target.dtype, target.device)
        return weight if weight.dtype == dtype and weight.device == device else weight.to(device=device, dtype=dtype)

    def _weight(self, target_id: int) -> torch.Tensor:
        """One target's weight for a running owner (pooled memory, except in compiled graphs,
        whose memory the compiler plans)."""
        raw = self._raw([target_id], with_base=True, pooled=not torch.compiler.is_compiling())[target_id]
        return self._finish(target_id, raw)

    def _update(self, target_id: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``ΔW`` of an additive (quantized-base) target, the factor ``F`` of a low-rank one, or
        the block of ``F`` and ``A`` of an ``rpg-lora-v1`` one, in ``dtype`` on ``device``.
        (Low-rank factors are small: not pooled, so no buffer is held between steps.)"""
        pooled = self.plan.targets[target_id].serving.pooled_update and not torch.compiler.is_compiling()
        raw = self._raw([target_id], with_base=False, pooled=pooled)[target_id]
        return raw if raw.dtype == dtype and raw.device == device else raw.to(device=device, dtype=dtype)

    def projection(self, target_id: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The fixed projection ``P`` (``[rank, in]``) of a low-rank target, regenerated from
        the seed at each use (a few thousand sign hashes; nothing is kept between steps)."""
        target = self.layout.targets[target_id]
        in_features, _ = features(target.shape, target.kind)
        return projection(self.plan.seed, target.name, target.rank, in_features, dtype=dtype, device=device)

    def dense_update(self, target_id: int, generated: torch.Tensor) -> torch.Tensor:
        """What ``generate`` gave for a target, as a tensor of its weight's shape: a low-rank
        factor ``F`` becomes ``F P``, an ``rpg-lora-v1`` block ``F (P + A)`` (in the layout of
        the weight); anything else is itself."""
        serving = self.plan.targets[target_id].serving
        if not serving.low_rank:
            return generated
        target = self.layout.targets[target_id]
        proj = self.projection(target_id, generated.dtype, generated.device)
        if serving.both_factors:
            return lora_delta_weight(generated, proj, target.shape, target.kind, target.rank)
        return delta_weight(generated, proj, target.kind)

    # ------------------------------------------------------------------ inference cache

    def _cache_key(self) -> tuple:
        rings = tuple(
            (name, ring._version, ring.data_ptr(), ring.device, ring.dtype)
            for name, ring in ((n, self.ring(n)) for n in self.layout.rings)
        )
        bases = tuple(
            (tid, base.data_ptr(), base._version, base.dtype, base.device)
            for tid in range(len(self.plan.targets))
            if (base := self._merged_base(tid)) is not None
        )
        return rings, bases, tuple((t.dtype, t.device) for t in self.plan.targets)

    def inference_cache_applies(self) -> bool:
        """Weights are reused across forwards without grad while the model is in eval mode
        (not in compiled graphs: they generate each layer's weight, always current)."""
        return (
            self.plan.inference_cache
            and not torch.is_grad_enabled()
            and not self.root.training
            and not torch.compiler.is_compiling()
        )

    def materialized(self) -> dict[int, torch.Tensor]:
        """All weights generated without grad, reused until a ring changes."""
        key = self._cache_key()
        if self._materialized is None or self._materialized_key != key:
            self.drop_inference_weights()  # free the stale copy before making a new one
            with torch.no_grad():
                self._materialized = self.generate(list(range(len(self.layout.targets))))
            self._materialized_key = key
        return self._materialized

    def drop_inference_weights(self) -> None:
        """Forget the weights kept for inference (regenerated on next use)."""
        self._materialized = None
        self._materialized_key = None

    def clear_cache(self) -> None:
        """Drop the inference weights and the reusable buffers (index caches stay)."""
        self.drop_inference_weights()
        self.pool.clear()

    def begin_forward(self) -> None:
        """Called by ``RPGModel.forward``: training frees the inference copy."""
        if torch.is_grad_enabled() and self._materialized is not None:
            self.drop_inference_weights()

    # ------------------------------------------------------------------ owners

    def check_enabled(self) -> None:
        """Raise ``RPGStateError`` once the model was unloaded."""
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
        target = self.plan.targets[target_id]
        if self._placeholders is not None:
            return torch.empty(target.entry.shape, dtype=target.dtype, device=self._placeholders)
        if target.serving.adds_base and target_id not in self._scope_depth:
            self.check_enabled()
            return target.base()
        return self.tensor(target_id)

    def tensor(self, target_id: int) -> torch.Tensor:
        """The current value of a generated tensor (``RPGModel.generated_weights``)."""
        self.check_enabled()
        if not self.update_enabled:
            base = self.plan.targets[target_id].base()
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
        return self.plan.regenerate and torch.is_grad_enabled() and not torch.compiler.is_compiling()

    def run_rowwise_embedding(self, module: nn.Embedding, target_id: int, args: tuple, kwargs: dict) -> torch.Tensor:
        """``module(ids)`` for an untied plain ``nn.Embedding``: only the looked-up rows."""
        self.check_enabled()
        if len(args) + len(kwargs) != 1:
            raise TypeError(f"{type(module).__name__}.forward() takes one input tensor")
        ids = args[0] if args else next(iter(kwargs.values()))
        target = self.plan.targets[target_id]
        if not self.update_enabled:
            weight = target.base()
        elif self.inference_cache_applies():
            weight = self.materialized()[target_id]
        else:
            return embedding_rows(module, target, self.ring(target.entry.ring), self.indices, ids)
        return F.embedding(ids, weight, module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, module.sparse)  # fmt: skip

    def run_owner(
        self,
        module: nn.Module,
        sources: dict[str, Any],  # attribute -> parametrize.GeneratedSource
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run an owner's own ``forward`` with its generated weights alive for the call."""
        self.check_enabled()
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
            if self.plan.targets[source.target_id].serving.added_to_output:
                output = self._add_update(source.target_id, args, kwargs, output)
        return output

    def _add_update(self, target_id: int, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        """``output + x · ΔWᵀ`` for a quantized linear base, ``output + (x Pᵀ) Fᵀ`` for a
        low-rank target, ``output + (x (P + A)ᵀ) Fᵀ`` for an ``rpg-lora-v1`` one (the layer's
        own forward made ``output``)."""
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
        serving = self.plan.targets[target_id].serving
        if serving.low_rank:
            proj = self.projection(target_id, x.dtype, x.device)
            if serving.both_factors:
                entry = self.layout.targets[target_id]
                delta, a = split_factors(delta, entry.shape, entry.kind, entry.rank)
                proj = proj + a
            return output + F.linear(F.linear(x, proj), delta).to(output.dtype)
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
            self.plan.targets[target_id].serving.added_to_output,
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
