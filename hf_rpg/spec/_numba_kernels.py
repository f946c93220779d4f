"""The numba kernels behind ``index_kernels`` (imported on first use: numba takes a third of a
second to import, and only the compiled path needs it).

Numba widens integer arithmetic to 64 bits; every intermediate is cut back to uint32
explicitly (``U(...)``), which lets LLVM narrow the vector code to 8 lanes, and shift counts
are masked to 0..31 for the same reason. Each kernel works block by block: one vectorised
Feistel pass over the block, cycle-walking on the compacted few values still outside
``[0, total)``, one vectorised pass for the signs and the ``mod N``, then the gather (or
scatter), which is bound by the ring's memory. ``cache=True``: the machine code is written to
``__pycache__`` and loaded by later processes instead of being compiled again.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # index_kernels then takes the tensor path and never calls these functions
    numba = None

from .generator import FEISTEL_ROUNDS, MASK32, MIX_MULTIPLIER_1, MIX_MULTIPLIER_2

if FEISTEL_ROUNDS != 4:  # pragma: no cover - the kernels unroll four rounds
    raise ImportError("the numba kernels implement four Feistel rounds")

# Positions per block: the block's scratch (a few 4-8 KiB arrays) stays in L1.
BLOCK = 1024


def _njit(function):
    return function if numba is None else numba.njit(cache=True, nogil=True, boundscheck=False)(function)


def _njit_inline(function):
    return function if numba is None else numba.njit(inline="always")(function)


U = np.uint32
U64 = np.uint64
_M1, _M2 = U(MIX_MULTIPLIER_1), U(MIX_MULTIPLIER_2)
_S15, _S16, _S31 = U(15), U(16), U(31)
_U64_M32, _U64_S32 = U64(MASK32), U64(32)


@_njit_inline
def _mix(x):
    x = U(x ^ (x >> _S16))
    x = U(x * _M1)
    x = U(x ^ (x >> _S15))
    x = U(x * _M2)
    return U(x ^ (x >> _S16))


@_njit_inline
def _round(x, low_bits, high_bits, low_mask, high_mask, key):
    low = U(x & low_mask)
    high = U(x >> U(low_bits & _S31))
    f = U(_mix(U(low ^ key)) & high_mask)
    return U(U(low << U(high_bits & _S31)) | U(high ^ f))


@_njit_inline
def _pass(x, lb, hb, lm, hm, k0, k1, k2, k3):
    x = _round(x, lb, hb, lm, hm, k0)
    x = _round(x, lb, hb, lm, hm, k1)
    x = _round(x, lb, hb, lm, hm, k2)
    return _round(x, lb, hb, lm, hm, k3)


@_njit_inline
def _load_block(x, m, base, positions):
    """Positions of a block into ``x``: ``base + i`` for a span, else ``positions[base + i]``."""
    if positions.shape[0] == 0:
        base32 = U(base)
        for i in range(m):
            x[i] = U(base32 + U(i))
    else:
        for i in range(m):
            x[i] = U(positions[base + i])


@_njit
def _index_block(x, m, p, pend, pv, ring_index, sign):
    """In place: positions ``x[:m]`` to ``ring_index[:m] = q mod N`` and ``sign[:m] = s(q)``.

    ``p`` holds the parameters from ``kernel_arguments.kernel_params``; ``pend`` / ``pv`` are scratch.
    """
    total, lb, hb, lm, hm, k0, k1, k2, k3, sign_key, magic, sh1, sh2, n = p
    if total == U64(1):
        for i in range(m):
            x[i] = U(0)
    else:
        for i in range(m):
            x[i] = _pass(x[i], lb, hb, lm, hm, k0, k1, k2, k3)
        # cycle-walking: compact the values still >= total, encrypt them again, repeat
        pending = 0
        for i in range(m):
            pend[pending] = i
            pv[pending] = x[i]
            pending += U64(x[i]) >= total
        while pending > 0:
            for k in range(pending):
                pv[k] = _pass(pv[k], lb, hb, lm, hm, k0, k1, k2, k3)
            still = 0
            for k in range(pending):
                i = pend[k]
                x[i] = pv[k]
                pend[still] = i
                pv[still] = pv[k]
                still += U64(pv[k]) >= total
            pending = still
    for i in range(m):
        q = x[i]
        negative = _mix(_mix(U(q ^ sign_key))) >> _S31  # q < 2**32: the outer mix takes 0 ^ inner
        t = U((U64(q) * U64(magic)) >> _U64_S32)
        quotient = U(U(t + U(U(q - t) >> U(sh1 & _S31))) >> U(sh2 & _S31))
        ring_index[i] = U(q - U(quotient * n))
        sign[i] = np.float32(1.0) - np.float32(2.0) * np.float32(negative)


@_njit_inline
def _scratch():
    return (
        np.empty(BLOCK, np.uint32),
        np.empty(BLOCK, np.int64),
        np.empty(BLOCK, np.uint32),
        np.empty(BLOCK, np.uint32),
        np.empty(BLOCK, np.float32),
    )


@_njit_inline
def _next_block(scratch, b, numel, start, positions, p):
    """Index the block of positions starting at output element ``b`` into ``scratch``; its length."""
    x, pend, pv, ring_index, sign = scratch
    m = min(BLOCK, numel - b)
    _load_block(x, m, start + b if positions.shape[0] == 0 else b, positions)
    _index_block(x, m, p, pend, pv, ring_index, sign)
    return m


@_njit
def _map_float(ring, dense, start, positions, p, gain, scatter):
    """``dense[j] = (ring[k] * s) * gain``, or with ``scatter`` its adjoint
    ``ring[k] += (dense[j] * s) * gain`` (float32 / float64; ``gain`` of the ring's type)."""
    scratch = _scratch()
    ring_index, sign = scratch[3], scratch[4]
    numel = dense.shape[0]
    for b in range(0, numel, BLOCK):
        m = _next_block(scratch, b, numel, start, positions, p)
        if scatter:
            for i in range(m):
                ring[ring_index[i]] += dense[b + i] * sign[i] * gain
        else:
            for i in range(m):
                dense[b + i] = ring[ring_index[i]] * sign[i] * gain


@_njit
def _map_bf16(ring_bits, ring_float, dense_bits, start, positions, p, gain, scatter):
    """``_map_float`` for a bfloat16 ``dense`` (bit patterns). A gather reads the bfloat16 ring
    ``ring_bits``, computes in float32 and rounds to nearest-even as torch rounds (NaN becomes
    0x7FC0); a scatter adds into the float32 / float64 ``ring_float``. The other ring is unused."""
    scratch = _scratch()
    ring_index, sign = scratch[3], scratch[4]
    wide = np.empty(BLOCK, np.uint32)
    wide_float = wide.view(np.float32)
    numel = dense_bits.shape[0]
    for b in range(0, numel, BLOCK):
        m = _next_block(scratch, b, numel, start, positions, p)
        if scatter:
            for i in range(m):
                wide[i] = U(dense_bits[b + i]) << _S16
            for i in range(m):
                ring_float[ring_index[i]] += wide_float[i] * sign[i] * gain
            continue
        for i in range(m):
            wide[i] = U(ring_bits[ring_index[i]]) << _S16
        for i in range(m):
            wide_float[i] = wide_float[i] * sign[i] * gain
        for i in range(m):
            value = wide[i]
            rounded = U(value + U(U(U(value >> _S16) & U(1)) + U(0x7FFF))) >> _S16
            dense_bits[b + i] = np.uint16(0x7FC0) if wide_float[i] != wide_float[i] else np.uint16(rounded)


@_njit
def _min_max(positions):
    """(min, max) of a non-empty int64 array in one pass."""
    low = positions[0]
    high = positions[0]
    for i in range(positions.shape[0]):
        value = positions[i]
        low = min(low, value)
        high = max(high, value)
    return low, high


# The int64 domain (total > 2**32, or rings of 2**30 entries and more): one position
# at a time, on uint64 integers, exactly as generator.reference_signed_index reads.


@_njit_inline
def _mix64(x):
    return U64(_mix(U(x)))


@_njit
def _indices_u64(start, positions, count, p64, ring_index, negative):
    """``ring_index[j] = q mod N`` and ``negative[j] = s(q) < 0`` for ``count`` positions."""
    total, lb, hb, lm, hm, k0, k1, k2, k3, sign_key, n = p64
    keys = (k0, k1, k2, k3)
    for j in range(count):
        x = U64(start + j) if positions.shape[0] == 0 else U64(positions[j])
        if total == U64(1):
            x = U64(0)
        else:
            while True:
                for r in range(4):
                    low = x & lm
                    high = x >> lb
                    x = (low << hb) | (high ^ (_mix64(low ^ keys[r]) & hm))
                if x < total:
                    break
        inner = _mix64((x & _U64_M32) ^ sign_key)
        negative[j] = (_mix64((x >> _U64_S32) ^ inner) >> U64(31)) != U64(0)
        ring_index[j] = np.int64(x % n)


# --------------------------------------------------------------------------------------
# Gather and scatter through an int32 index cache (``index_encoding``): no index arithmetic,
# only the indirect reads and writes that torch's index_select / index_add_ do, without
# their per-element checks and dispatch (measured in docs/performance.md).
# --------------------------------------------------------------------------------------

_MAGNITUDE = np.int32(0x7FFFFFFF)


@_njit
def _cached_gather(table, index, out, gain, base, sign_bit):
    """``out[j] = (s * table[k]) * gain (+ base[j])``: ``k = index[j]`` into the signed ring
    ``[θ, −θ]`` (``s = +1``), or with ``sign_bit`` ``k = index[j] & 0x7FFFFFFF`` into ``θ`` and
    ``s`` from bit 31. ``base`` is empty or one value per element. Each value is rounded as
    index_select, a negation, ``mul_(gain)`` and ``add_(base)`` round it."""
    with_base = base.shape[0] > 0
    for j in range(index.shape[0]):
        i = index[j]
        if sign_bit:
            value = table[i & _MAGNITUDE]
            if i < 0:
                value = -value
        else:
            value = table[i]
        value = value * gain
        if with_base:
            value = value + base[j]
        out[j] = value


@_njit
def _cached_scatter(grad_table, index, grad, gain, sign_bit):
    """``grad_table[k] += (s * grad[j]) * gain`` in position order, ``k`` and ``s`` as in
    ``_cached_gather`` (signed: ``k`` into the ``2N`` entries of ``[θ, −θ]``)."""
    for j in range(index.shape[0]):
        i = index[j]
        value = grad[j]
        if sign_bit:
            if i < 0:
                value = -value
            i = i & _MAGNITUDE
        grad_table[i] += value * gain
