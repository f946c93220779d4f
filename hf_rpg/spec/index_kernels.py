"""Fused ``rpg-v1`` kernels: indices and signs computed inside the gather and the scatter.

``generate_span`` returns ``gain * s(q) * ring[q mod N]`` with ``q = permute(start + j)``,
the weights that ``gain * [ring, -ring][build_signed_index(...)]`` gives, bit for bit, but
without ever storing a per-element index: the Feistel network, the cycle-walking, the sign
hash and the ``mod N`` run inside the kernel, block by block in the CPU's L1 cache.
``accumulate_span_grad`` is its backward (a scatter-add into the ring gradient), and the
``*_at`` pair does the same at arbitrary positions (embedding rows).

On CPU the kernels are compiled by numba (LLVM; ``cache=True``, so a process after the
first loads the machine code from ``__pycache__`` instead of compiling it); on CUDA devices
by Triton (``hf_rpg.spec.triton_kernels``, every ring size and dtype), when ``triton`` imports
(the ``hf_rpg[triton]`` extra). Where neither serves, for CPU ring dtypes without a fused
kernel, and for CPU rings beyond the uint32 domain (``total > 2**32`` or ``N >= 2**30``),
the same values come from the generator's tensor path (or a numba int64 index kernel) and
torch's gather / scatter.

Exactness. While ``total <= 2**32`` every value of the algorithm fits in 32 bits, so the
kernels use uint32 arithmetic (which LLVM vectorises); ``q mod N`` is a multiply-high by a
precomputed magic number (Granlund-Montgomery), exact for every ``q < 2**32``. The value is
``(ring[k] * ±1) * gain`` in the ring's dtype with ``gain`` rounded to float32 first (float64
for float64 rings), which is what torch's ``mul_(gain)`` computes; bfloat16 is computed in
float32 and rounded to nearest-even, as torch does. The ring gradients agree with torch's
``index_add_`` to rounding only: the order of summation differs (here: position order; with
several threads each thread sums its own part of the positions into its own buffer).

Under ``torch.compile`` the four functions are called through torch.library custom ops
(``torch.ops.hf_rpg.*``, with fake kernels for their shapes), so a graph that uses them has
no graph break.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .generator import (
    GeneratorKey,
    build_signed_index,
    signed_indices,
    uint32_path_applies,
)
from .kernel_arguments import (
    check_common,
    check_gain,
    check_grad,
    check_int,
    check_span,
    kernel_params,
    kernel_params64,
    numpy_view,
)

# Set HF_RPG_NO_KERNELS=1 to force the tensor path (a debugging switch).
_DISABLED = os.environ.get("HF_RPG_NO_KERNELS", "") not in ("", "0")

# Fewest positions per worker thread worth the hand-off to a pool thread and, in the
# backward, the worker's own gradient buffer.
MIN_PER_WORKER = 1 << 16
# Positions per chunk of the tensor (fallback) path: bounds its temporary memory.
FALLBACK_CHUNK = 1 << 18

_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_GRAD_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_kernels_module = None  # hf_rpg.spec._numba_kernels once imported; False when numba is missing
_triton_module = None  # hf_rpg.spec.triton_kernels once imported; False when triton is missing
_pool: ThreadPoolExecutor | None = None  # worker threads beyond the caller's, made on first use


def _kernels():
    """The numba kernels module, imported on first use; None without numba."""
    global _kernels_module
    if _kernels_module is None:
        try:
            from . import _numba_kernels
        except ImportError:  # numba unusable (e.g. with this NumPy)
            _kernels_module = False
        else:
            _kernels_module = _numba_kernels if _numba_kernels.numba is not None else False
    return _kernels_module or None


def _triton():
    """The Triton kernels module, imported on first use (only for GPU tensors: importing
    triton takes time); None without triton."""
    global _triton_module
    if _triton_module is None:
        try:
            from . import triton_kernels
        except ImportError:  # no triton (the hf_rpg[triton] extra), or one that cannot load here
            _triton_module = False
        else:
            _triton_module = triton_kernels
    return _triton_module or None


def _numba_serves(device: torch.device) -> bool:
    return not _DISABLED and device.type == "cpu" and _kernels() is not None


def triton_serves(device: torch.device | str) -> bool:
    """Whether the Triton kernels serve ``device``: CUDA devices when triton imports (on CPU
    numba comes first; Triton's interpreter serves CPU tensors only where numba is missing)."""
    device = torch.device(device)
    if _DISABLED or device.type == "meta" or _numba_serves(device):
        return False
    if device.type == "cpu" and (_triton_module is None or _triton_module is False):
        return False  # never import triton for CPU tensors
    kernels = _triton()
    return kernels is not None and kernels.available(device)


def triton_for(device: torch.device | str):
    """The Triton kernels module (``hf_rpg.spec.triton_kernels``) when it serves ``device``, else None."""
    return _triton() if triton_serves(device) else None


def available(device: torch.device | str) -> bool:
    """Whether compiled kernels serve ``device``: numba on CPU, Triton on CUDA devices, when
    they import and ``HF_RPG_NO_KERNELS`` is not set. Elsewhere the functions of this module
    still work, on the generator's tensor path."""
    device = torch.device(device)
    return _numba_serves(device) or triton_serves(device)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_positions(positions: torch.Tensor, total: int) -> torch.Tensor:
    """``positions`` as a flat contiguous int64 tensor, every value checked in ``[0, total)``."""
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"positions must be an integer tensor, got {getattr(positions, 'dtype', type(positions))}")
    flat = positions.reshape(-1).to(torch.int64).contiguous()
    if flat.numel() == 0:
        return flat
    if _numba_serves(flat.device):
        low, high = _kernels()._min_max(numpy_view(flat))
    else:
        low, high = (int(v) for v in torch.aminmax(flat))  # one pass; a host sync on GPUs
    if low < 0 or high >= total:
        raise ValueError(f"positions must be in [0, total={total}), got values from {int(low)} to {int(high)}")
    return flat


