"""The in-memory index encoding: two layouts of the int32 index cache, and the gather / scatter-add for each.

The generator (``generator.py``) defines one thing: for each position, a ring entry ``k``
and a sign. How the cache stores that pair is an in-memory choice (caches are never
saved), picked per ring for speed:

- **signed** (``k + N`` for a negative sign): weights are gathered from the signed ring
  ``[θ, −θ]`` in one ``index_select``; the backward scatter-adds into ``2N`` entries and
  folds them. Fastest while ``[θ, −θ]`` stays in the CPU's cache.
- **sign bit** (``k``, with bit 31 set for a negative sign): weights are gathered from
  ``θ`` itself, half the memory that random reads and writes touch, and the sign is put
  on afterwards (an XOR of the float32 sign bit, exact). Work goes block by block so the
  extra passes stay in cache. Large rings on CPU use it: when ``[θ, −θ]`` outgrows the
  caches (and the TLB), each random access costs several times more, and halving the
  table is worth the extra in-cache passes (measured in ``docs/performance.md``).

On CPU, for float32 and float64, numba kernels do the gather and the scatter-add of either
layout in one pass (``gather_cached`` / ``scatter_cached_``), with the same roundings as the
torch ops below them (bit-identical: ``tests/test_index_encoding.py``) and 5-16% faster per
element than them on one thread (the random reads of the ring dominate either way:
``docs/performance.md``); elsewhere (other dtypes, GPUs, under ``torch.compile``) the torch
ops run.

Both layouts give bit-identical weights. The ring gradients agree to rounding: the sign
bit layout sums a ring entry's uses in position order, the signed one sums its positive
and negative uses apart.
"""

from __future__ import annotations

import numpy as np
import torch

from .kernel_arguments import numpy_view

SIGN_BIT = -(1 << 31)  # bit 31 of an int32
MAGNITUDE = (1 << 31) - 1

# A CPU ring whose signed copy [θ, −θ] is larger than this uses the sign-bit layout. At
# 4 MiB the signed copy still fits the L2 TLB's reach and a share of L3 on the CPUs we
# measured; above it, random access grows several times slower.
SIGN_BIT_MIN_SIGNED_BYTES = 4 << 20

# Elements per block in the sign-bit path: the block's temporaries (a few 256 KiB
# buffers) stay in L2 while the per-op overhead of eager torch stays small.
BLOCK = 1 << 16


