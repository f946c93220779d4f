"""Triton kernels for ``rpg-v1`` on GPUs: indices and signs computed inside the gather and the scatter.

The GPU counterpart of the numba kernels (``hf_rpg.spec.index_kernels``): ``gather`` writes
``gain * s(q) * ring[q mod N]`` with ``q = permute(p)`` for a span of positions ``p`` (or
for given positions), ``scatter`` adds ``gain * s(q) * grad`` into a ring gradient, and
``projection`` writes the fixed projection of ``rpg-lowrank-v1`` (``hf_rpg.spec.lowrank``). No
per-element index is ever stored: the Feistel network, the cycle-walking, the sign hash and
the ``mod N`` run in registers, one block of positions per program.

Exactness. Every value of the algorithm is an unsigned integer: positions, Feistel halves
and ``q`` are uint32 while ``total <= 2**32`` and uint64 beyond (``WIDE``); the mixer always
works on uint32 (its inputs are below 2**32: a Feistel half has at most 31 bits), where
Triton's multiply wraps modulo 2**32 and ``>>`` is a logical shift, which is exactly the
``& M32`` and the shifts of the spec (``docs/generator.md``). Cycle-walking encrypts again,
for the whole block, until no lane lies outside ``[0, total)``; each lane keeps its first
value inside, so the result is the reference's. Values are computed as torch computes
``[ring, -ring][index] * gain``: the ring value (float32, or float64 for float64 rings)
negated, times ``gain`` rounded to that type, then rounded once to the output's dtype
(round to nearest even). The gain travels as the integer bits of that float, so the
interpreter and the compiled kernel see the same number. Gradients are summed with atomic
adds: equal to torch's ``index_add_`` to rounding (the order of summation differs).

Importing this module needs ``triton`` (the ``hf_rpg[triton]`` extra); ``index_kernels``
imports it on first use, for CUDA tensors. With ``TRITON_INTERPRET=1`` set before the
import, the kernels run in Triton's NumPy interpreter on any device (how the tests check
them on CPU); the variable is read once, when this module defines its kernels.
"""

from __future__ import annotations

import contextlib
import struct

import torch
import triton
import triton.language as tl

from .generator import FEISTEL_ROUNDS, MIX_MULTIPLIER_1, MIX_MULTIPLIER_2, GeneratorKey, domain_bits

if FEISTEL_ROUNDS != 4:  # pragma: no cover - the kernels unroll four rounds
    raise ImportError("the Triton kernels implement four Feistel rounds")

# Whether the kernels below were wrapped for Triton's interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)
# Positions per program. A block cycle-walks until its last lane is inside [0, total), so a
# smaller block wastes fewer passes; a larger one amortises the program's start. The
# interpreter runs a program as a few hundred NumPy calls: there, large blocks.
BLOCK = 1 << 14 if INTERPRETED else 1024
# What ``_ring_map_kernel`` does (its MODE).
GATHER = tl.constexpr(0)
SCATTER = tl.constexpr(1)
INDICES = tl.constexpr(2)

# Scalar arguments: typed by annotation and never specialised on their values (Triton would
# otherwise compile a variant per integer width, per value 1 and per multiple of 16).
_SCALARS = ["start", "numel", "last", "low_bits", "high_bits", "k0", "k1", "k2", "k3", "sign_key", "ring_size",
            "gain_bits", "scale_bits"]  # fmt: skip


def _kernel(function):
    names = [name for name in function.__code__.co_varnames[: function.__code__.co_argcount] if name in _SCALARS]
    return triton.jit(do_not_specialize=names)(function)


_M1 = tl.constexpr(MIX_MULTIPLIER_1)
_M2 = tl.constexpr(MIX_MULTIPLIER_2)