def _fused(ring: torch.Tensor, total: int, n: int) -> bool:
    return _numba_serves(ring.device) and uint32_path_applies(total, n)


def _bits16(tensor: torch.Tensor) -> np.ndarray:
    return numpy_view(tensor.detach())


def _worker_spans(count: int, least: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) pieces of ``count`` positions, one per worker thread (as many as torch
    has threads), each of at least ``least`` (default ``MIN_PER_WORKER``) positions."""
    workers = max(1, min(torch.get_num_threads(), count // max(1, least or MIN_PER_WORKER)))
    bounds = [count * i // workers for i in range(workers + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


def _in_threads(jobs: list) -> None:
    """Run the jobs, the first in this thread and the others in the module's thread pool
    (the kernels release the GIL)."""
    global _pool
    if len(jobs) > 1 and (_pool is None or _pool._max_workers < len(jobs) - 1):
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=len(jobs) - 1, thread_name_prefix="hf_rpg_kernel")
    futures = [_pool.submit(job) for job in jobs[1:]]
    try:
        jobs[0]()
    finally:
        for future in futures:
            future.result()


def _fused_gather(ring, total, n, key, start, positions, out, gain) -> None:
    """Fill ``out`` (flat, contiguous) with the generated values, in worker-thread pieces."""
    p = kernel_params(total, n, key)
    table = ring.detach().reshape(-1).contiguous()
    empty = np.empty(0, np.int64)
    jobs = []
    for offset, length in _worker_spans(out.numel()):
        piece = out[offset : offset + length]
        where = empty if positions is None else numpy_view(positions[offset : offset + length])
        first = start + offset if positions is None else 0
        if ring.dtype == torch.bfloat16:
            unused = np.empty(0, np.float32)
            args = (
                _kernels()._map_bf16,
                _bits16(table),
                unused,
                _bits16(piece),
                first,
                where,
                p,
                np.float32(gain),
                False,
            )
        else:
            kind = np.float64 if ring.dtype == torch.float64 else np.float32
            args = (
                _kernels()._map_float,
                numpy_view(table),
                numpy_view(piece.detach()),
                first,
                where,
                p,
                kind(gain),
                False,
            )
        jobs.append(lambda a=args: a[0](*a[1:]))
    _in_threads(jobs)


def _fused_scatter(grad_ring, total, n, key, start, positions, grad, gain) -> None:
    """Scatter-add into ``grad_ring`` (float32 / float64, flat, contiguous); worker threads
    after the first sum into their own buffers, added at the end."""
    p = kernel_params(total, n, key)
    empty = np.empty(0, np.int64)
    kind = np.float64 if grad_ring.dtype == torch.float64 else np.float32
    flat = grad.detach().reshape(-1).contiguous()
    if flat.dtype not in (torch.bfloat16, grad_ring.dtype):
        flat = flat.to(grad_ring.dtype)
    # a worker after the first sums into a buffer of the ring's size: worth it only when it
    # has at least as many positions to scatter
    spans = _worker_spans(flat.numel(), max(MIN_PER_WORKER, grad_ring.numel()))
    targets = [grad_ring] + [torch.zeros_like(grad_ring) for _ in spans[1:]]
    jobs = []
    for (offset, length), target in zip(spans, targets, strict=True):
        piece = flat[offset : offset + length]
        where = empty if positions is None else numpy_view(positions[offset : offset + length])
        first = start + offset if positions is None else 0
        if piece.dtype == torch.bfloat16:
            unused = np.empty(0, np.uint16)
            ring = numpy_view(target.detach())
            args = (_kernels()._map_bf16, unused, ring, _bits16(piece), first, where, p, kind(gain), True)
        else:
            args = (
                _kernels()._map_float,
                numpy_view(target.detach()),
                numpy_view(piece),
                first,
                where,
                p,
                kind(gain),
                True,
            )
        jobs.append(lambda a=args: a[0](*a[1:]))
    _in_threads(jobs)
    for partial in targets[1:]:
        grad_ring.add_(partial)


def _index_chunk(total: int, n: int, key: GeneratorKey, start: int, positions, count: int, device) -> torch.Tensor:
    """Signed-ring indices (``k + N * negative``) of one chunk of a span or of ``positions``."""
    if _numba_serves(torch.device(device)) and not uint32_path_applies(total, n):
        # int64 domain: the generator's int64 tensor path is slow on CPU, this kernel is exact too
        ring_index = np.empty(count, np.int64)
        negative = np.empty(count, np.bool_)
        where = np.empty(0, np.int64) if positions is None else numpy_view(positions)
        _kernels()._indices_u64(start, where, count, kernel_params64(total, n, key), ring_index, negative)
        return torch.from_numpy(ring_index + n * negative)
    if positions is None:
        return build_signed_index(total, n, key, start=start, stop=start + count, device=device)
    return signed_indices(positions, total, n, key)


def _tensor_gather(ring, total, n, key, start, positions, out, gain) -> None:
    """The tensor path: signed indices, then ``[ring, -ring][index] * gain``, chunk by chunk."""
    table = torch.cat((ring.detach().reshape(-1), ring.detach().reshape(-1).neg()))
    for begin in range(0, out.numel(), FALLBACK_CHUNK):
        count = min(FALLBACK_CHUNK, out.numel() - begin)
        where = None if positions is None else positions[begin : begin + count]
        index = _index_chunk(total, n, key, start + begin, where, count, ring.device)
        piece = out[begin : begin + count]
        torch.index_select(table, 0, index.to(ring.device), out=piece)
        piece.mul_(gain)


def _tensor_scatter(grad_ring, total, n, key, start, positions, grad, gain) -> None:
    flat = grad.detach().reshape(-1)
    grad_signed = torch.zeros(2 * n, dtype=grad_ring.dtype, device=grad_ring.device)
    for begin in range(0, flat.numel(), FALLBACK_CHUNK):
        count = min(FALLBACK_CHUNK, flat.numel() - begin)
        where = None if positions is None else positions[begin : begin + count]
        index = _index_chunk(total, n, key, start + begin, where, count, grad_ring.device)
        piece = flat[begin : begin + count].to(grad_ring.dtype)
        grad_signed.index_add_(0, index.to(grad_ring.device), piece, alpha=gain)
    grad_ring.add_(grad_signed[:n] - grad_signed[n:])


def _generate(ring, total, n, key, start, positions, count, gain, out) -> torch.Tensor:
    if out is None:
        out = torch.empty(count, dtype=ring.dtype, device=ring.device)
    else:
        if not isinstance(out, torch.Tensor) or out.numel() != count or out.dtype != ring.dtype:
            raise ValueError(f"out must be a {ring.dtype} tensor of {count} elements, got {out!r:.80}")
        if out.device != ring.device or not out.is_contiguous():
            raise ValueError(f"out must be contiguous and on {ring.device}")
    flat = out.view(-1)
    if count == 0:
        return flat
    if triton_serves(ring.device):
        _triton().gather(ring, key, total, start, positions, flat, gain)
    elif _fused(ring, total, n) and ring.dtype in _FUSED_DTYPES:
        _fused_gather(ring, total, n, key, start, positions, flat, gain)
    else:
        _tensor_gather(ring, total, n, key, start, positions, flat, gain)
    return flat


def _accumulate(grad_ring, total, n, key, start, positions, grad, gain) -> None:
    if grad.numel() == 0:
        return
    flat = grad_ring.view(-1)
    # a low-precision ring gradient (e.g. bfloat16) is summed in float32 and rounded once
    target = flat if flat.dtype in (torch.float32, torch.float64) else torch.zeros(n, device=flat.device)
    if triton_serves(grad_ring.device):
        _triton().scatter(target, key, total, start, positions, grad, gain)
    elif _fused(grad_ring, total, n) and grad.dtype in _GRAD_DTYPES:
        _fused_scatter(target, total, n, key, start, positions, grad, gain)
    else:
        _tensor_scatter(target, total, n, key, start, positions, grad, gain)
    if target is not flat:
        flat.add_(target)


# --------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------

# Under torch.compile the public functions call themselves through torch.library custom ops
# (below): dynamo must not trace into them (it would turn the NumPy scalars and arrays handed
# to numba into its own, which numba cannot type), and an op is one node of the graph, with
# no graph break.


def generate_span(
    ring: torch.Tensor,
    key: GeneratorKey,
    total: int,
    start: int,
    numel: int,
    gain: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generated values of the positions ``[start, start + numel)`` of a ring's ``total``.

    A flat tensor of ``numel`` values in ``ring``'s dtype and device:
    ``value[j] = gain * s(q) * ring[q mod N]`` with ``q = permute(start + j)`` and
    ``N = ring.numel()``, bit for bit what ``gain * [ring, -ring][build_signed_index(...)]``
    gives. No gradient is recorded (the caller's autograd function calls
    ``accumulate_span_grad`` in its backward). Spans of at least twice ``MIN_PER_WORKER``
    positions are shared out among ``torch.get_num_threads()`` threads. ``out``, when given,
    is a contiguous tensor of ``numel`` elements of ``ring``'s dtype that receives the values
    (and is returned, flat).
    """
    if torch.compiler.is_compiling():
        if out is None:
            return torch.ops.hf_rpg.generate_span(ring.detach(), _key_words(key), total, start, numel, float(gain))
        torch.ops.hf_rpg.generate_span_into(ring.detach(), _key_words(key), total, start, numel, float(gain), out)
        return out.view(-1)
    total, start, numel = check_int("total", total), check_int("start", start), check_int("numel", numel)
    n = check_common(ring, key, total)
    check_span(total, start, numel)
    return _generate(ring, total, n, key, start, None, numel, check_gain(gain), out)


