"""Generating weights from the ring(s): index caches, autograd, and when to (re)generate.

When generation happens:

- **Training** (grad enabled): each ``RPGModel.forward`` generates every targeted weight
  once, up front, and all owners use those tensors for the rest of the pass. Generating
  before the base model runs keeps generation outside gradient-checkpointed regions, so
  recomputation sees the same weight tensors. Untied embeddings generate only the rows
  that are looked up.
- **Inference** (no grad, ``inference_cache=True``): the weights are generated once and
  reused until a ring changes (its version counter moves, as every optimizer step and
  ``load_state_dict`` does). ``RPGModel.clear_cache()`` drops them.
- **Elsewhere** (a weight read outside a forward, with grad): generated on each access.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import index_layout
from .generator import GeneratorKey, build_signed_index, derive_key, signed_indices
from .layout import Layout, TargetLayout

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import nn


@dataclass(frozen=True)
class _Request:
    """One tensor to generate: its layout and, in delta mode, the frozen base it adds to."""

    target: TargetLayout
    base: torch.Tensor | None


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


# torch runs index_select and index_add_ on one CPU thread; above this many elements the
# gather and the scatter are split in chunks over torch.get_num_threads() Python threads
# (torch releases the GIL inside its kernels).
PARALLEL_CHUNK = 1 << 18
_pool: ThreadPoolExecutor | None = None


def _workers(device: torch.device, elements: int) -> int:
    if device.type != "cpu" or torch.compiler.is_compiling():
        return 1  # GPU kernels are parallel already; under torch.compile, no Python threads
    return max(1, min(torch.get_num_threads(), elements // PARALLEL_CHUNK))


def _run(workers: int, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on ``workers`` threads (in the calling thread when ``workers`` is 1)."""
    global _pool
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf_rpg")
    for future in [_pool.submit(job) for job in jobs]:
        future.result()