def use_sign_bit(ring_size: int, itemsize: int, index_dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a ring's index cache should use the sign-bit layout."""
    return device.type == "cpu" and index_dtype == torch.int32 and 2 * ring_size * itemsize > SIGN_BIT_MIN_SIGNED_BYTES


def signed_to_sign_bit_(index: torch.Tensor, ring_size: int) -> torch.Tensor:
    """Re-encode a signed-layout int32 CPU index in place as the sign-bit layout.

    On uint32 words, ``v >= N`` becomes ``v - N + 2**31``: one compare, one multiply and
    one add per element (``v + [v >= N] * (2**31 - N)`` modulo ``2**32``), block by block in
    cache. NumPy because torch's uint32 tensors lack these ops; about 1 ns per element.
    """
    words = numpy_view(index).view(np.uint32)
    ring32, shift = np.uint32(ring_size), np.uint32((1 << 31) - ring_size)
    negative = np.empty(min(BLOCK, words.size), dtype=np.uint32)
    for start in range(0, words.size, BLOCK):
        block = words[start : start + BLOCK]
        flag = negative[: block.size]
        np.greater_equal(block, ring32, out=flag, casting="unsafe")
        np.multiply(flag, shift, out=flag)
        np.add(block, flag, out=block)
    return index


def sign_bit_to_signed(index: torch.Tensor, ring_size: int) -> torch.Tensor:
    """The signed-layout equivalent of a sign-bit index (a new tensor)."""
    negative = index < 0
    return index.bitwise_and(MAGNITUDE) + negative.to(index.dtype) * ring_size


def _flip_signs_(values: torch.Tensor, index: torch.Tensor, scratch: torch.Tensor) -> None:
    """Negate ``values`` where ``index`` has its sign bit set (in place)."""
    if values.dtype == torch.float32:
        torch.bitwise_and(index, SIGN_BIT, out=scratch)
        values.view(torch.int32).bitwise_xor_(scratch)  # flips the float sign bit: exact negation
    else:
        values.mul_(1 - 2 * (index < 0).to(values.dtype))


def _block(numel: int) -> int:
    # Under torch.compile one block: inductor fuses the whole-tensor ops into one loop.
    return max(1, numel) if torch.compiler.is_compiling() else min(BLOCK, max(1, numel))


def gather_sign_bit(
    ring: torch.Tensor, index: torch.Tensor, out: torch.Tensor, gain: float, base: torch.Tensor | None
) -> None:
    """``out = gain * sign * ring[k]`` (+ ``base``) for a sign-bit layout ``index``."""
    block = _block(index.numel())
    scratch = torch.empty(block, dtype=torch.int32, device=index.device)
    for start in range(0, index.numel(), block):
        length = min(block, index.numel() - start)
        idx, tmp, piece = index[start : start + length], scratch[:length], out[start : start + length]
        torch.bitwise_and(idx, MAGNITUDE, out=tmp)
        torch.index_select(ring, 0, tmp, out=piece)
        _flip_signs_(piece, idx, tmp)
        piece.mul_(gain)
        if base is not None:
            piece.add_(base[start : start + length])


def scatter_sign_bit_(grad_ring: torch.Tensor, index: torch.Tensor, grad: torch.Tensor, gain: float) -> None:
    """``grad_ring[k] += gain * sign * grad`` for a sign-bit layout ``index``."""
    block = _block(index.numel())
    scratch = torch.empty(block, dtype=torch.int32, device=index.device)
    signed = torch.empty(block, dtype=grad_ring.dtype, device=grad.device)
    for start in range(0, index.numel(), block):
        length = min(block, index.numel() - start)
        idx, tmp, piece = index[start : start + length], scratch[:length], signed[:length]
        source = grad[start : start + length]
        if source.dtype == piece.dtype == torch.float32:  # copy and flip in one pass
            torch.bitwise_and(idx, SIGN_BIT, out=tmp)
            torch.bitwise_xor(source.view(torch.int32), tmp, out=piece.view(torch.int32))
        else:
            piece.copy_(source)
            _flip_signs_(piece, idx, tmp)
        torch.bitwise_and(idx, MAGNITUDE, out=tmp)
        grad_ring.index_add_(0, tmp, piece, alpha=gain)


_NUMBA_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _numba_kernels(*tensors: torch.Tensor):
    """The numba kernels module when it serves these CPU tensors (float32 / float64, one dtype,
    not under torch.compile), else None."""
    from . import index_kernels  # numba is imported on first use only

    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in _NUMBA_DTYPES or torch.compiler.is_compiling():
        return None
    if any(t.dtype != first.dtype or t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    return index_kernels._kernels() if index_kernels.available(first.device) else None


def gather_cached(
    table: torch.Tensor,
    index: torch.Tensor,
    out: torch.Tensor,
    gain: float,
    base: torch.Tensor | None,
    sign_bit: bool,
) -> None:
    """``out = gain * sign * ring[k]`` (+ ``base``) from an int32 cache ``index`` in either
    layout (``table`` is ``θ`` for the sign-bit layout, ``[θ, −θ]`` for the signed one)."""
    kernels = _numba_kernels(table, out, *(() if base is None else (base,)))
    if kernels is not None and index.dtype == torch.int32 and index.is_contiguous():
        kind = _NUMBA_DTYPES[table.dtype]
        bases = numpy_view(base) if base is not None else np.empty(0, kind)
        kernels._cached_gather(numpy_view(table), numpy_view(index), numpy_view(out), kind(gain), bases, sign_bit)
    elif sign_bit:
        gather_sign_bit(table, index, out, gain, base)
    else:
        torch.index_select(table, 0, index, out=out)
        out.mul_(gain)
        if base is not None:
            out.add_(base)


def scatter_cached_(grad_table: torch.Tensor, index: torch.Tensor, grad: torch.Tensor, gain: float, sign_bit: bool):
    """``grad_table[k] += gain * sign * grad`` from an int32 cache ``index`` in either layout
    (``grad_table`` has ``N`` entries for the sign-bit layout, ``2N`` for the signed one)."""
    kernels = _numba_kernels(grad_table)
    if kernels is not None and index.dtype == torch.int32 and index.is_contiguous():
        source = grad.to(grad_table.dtype).contiguous()
        kind = _NUMBA_DTYPES[grad_table.dtype]
        kernels._cached_scatter(numpy_view(grad_table), numpy_view(index), numpy_view(source), kind(gain), sign_bit)
    elif sign_bit:
        scatter_sign_bit_(grad_table, index, grad, gain)
    else:
        grad_table.index_add_(0, index, grad.to(grad_table.dtype), alpha=gain)


def lookup(ring: torch.Tensor, index: torch.Tensor, sign_bit: bool) -> torch.Tensor:
    """``sign * ring[k]`` for any index tensor, differentiable (the embedding-row path)."""
    if not sign_bit:
        return torch.index_select(torch.cat((ring, ring.neg())), 0, index)
    values = torch.index_select(ring, 0, index.bitwise_and(MAGNITUDE))
    return torch.where(index < 0, values.neg(), values)