def accumulate_span_grad(
    grad_ring: torch.Tensor, key: GeneratorKey, total: int, start: int, grad: torch.Tensor, gain: float
) -> None:
    """Backward of ``generate_span``, in place: ``grad_ring[q mod N] += gain * s(q) * grad[j]``
    with ``q = permute(start + j)`` for every element ``j`` of ``grad`` (read flat).

    Equal to torch's ``index_add_`` into the signed ring and its fold to rounding: the order
    of summation differs (and, with several threads, depends on the thread count).
    """
    if torch.compiler.is_compiling():
        torch.ops.hf_rpg.accumulate_span_grad(grad_ring, _key_words(key), total, start, grad.detach(), float(gain))
        return
    total, start = check_int("total", total), check_int("start", start)
    n = check_common(grad_ring, key, total, "grad_ring")
    if not isinstance(grad, torch.Tensor):
        raise ValueError(f"grad must be a tensor, got {type(grad).__name__}")
    check_span(total, start, grad.numel())
    check_grad(grad_ring, grad, grad.numel(), grad_ring.device)
    _accumulate(grad_ring, total, n, key, start, None, grad, check_gain(gain))


def generate_at(
    ring: torch.Tensor, key: GeneratorKey, total: int, positions: torch.Tensor, gain: float
) -> torch.Tensor:
    """``generate_span``'s values at arbitrary ``positions`` (an integer tensor of any shape,
    every value in ``[0, total)``, else ``ValueError``); the result has ``positions``' shape."""
    if torch.compiler.is_compiling():
        return torch.ops.hf_rpg.generate_at(ring.detach(), _key_words(key), total, positions, float(gain))
    total = check_int("total", total)
    n = check_common(ring, key, total)
    flat = _check_positions(positions, total)
    gain = check_gain(gain)
    values = _generate(ring, total, n, key, 0, flat.to(ring.device), flat.numel(), gain, None)
    return values.view(positions.shape)