def _chunks(length: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` near-equal (start, length) spans of ``range(length)``."""
    bounds = [length * i // parts for i in range(parts + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


class _GenerateFromRing(torch.autograd.Function):
    """``W_t = gain_t * [ring, -ring][index_t]`` (+ ``base_t``) for several targets of one ring.

    Backward scatter-adds ``gain_t * dL/dW_t`` into the signed ring and folds it:
    ``grad_ring = grad_signed[:N] - grad_signed[N:]``; large CPU rings use the sign-bit
    layout instead, with the same weights (see ``index_layout``). Indices come from the engine (the
    int32 cache, or recomputed from the seed), so nothing per-element is saved for backward.
    With ``out`` (a flat buffer, one slice per request) the weights are written into it
    instead of fresh memory: first-touching fresh pages costs as much as the gather itself.
    On CPU with several torch threads the gather and the scatter run in parallel chunks;
    the weights are the same bit for bit, the ring gradient is summed per thread. On GPUs
    the targets are generated together (``_fused_gather`` / ``_fused_scatter``): a few
    kernels per ring instead of a few per target.
    """

    @staticmethod
    def forward(
        ctx,
        ring: torch.Tensor,
        engine: WeightEngine,
        ring_name: str,
        requests: list[_Request],
        out: torch.Tensor | None,
    ):
        sign_bit = engine.sign_bit_layout(ring_name, ring.device)
        # detached: grad mode is per thread, and the worker threads have it on
        table = ring.detach() if sign_bit else torch.cat((ring, ring.neg()))
        ctx.engine, ctx.ring_name, ctx.requests = engine, ring_name, requests
        ctx.ring_size, ctx.sign_bit = ring.shape[0], sign_bit
        ctx.set_materialize_grads(False)
        total = sum(r.target.numel for r in requests)
        if not sign_bit and _fused_applies(engine, ring.device):
            return _fused_gather(engine, ring_name, table, requests, out, total)
        workers = _workers(ring.device, total)
        outputs, jobs = [], []
        position = 0
        for request in requests:
            target = request.target
            index = engine.raw_indices(ring_name, target, ring.device)
            if out is not None:
                values = out.narrow(0, position, target.numel)
                position += target.numel
            else:
                values = torch.empty(target.numel, dtype=ring.dtype, device=ring.device)
            base = request.base.reshape(-1) if request.base is not None else None
            if base is not None and base.dtype != values.dtype:
                base = base.to(values.dtype)
            for start, length in _chunks(target.numel, max(1, workers * target.numel // total)):
                jobs.append(_gather_job(table, sign_bit, index, values, start, length, target.gain, base))
            outputs.append(values.view(target.shape))
        _run(workers, jobs)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        n = ctx.ring_size
        work = [(r, g) for r, g in zip(ctx.requests, grads, strict=True) if g is not None]
        if not work:
            return None, None, None, None, None
        device, dtype = work[0][1].device, work[0][1].dtype
        if not ctx.sign_bit and _fused_applies(ctx.engine, device):
            grad_signed = _fused_scatter(ctx.engine, ctx.ring_name, work, 2 * n, dtype)
            return grad_signed[:n] - grad_signed[n:], None, None, None, None
        total = sum(r.target.numel for r, _ in work)
        workers = _workers(device, total)
        spans = []  # (index, grad, gain) pieces, dealt to the workers round-robin
        for request, grad in work:
            index = ctx.engine.raw_indices(ctx.ring_name, request.target, device)
            flat = grad.reshape(-1)
            for start, length in _chunks(flat.numel(), max(1, workers * flat.numel() // total)):
                spans.append((index.narrow(0, start, length), flat.narrow(0, start, length), request.target.gain))
        size = n if ctx.sign_bit else 2 * n
        partials = [torch.zeros(size, dtype=dtype, device=device) for _ in range(min(workers, len(spans)))]
        jobs = [_scatter_job(partial, ctx.sign_bit, spans[i :: len(partials)]) for i, partial in enumerate(partials)]
        _run(len(partials), jobs)
        grad_table = partials[0]
        for partial in partials[1:]:
            grad_table += partial
        grad_ring = grad_table if ctx.sign_bit else grad_table[:n] - grad_table[n:]
        return grad_ring, None, None, None, None


def _fused_applies(engine: WeightEngine, device: torch.device) -> bool:
    """Whether a ring's targets are generated with a few whole-ring kernels instead of a
    few per target: on GPUs, where a small model's step is bound by kernel launches and
    each target's gather would be one more launch. Needs the index cache (contiguous
    indices for consecutive targets)."""
    return device.type != "cpu" and engine.cache_indices


def _contiguous_runs(targets: list[TargetLayout]) -> list[tuple[int, int]]:
    """(first, stop) ranges of list positions whose targets follow one another in the ring."""
    runs, first = [], 0
    for i in range(1, len(targets) + 1):
        if i == len(targets) or targets[i].offset != targets[i - 1].offset + targets[i - 1].numel:
            runs.append((first, i))
            first = i
    return runs


def _fused_gather(
    engine: WeightEngine,
    ring_name: str,
    table: torch.Tensor,
    requests: list[_Request],
    out: torch.Tensor | None,
    total: int,
) -> tuple[torch.Tensor, ...]:
    """The forward in one gather per run of consecutive targets, then the gains and the
    delta bases as multi-tensor (foreach) ops: the same arithmetic per element, so the
    same bits as the per-target path."""
    if out is None:
        out = torch.empty(total, dtype=table.dtype, device=table.device)
    index = engine._ring_index(ring_name, table.device)
    targets = [r.target for r in requests]
    views, position = [], 0
    for target in targets:
        views.append(out.narrow(0, position, target.numel))
        position += target.numel
    position = 0
    for first, stop in _contiguous_runs(targets):
        length = sum(t.numel for t in targets[first:stop])
        span = index.narrow(0, targets[first].offset, length)
        torch.index_select(table, 0, span, out=out.narrow(0, position, length))
        position += length
    torch._foreach_mul_(views, [t.gain for t in targets])
    based = [(v, r.base.reshape(-1).to(v.dtype)) for v, r in zip(views, requests, strict=True) if r.base is not None]
    if based:
        torch._foreach_add_([v for v, _ in based], [b for _, b in based])
    return tuple(v.view(t.shape) for v, t in zip(views, targets, strict=True))


def _fused_scatter(
    engine: WeightEngine, ring_name: str, work: list[tuple[_Request, torch.Tensor]], size: int, dtype: torch.dtype
) -> torch.Tensor:
    """The backward in one scatter-add per run of consecutive targets: the gradients are
    concatenated and scaled by their gains with a multi-tensor op first."""
    device = work[0][1].device
    index = engine._ring_index(ring_name, device)
    grad_signed = torch.zeros(size, dtype=dtype, device=device)
    targets = [r.target for r, _ in work]
    for first, stop in _contiguous_runs(targets):
        grads = torch.cat([g.reshape(-1).to(dtype) for _, g in work[first:stop]])
        pieces = list(grads.split([t.numel for t in targets[first:stop]]))
        torch._foreach_mul_(pieces, [t.gain for t in targets[first:stop]])
        span = index.narrow(0, targets[first].offset, grads.numel())
        grad_signed.index_add_(0, span, grads)
    return grad_signed


def _gather_job(
    table: torch.Tensor,
    sign_bit: bool,
    index: torch.Tensor,
    values: torch.Tensor,
    start: int,
    length: int,
    gain: float,
    base: torch.Tensor | None,
) -> Callable[[], None]:
    def job() -> None:
        piece = values.narrow(0, start, length)
        part = base.narrow(0, start, length) if base is not None else None
        if sign_bit:
            index_layout.gather_sign_bit(table, index.narrow(0, start, length), piece, gain, part)
            return
        torch.index_select(table, 0, index.narrow(0, start, length), out=piece)
        piece.mul_(gain)
        if part is not None:
            piece.add_(part)

    return job


def _scatter_job(grad_table: torch.Tensor, sign_bit: bool, spans: list[tuple[torch.Tensor, torch.Tensor, float]]):
    def job() -> None:
        for index, grad, gain in spans:
            if sign_bit:
                index_layout.scatter_sign_bit_(grad_table, index, grad, gain)
            else:
                grad_table.index_add_(0, index, grad.to(grad_table.dtype), alpha=gain)

    return job


class WeightEngine:
    """Generates the targeted tensors of one RPG model from its rings.

    It holds the layout, the generator keys, the int32 index caches (never saved) and the
    per-pass and inference weight caches. Rings are looked up on ``root.rpg_rings`` at each
    use, so device moves, dtype casts and wrappers that swap Parameters are followed.
    """

    def __init__(
        self,
        root: nn.Module,
        layout: Layout,
        seed: int,
        *,
        delta_bases: dict[int, tuple[nn.Module, str]] | None = None,
        rowwise: set[int] | None = None,
        cache_indices: bool = True,
        inference_cache: bool = True,
    ) -> None:
        self.root = root
        self.layout = layout
        self.seed = seed
        self.keys: dict[str, GeneratorKey] = {name: derive_key(seed, name) for name in layout.rings}
        self.delta_bases = delta_bases or {}
        self.rowwise = rowwise or set()
        self.cache_indices = cache_indices
        self.inference_cache = inference_cache
        self._index: dict[str, torch.Tensor] = {}
        self._sign_bit: dict[str, bool] = {}
        self._index_for: dict[str, int] = {}  # ring itemsize the layout was picked for
        self._pass_weights: dict[int, torch.Tensor] | None = None
        self._pass_depth = 0
        self._materialized: dict[int, torch.Tensor] | None = None
        self._materialized_key: tuple | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self.enabled = True

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
        ring = self.layout.rings[ring_name]
        index = self._index.get(ring_name)
        itemsize = self._ring_itemsize(ring_name)
        if index is not None and index.device == device and self._index_for.get(ring_name) == itemsize:
            return index
        was_sign_bit = self._sign_bit.get(ring_name, False)
        if index is None:
            index = build_signed_index(ring.elements, ring.size, self.keys[ring_name], device=device)
            was_sign_bit = False
        elif index.device != device:
            index = index.to(device)
        sign_bit = index_layout.use_sign_bit(ring.size, itemsize, index.dtype, device)
        if sign_bit and not was_sign_bit:
            index = index_layout.signed_to_sign_bit_(index, ring.size)
        elif was_sign_bit and not sign_bit:
            index = index_layout.sign_bit_to_signed(index, ring.size)
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
            return index_layout.sign_bit_to_signed(index, self.layout.rings[ring_name].size)
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
        slot = self.delta_bases.get(target_id)
        return None if slot is None else slot[0]._parameters[slot[1]]

    def _reusable_buffer(self, ring_name: str, ring: torch.Tensor, numel: int) -> torch.Tensor:
        """The ring's flat output buffer for one training pass, reused when no graph still
        holds the previous pass's weights (gradient accumulation included), else fresh."""
        buffer = self._buffers.get(ring_name)
        if (
            buffer is None
            or buffer.numel() != numel
            or buffer.device != ring.device
            or buffer.dtype != ring.dtype
            or not buffer_is_free(buffer)
        ):
            buffer = torch.empty(numel, dtype=ring.dtype, device=ring.device)
            self._buffers[ring_name] = buffer
        return buffer

    def generate(self, target_ids: list[int], *, reuse_buffer: bool = False) -> dict[int, torch.Tensor]:
        """Generate the given targets (with autograd to the rings when grad is enabled).

        ``reuse_buffer`` writes them into the ring's reusable buffer; only for tensors that
        live no longer than one pass (never for the inference cache).
        """
        by_ring: dict[str, list[int]] = {}
        for tid in target_ids:
            by_ring.setdefault(self.layout.targets[tid].ring, []).append(tid)
        weights: dict[int, torch.Tensor] = {}
        for ring_name, ids in by_ring.items():
            ring = self.ring(ring_name)
            requests = [_Request(self.layout.targets[i], self._base(i)) for i in ids]
            out = None
            if reuse_buffer:
                out = self._reusable_buffer(ring_name, ring, sum(r.target.numel for r in requests))
            outputs = _GenerateFromRing.apply(ring, self, ring_name, requests, out)
            weights.update(zip(ids, outputs, strict=True))
        return weights

    def _cache_key(self) -> tuple:
        return tuple(
            (name, ring._version, ring.data_ptr(), ring.device, ring.dtype)
            for name, ring in ((n, self.ring(n)) for n in self.layout.rings)
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
        """Drop the inference weights and the training output buffers (index caches stay)."""
        self._drop_inference_weights()
        self._buffers.clear()

    @contextmanager
    def forward_pass(self) -> Iterator[None]:
        """Scope of one model forward: weights generated once, shared by every owner."""
        if self._pass_depth > 0:
            self._pass_depth += 1
            try:
                yield
            finally:
                self._pass_depth -= 1
            return
        if torch.is_grad_enabled():
            self._drop_inference_weights()  # training resumed: free the inference copy
            eager = [i for i in range(len(self.layout.targets)) if i not in self.rowwise]
            weights = self.generate(eager, reuse_buffer=True)
        elif self.inference_cache:
            weights = dict(self.materialized())
        else:
            weights = self.generate(list(range(len(self.layout.targets))))
        self._pass_weights = weights
        self._pass_depth = 1
        try:
            yield
        finally:
            self._pass_depth = 0
            self._pass_weights = None

    def tensor(self, target_id: int) -> torch.Tensor:
        """The current value of a generated tensor (what ``module.weight`` returns)."""
        if not self.enabled:
            raise RuntimeError("this RPG model was unloaded; use the model merge_and_unload() returned")
        if self._pass_weights is not None:
            weight = self._pass_weights.get(target_id)
            if weight is None:
                weight = self._pass_weights[target_id] = self.generate([target_id])[target_id]
            return weight
        if not torch.is_grad_enabled() and self.inference_cache:
            return self.materialized()[target_id]
        return self.generate([target_id])[target_id]

    def _full_weight_if_ready(self, target_id: int) -> torch.Tensor | None:
        if self._pass_weights is not None and target_id in self._pass_weights:
            return self._pass_weights[target_id]
        if not torch.is_grad_enabled() and self.inference_cache:
            return self.materialized()[target_id]
        return None

    def embedding(self, module: nn.Embedding, target_id: int, ids: torch.Tensor) -> torch.Tensor:
        """``module(ids)`` for an untied embedding, generating only the looked-up rows."""
        weight = self._full_weight_if_ready(target_id)
        if weight is not None:
            return F.embedding(ids, weight, module.padding_idx, module.max_norm, module.norm_type,
                               module.scale_grad_by_freq, module.sparse)  # fmt: skip
        target = self.layout.targets[target_id]
        checkable = not ids.is_cuda and not torch.compiler.is_compiling()  # a host sync / a graph break
        if checkable and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= target.shape[0]):
            # F.embedding's own check; elsewhere the index cache lookup fails instead
            raise IndexError(f"index out of range in self: ids must be in [0, {target.shape[0]})")
        ring = self.ring(target.ring)
        dim = target.shape[1]
        columns = torch.arange(dim, device=ids.device, dtype=torch.int64)
        positions = (ids.to(torch.int64).unsqueeze(-1) * dim + columns).add_(target.offset)
        index = self._indices_at(target.ring, positions.flatten())
        values = index_layout.lookup(ring, index, self.sign_bit_layout(target.ring, ring.device))
        rows = (values * target.gain).view(*ids.shape, dim)
        base = self._base(target_id)
        if base is not None:
            rows = F.embedding(ids, base) + rows.to(base.dtype)
        if module.padding_idx is not None and rows.requires_grad:
            # as F.embedding does: the padding row receives no gradient
            padding = (ids == module.padding_idx).unsqueeze(-1)
            rows = torch.where(padding, rows.detach(), rows)
        return rows