@triton.jit
def _mix32(x):
    """The spec's mixer on uint32 lanes (multiplies wrap modulo 2**32)."""
    x = x ^ (x >> 16)
    x = x * tl.cast(_M1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.cast(_M2, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _round(x, low_bits, high_bits, low_mask, high_mask, key):
    """One Feistel round: ``(high, low) -> (low, high ^ (mix32(low ^ key) & high_mask))``."""
    low = x & low_mask
    high = x >> low_bits
    f = _mix32((low ^ key).to(tl.uint32)).to(x.dtype) & high_mask
    return (low << high_bits) | (high ^ f)


@triton.jit
def _encrypt(x, low_bits, high_bits, low_mask, high_mask, k0, k1, k2, k3):
    x = _round(x, low_bits, high_bits, low_mask, high_mask, k0)
    x = _round(x, low_bits, high_bits, low_mask, high_mask, k1)
    x = _round(x, low_bits, high_bits, low_mask, high_mask, k2)
    return _round(x, low_bits, high_bits, low_mask, high_mask, k3)


@triton.jit
def _sign_is_negative(q, sign_key, WIDE: tl.constexpr):
    """``is_negative(q)``: ``mix32((q >> 32) ^ mix32((q & M32) ^ sign_key)) >> 31`` as a boolean."""
    if WIDE:
        inner = _mix32((q & 0xFFFFFFFF).to(tl.uint32) ^ sign_key)
        hashed = _mix32((q >> 32).to(tl.uint32) ^ inner)
    else:
        hashed = _mix32(_mix32(q ^ sign_key))  # q < 2**32: q >> 32 is 0
    return (hashed >> 31) != 0


@triton.jit
def _ring_entries(
    positions,
    valid,
    last,
    low_bits,
    high_bits,
    k0,
    k1,
    k2,
    k3,
    sign_key,
    ring_size,
    WIDE: tl.constexpr,
):
    """``(q mod N, s(q) < 0)`` for int64 ``positions`` (lanes where ``valid`` is false are ignored)."""
    kind = tl.uint64 if WIDE else tl.uint32
    x = positions.to(kind)
    last = last.to(kind)
    low_bits = low_bits.to(kind)
    high_bits = high_bits.to(kind)
    low_mask = (tl.full((), 1, kind) << low_bits) - 1
    high_mask = (tl.full((), 1, kind) << high_bits) - 1
    k0, k1, k2, k3 = k0.to(tl.uint32), k1.to(tl.uint32), k2.to(tl.uint32), k3.to(tl.uint32)
    x = _encrypt(x, low_bits, high_bits, low_mask, high_mask, k0, k1, k2, k3)
    outside = valid & (x > last)
    while tl.max(outside.to(tl.int32), axis=0) > 0:  # cycle-walking
        again = _encrypt(x, low_bits, high_bits, low_mask, high_mask, k0, k1, k2, k3)
        x = tl.where(outside, again, x)
        outside = outside & (x > last)
    negative = _sign_is_negative(x, sign_key.to(tl.uint32), WIDE)
    entry = (x % ring_size.to(kind)).to(tl.int64)
    return entry, negative


@triton.jit
def _store(out_ptr, offsets, value, valid):
    """Store float32 / float64 ``value`` rounded once to the output's dtype. bfloat16 is rounded
    here, to nearest even with NaN as 0x7FC0 (torch's rule), because the interpreter's cast
    truncates while the compiled one rounds."""
    if out_ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)
        tl.store(out_ptr + offsets, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=valid)
    else:
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _positions(positions_ptr, start, offsets, valid, SPAN: tl.constexpr):
    """The block's positions: ``start + offset`` for a span, else loaded (int64)."""
    return start.to(tl.int64) + offsets if SPAN else tl.load(positions_ptr + offsets, mask=valid, other=0)


@triton.jit
def _gain(gain_bits, F64: tl.constexpr):
    if F64:
        return gain_bits.to(tl.int64).to(tl.float64, bitcast=True)
    return gain_bits.to(tl.int32).to(tl.float32, bitcast=True)


@_kernel
def _ring_map_kernel(
    ring_ptr,
    dense_ptr,
    positions_ptr,
    start: tl.int64,
    numel: tl.int64,
    last: tl.int64,
    low_bits: tl.int64,
    high_bits: tl.int64,
    k0: tl.uint32,
    k1: tl.uint32,
    k2: tl.uint32,
    k3: tl.uint32,
    sign_key: tl.uint32,
    ring_size: tl.int64,
    gain_bits: tl.int64,
    MODE: tl.constexpr,
    SPAN: tl.constexpr,
    WIDE: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One kernel over the position -> (ring entry, sign) map, so that every use reads the same
    map: ``GATHER`` (``dense[j] = gain * s * ring[entry]``), its adjoint ``SCATTER``
    (``ring[entry] += gain * s * dense[j]``), or ``INDICES`` (``dense[j] = entry + N * (s < 0)``,
    the signed index the index cache stores; ``ring`` and ``gain`` unused)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < numel
    positions = _positions(positions_ptr, start, offsets, valid, SPAN)
    entry, negative = _ring_entries(
        positions, valid, last, low_bits, high_bits, k0, k1, k2, k3, sign_key, ring_size, WIDE
    )
    if MODE == INDICES:
        signed = entry + tl.where(negative, ring_size.to(tl.int64), 0)
        tl.store(dense_ptr + offsets, signed.to(dense_ptr.dtype.element_ty), mask=valid)
    elif MODE == SCATTER:
        grad = tl.load(dense_ptr + offsets, mask=valid, other=0.0)
        grad = grad.to(tl.float64) if F64 else grad.to(tl.float32)
        term = tl.where(negative, -grad, grad) * _gain(gain_bits, F64)
        tl.atomic_add(ring_ptr + entry, term, mask=valid, sem="relaxed")
    else:
        value = tl.load(ring_ptr + entry, mask=valid, other=0.0)
        value = value.to(tl.float64) if F64 else value.to(tl.float32)
        value = tl.where(negative, -value, value) * _gain(gain_bits, F64)
        _store(dense_ptr, offsets, value, valid)


@_kernel
def _projection_kernel(
    out_ptr, numel: tl.int64, sign_key: tl.uint32, scale_bits: tl.int64, F64: tl.constexpr, BLOCK: tl.constexpr
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < numel
    negative = _sign_is_negative(offsets.to(tl.uint64), sign_key.to(tl.uint32), True)
    scale = _gain(scale_bits, F64)
    value = tl.where(negative, -scale, scale)
    _store(out_ptr, offsets, value, valid)


# --------------------------------------------------------------------------------------
# Launchers. Arguments are checked by the callers (index_kernels' public functions).
# --------------------------------------------------------------------------------------


def available(device: torch.device | str) -> bool:
    """Whether these kernels run on ``device``: CUDA devices; under ``TRITON_INTERPRET=1``
    (Triton's NumPy interpreter) any device."""
    return INTERPRETED or torch.device(device).type == "cuda"


def _float_bits(value: float, f64: bool) -> int:
    """The bits of ``value`` rounded to float64 or float32, as a signed integer."""
    return struct.unpack("<q", struct.pack("<d", value))[0] if f64 else struct.unpack("<i", struct.pack("<f", value))[0]


def _generator_args(total: int, ring_size: int, key: GeneratorKey) -> tuple:
    """``last, low_bits, high_bits, k0..k3, sign_key, ring_size`` and whether the domain is wide."""
    bits = domain_bits(total)
    low_bits = (bits + 1) // 2
    return (total - 1, low_bits, bits - low_bits, *key.round_keys, key.sign_key, ring_size), total > 1 << 32


def _launch(mode, table, values, start, positions, count, total, ring_size, key, gain, f64, block) -> None:
    """Run ``_ring_map_kernel`` in ``mode`` (GATHER, SCATTER or INDICES) over ``count`` positions."""
    if count == 0:
        return
    args, wide = _generator_args(total, ring_size, key)
    span = positions is None
    where = values if span else positions  # an unused pointer for a span
    grid = (triton.cdiv(count, block or BLOCK),)
    _ring_map_kernel[grid](
        table, values, where, start, count, *args, _float_bits(gain, f64),
        MODE=mode, SPAN=span, WIDE=wide, F64=f64, BLOCK=block or BLOCK,
    )  # fmt: skip


def gather(
    ring: torch.Tensor,
    key: GeneratorKey,
    total: int,
    start: int,
    positions: torch.Tensor | None,
    out: torch.Tensor,
    gain: float,
    *,
    block: int | None = None,
) -> None:
    """Fill ``out`` (flat, contiguous) with ``gain * s(q) * ring[q mod N]``, ``q = permute(p)``,
    for the positions ``start + j`` (``positions is None``) or ``positions[j]`` (int64, flat,
    contiguous, on ``ring``'s device, every value in ``[0, total)``)."""
    table = ring.detach().reshape(-1).contiguous()
    f64 = table.dtype == torch.float64
    count = out.numel()
    with torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext():
        _launch(GATHER, table, out, start, positions, count, total, table.numel(), key, gain, f64, block)


def scatter(
    grad_ring: torch.Tensor,
    key: GeneratorKey,
    total: int,
    start: int,
    positions: torch.Tensor | None,
    grad: torch.Tensor,
    gain: float,
    *,
    block: int | None = None,
) -> None:
    """``grad_ring[q mod N] += gain * s(q) * grad[j]`` for the positions of ``gather``.
    ``grad_ring``: float32 or float64, flat, contiguous; ``grad``: any float dtype (summed in
    ``grad_ring``'s)."""
    flat = grad.detach().reshape(-1).contiguous()
    f64 = grad_ring.dtype == torch.float64
    with torch.cuda.device(flat.device) if flat.device.type == "cuda" else contextlib.nullcontext():
        _launch(SCATTER, grad_ring, flat, start, positions, flat.numel(), total, grad_ring.numel(), key,
                gain, f64, block)  # fmt: skip


def signed_indices(
    key: GeneratorKey,
    total: int,
    ring_size: int,
    start: int,
    positions: torch.Tensor | None,
    out: torch.Tensor,
    *,
    block: int | None = None,
) -> None:
    """Write into ``out`` (flat, contiguous, int32 or int64) the indices into the signed ring
    ``[ring, -ring]`` (``generator.signed_indices``) of the positions of ``gather``."""
    with torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext():
        _launch(INDICES, out, out, start, positions, out.numel(), total, ring_size, key, 0.0, False, block)


def projection(
    key: GeneratorKey, rows: int, columns: int, scale: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """``[rows, columns]`` of ``±scale``: the sign ``s(k * columns + j)`` under ``key`` (the
    ``rpg-lowrank-v1`` projection), ``scale`` rounded to float32 (float64 for float64)."""
    out = torch.empty(rows, columns, dtype=dtype, device=device)
    count = out.numel()
    if count:
        f64 = dtype == torch.float64
        with torch.cuda.device(out.device) if out.device.type == "cuda" else contextlib.nullcontext():
            _projection_kernel[(triton.cdiv(count, BLOCK),)](
                out, count, key.sign_key, _float_bits(scale, f64), F64=f64, BLOCK=BLOCK
            )
    return out