def accumulate_grad_at(
    grad_ring: torch.Tensor,
    key: GeneratorKey,
    total: int,
    positions: torch.Tensor,
    grad: torch.Tensor,
    gain: float,
) -> None:
    """Backward of ``generate_at``, in place: ``grad_ring[q mod N] += gain * s(q) * grad``
    for each position (``grad`` has as many elements as ``positions``). Positions are
    checked before ``grad_ring`` is touched."""
    if torch.compiler.is_compiling():
        torch.ops.hf_rpg.accumulate_grad_at(grad_ring, _key_words(key), total, positions, grad.detach(), float(gain))
        return
    total = check_int("total", total)
    n = check_common(grad_ring, key, total, "grad_ring")
    flat = _check_positions(positions, total)
    check_grad(grad_ring, grad, flat.numel(), grad_ring.device)
    _accumulate(grad_ring, total, n, key, 0, flat.to(grad_ring.device), grad, check_gain(gain))


# --------------------------------------------------------------------------------------
# The same four functions as torch.library custom ops, for torch.compile
# --------------------------------------------------------------------------------------


def _key_words(key: GeneratorKey) -> list[int]:
    if not isinstance(key, GeneratorKey):
        raise ValueError(f"key must be a GeneratorKey (generator.derive_key), got {type(key).__name__}")
    return [*key.round_keys, key.sign_key]


