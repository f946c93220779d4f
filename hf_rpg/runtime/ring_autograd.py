"""The autograd function that generates weights from a ring, and its CPU/GPU kernels.

``_GenerateFromRing`` turns a ring into one or more generated tensors and scatter-adds
their gradients back into the ring. It saves nothing per generated element: indices come
from ``RingIndices`` (the int32 cache, or recomputed from the seed), so backward needs only the
ring's size. When each weight is generated, and for how long it lives, is the engine's
business (``hf_rpg.runtime.engine``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..spec import index_encoding, index_kernels

if TYPE_CHECKING:
    from ..format.manifest import TargetLayout
    from .index_cache import RingIndices


@dataclass(frozen=True)
class _Request:
    """One tensor to generate: its layout and, in delta mode, the frozen base it adds to."""

    target: TargetLayout
    base: torch.Tensor | None


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
    layout instead, with the same weights (see ``index_encoding``). Indices come from ``RingIndices`` (the
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
        indices: RingIndices,
        ring_name: str,
        requests: list[_Request],
        out: torch.Tensor | None,
    ):
        ctx.indices, ctx.ring_name, ctx.requests = indices, ring_name, requests
        ctx.ring_size = ring.shape[0]
        ctx.set_materialize_grads(False)
        ctx.kernels = _kernels_apply(indices, ring)
        if ctx.kernels:
            ctx.sign_bit = False
            return _kernel_gather(indices, ring_name, ring.detach(), requests, out)
        sign_bit = indices.sign_bit_layout(ring_name, ring.device)
        # detached: grad mode is per thread, and the worker threads have it on
        table = ring.detach() if sign_bit else torch.cat((ring, ring.neg()))
        ctx.sign_bit = sign_bit
        total = sum(r.target.numel for r in requests)
        if not sign_bit and _fused_applies(indices, ring.device):
            return _fused_gather(indices, ring_name, table, requests, out, total)
        workers = _workers(ring.device, total)
        outputs, jobs = [], []
        position = 0
        for request in requests:
            target = request.target
            index = indices.raw_indices(ring_name, target, ring.device)
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
            outputs.append(values.view(target.generated_shape))
        _run(workers, jobs)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        n = ctx.ring_size
        work = [(r, g) for r, g in zip(ctx.requests, grads, strict=True) if g is not None]
        if not work:
            return None, None, None, None, None
        device, dtype = work[0][1].device, work[0][1].dtype
        if ctx.kernels:
            return _kernel_scatter(ctx.indices, ctx.ring_name, work, n, dtype), None, None, None, None
        if not ctx.sign_bit and _fused_applies(ctx.indices, device):
            grad_signed = _fused_scatter(ctx.indices, ctx.ring_name, work, 2 * n, dtype)
            return grad_signed[:n] - grad_signed[n:], None, None, None, None
        total = sum(r.target.numel for r, _ in work)
        workers = _workers(device, total)
        spans = []  # (index, grad, gain) pieces, dealt to the workers round-robin
        for request, grad in work:
            index = ctx.indices.raw_indices(ctx.ring_name, request.target, device)
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


def _kernels_apply(indices: RingIndices, ring: torch.Tensor) -> bool:
    """Without an index cache, the compiled kernels of ``index_kernels`` compute indices and
    signs inside the gather and the scatter: numba on CPU (about 5x faster than the tensor
    path), Triton on CUDA devices (one kernel per target instead of the tensor path's dozens
    of ops per chunk of positions)."""
    return not indices.cache_indices and index_kernels.available(ring.device)


def _kernel_gather(
    indices: RingIndices, ring_name: str, ring: torch.Tensor, requests: list[_Request], out: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    key, total = indices.keys[ring_name], indices.layout.rings[ring_name].elements
    outputs, position = [], 0
    for request in requests:
        target = request.target
        values = None
        if out is not None:
            values = out.narrow(0, position, target.numel)
            position += target.numel
        values = index_kernels.generate_span(ring, key, total, target.offset, target.numel, target.gain, out=values)
        if request.base is not None:
            values.add_(request.base.reshape(-1).to(values.dtype))
        outputs.append(values.view(target.generated_shape))
    return tuple(outputs)


def _kernel_scatter(
    indices: RingIndices, ring_name: str, work: list[tuple[_Request, torch.Tensor]], n: int, dtype: torch.dtype
) -> torch.Tensor:
    key, total = indices.keys[ring_name], indices.layout.rings[ring_name].elements
    grad_ring = torch.zeros(n, dtype=dtype, device=work[0][1].device)
    for request, grad in work:
        index_kernels.accumulate_span_grad(
            grad_ring, key, total, request.target.offset, grad.reshape(-1), request.target.gain
        )
    return grad_ring


def _fused_applies(indices: RingIndices, device: torch.device) -> bool:
    """Whether a ring's targets are generated with a few whole-ring kernels instead of a
    few per target: on GPUs, where a small model's step is bound by kernel launches and
    each target's gather would be one more launch. Needs the index cache (contiguous
    indices for consecutive targets)."""
    return device.type != "cpu" and indices.cache_indices


def _contiguous_runs(targets: list[TargetLayout]) -> list[tuple[int, int]]:
    """(first, stop) ranges of list positions whose targets follow one another in the ring."""
    runs, first = [], 0
    for i in range(1, len(targets) + 1):
        if i == len(targets) or targets[i].offset != targets[i - 1].offset + targets[i - 1].numel:
            runs.append((first, i))
            first = i
    return runs


def _fused_gather(
    indices: RingIndices,
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
    index = indices.cached(ring_name, table.device)
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
    return tuple(v.view(t.generated_shape) for v, t in zip(views, targets, strict=True))


def _fused_scatter(
    indices: RingIndices, ring_name: str, work: list[tuple[_Request, torch.Tensor]], size: int, dtype: torch.dtype
) -> torch.Tensor:
    """The backward in one scatter-add per run of consecutive targets: the gradients are
    concatenated and scaled by their gains with a multi-tensor op first."""
    device = work[0][1].device
    index = indices.cached(ring_name, device)
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
        index_encoding.gather_cached(table, index.narrow(0, start, length), piece, gain, part, sign_bit)

    return job


def _scatter_job(grad_table: torch.Tensor, sign_bit: bool, spans: list[tuple[torch.Tensor, torch.Tensor, float]]):
    def job() -> None:
        for index, grad, gain in spans:
            index_encoding.scatter_cached_(grad_table, index, grad, gain, sign_bit)

    return job