def _key_of(words: list[int]) -> GeneratorKey:
    return GeneratorKey(round_keys=tuple(words[:-1]), sign_key=words[-1], init_keys=(0, 0))  # init keys unused


@torch.library.custom_op("hf_rpg::generate_span", mutates_args=())
def _generate_span_op(
    ring: torch.Tensor, key: list[int], total: int, start: int, numel: int, gain: float
) -> torch.Tensor:
    return generate_span(ring, _key_of(key), total, start, numel, gain)


@_generate_span_op.register_fake
def _(ring, key, total, start, numel, gain):
    return ring.new_empty(numel)


@torch.library.custom_op("hf_rpg::generate_span_into", mutates_args=("out",))
def _generate_span_into_op(
    ring: torch.Tensor, key: list[int], total: int, start: int, numel: int, gain: float, out: torch.Tensor
) -> None:
    generate_span(ring, _key_of(key), total, start, numel, gain, out=out)


@torch.library.custom_op("hf_rpg::accumulate_span_grad", mutates_args=("grad_ring",))
def _accumulate_span_grad_op(
    grad_ring: torch.Tensor, key: list[int], total: int, start: int, grad: torch.Tensor, gain: float
) -> None:
    accumulate_span_grad(grad_ring, _key_of(key), total, start, grad, gain)


@torch.library.custom_op("hf_rpg::generate_at", mutates_args=())
def _generate_at_op(
    ring: torch.Tensor, key: list[int], total: int, positions: torch.Tensor, gain: float
) -> torch.Tensor:
    return generate_at(ring, _key_of(key), total, positions, gain)


@_generate_at_op.register_fake
def _(ring, key, total, positions, gain):
    return ring.new_empty(positions.shape)


@torch.library.custom_op("hf_rpg::accumulate_grad_at", mutates_args=("grad_ring",))
def _accumulate_grad_at_op(
    grad_ring: torch.Tensor, key: list[int], total: int, positions: torch.Tensor, grad: torch.Tensor, gain: float
) -> None:
    accumulate_grad_at(grad_ring, _key_of(key), total, positions, grad, gain)
