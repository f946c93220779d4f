"""The ``rpg-v1`` generator: which ring entry, with which sign, feeds each generated weight.

Every generated element at global position ``p`` (``0 <= p < P``) of a ring of size ``N``
reads ``sign(q) * ring[q mod N]`` with ``q = permute(p)``. ``permute`` is a keyed Feistel
network with cycle-walking, so it is a bijection on ``[0, P)`` and every ring entry is
used ``floor(P/N)`` or ``ceil(P/N)`` times. The sign is a keyed hash of ``q``.

Everything here is integer arithmetic on int64 tensors whose values never exceed 2**63,
so no operation can overflow: the multiplicative constants are below 2**31 and are only
ever applied to values below 2**32. (A NumPy uint32 twin, exact for rings of up to 2**32
positions, builds CPU caches faster.) The result is therefore bit-identical on every
device, thread count, chunking of the positions, and version of torch. The algorithm
deliberately uses neither ``torch.randperm``, ``torch.Generator`` nor NumPy's RNG, whose
streams are not promised to stay the same. The full specification is ``docs/generator.md``;
the pure-Python functions at the bottom of this module are its executable form.

Changing anything in this module changes generated weights and must bump
``GENERATOR_VERSION``; golden vectors in the tests enforce this.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

GENERATOR_VERSION = "rpg-v1"
SUPPORTED_GENERATORS = (GENERATOR_VERSION,)

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers below 2**31: a product with a 32-bit value stays below 2**63 (no int64
# overflow, which C++ leaves undefined).
MIX_MULTIPLIER_1 = 0x7FEB352D
MIX_MULTIPLIER_2 = 0x31848BAB
FEISTEL_ROUNDS = 4
# The permutation works on at most 62-bit positions so that every intermediate fits int64.
MAX_POSITIONS = 1 << 62
# Positions processed per step when building an index cache; bounds temporary memory
# (40 bytes per position) and has no effect on the result.
DEFAULT_CHUNK = 1 << 18

_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a hash of ``data`` (used to turn a ring name into key material)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & MASK64
    return h


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: returns ``(next_state, output)``, both 64-bit."""
    state = (state + _SPLITMIX_GAMMA) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


@dataclass(frozen=True)
class GeneratorKey:
    """32-bit keys derived from ``(seed, ring name)``; see ``derive_key``."""

    round_keys: tuple[int, ...]
    sign_key: int
    init_keys: tuple[int, int]


def derive_key(seed: int, ring: str) -> GeneratorKey:
    """Derive the generator keys of one ring from the user's seed and the ring's name.

    SplitMix64 is seeded with ``seed XOR fnv1a64(utf8(ring))``; its successive outputs,
    truncated to their low 32 bits, are the Feistel round keys, the sign key and the two
    keys of the ring's initial values, in that order.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MASK64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    state = seed ^ fnv1a64(ring.encode("utf-8"))
    words = []
    for _ in range(FEISTEL_ROUNDS + 3):
        state, out = splitmix64(state)
        words.append(out & MASK32)
    return GeneratorKey(
        round_keys=tuple(words[:FEISTEL_ROUNDS]),
        sign_key=words[FEISTEL_ROUNDS],
        init_keys=(words[FEISTEL_ROUNDS + 1], words[FEISTEL_ROUNDS + 2]),
    )


def domain_bits(total: int) -> int:
    """Width in bits of the Feistel domain for ``total`` positions (at least 2)."""
    return max(2, (total - 1).bit_length())


# --------------------------------------------------------------------------------------
# Tensor implementation (int64 tensors, any device). The in-place form with reused
# scratch buffers is about 6x faster than the functional one on CPU: most of the time of
# elementwise integer ops on fresh tensors goes to allocating and first-touching memory.
# --------------------------------------------------------------------------------------


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Integer mixer on 32-bit values held in an int64 tensor (returns a new tensor)."""
    return _mix32_(x.clone(), torch.empty_like(x))


def _mix32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``mix32`` in place on ``x``; ``scratch`` is a buffer of the same shape."""
    torch.bitwise_right_shift(x, 16, out=scratch)
    x.bitwise_xor_(scratch)
    x.mul_(MIX_MULTIPLIER_1).bitwise_and_(MASK32)
    torch.bitwise_right_shift(x, 15, out=scratch)
    x.bitwise_xor_(scratch)
    x.mul_(MIX_MULTIPLIER_2).bitwise_and_(MASK32)
    torch.bitwise_right_shift(x, 16, out=scratch)
    return x.bitwise_xor_(scratch)


class _Scratch:
    """Three int64 buffers reused across chunks."""

    def __init__(self, size: int, device: torch.device | str | None) -> None:
        self.low = torch.empty(size, dtype=torch.int64, device=device)
        self.high = torch.empty_like(self.low)
        self.tmp = torch.empty_like(self.low)

    def view(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.low[:size], self.high[:size], self.tmp[:size]


def _feistel_(x: torch.Tensor, bits: int, key: GeneratorKey, scratch: _Scratch) -> None:
    """One pass of the keyed Feistel network on ``bits``-bit values, in place.

    Each round splits ``x`` into its low ``ceil(bits/2)`` bits and the high rest, and maps
    ``(high, low)`` to ``(low, high XOR (mix32(low XOR key) mod 2**high_bits))``: a
    bijection of ``[0, 2**bits)`` whatever the round function.
    """
    low_bits = (bits + 1) // 2
    high_bits = bits - low_bits
    low, high, tmp = scratch.view(x.numel())
    for round_key in key.round_keys:
        torch.bitwise_and(x, (1 << low_bits) - 1, out=low)
        torch.bitwise_right_shift(x, low_bits, out=high)
        torch.bitwise_xor(low, round_key, out=x)
        _mix32_(x, tmp)
        x.bitwise_and_((1 << high_bits) - 1).bitwise_xor_(high)
        x.bitwise_or_(low.bitwise_left_shift_(high_bits))


def _permute_(x: torch.Tensor, total: int, key: GeneratorKey, scratch: _Scratch) -> None:
    """``permute`` in place on the int64 positions ``x``."""
    if total == 1:
        x.zero_()
        return
    bits = domain_bits(total)
    _feistel_(x, bits, key, scratch)
    pending = torch.nonzero(x >= total).flatten()
    while pending.numel() > 0:
        walked = x[pending]
        _feistel_(walked, bits, key, scratch)
        x[pending] = walked
        pending = pending[walked >= total]


def _is_negative_(q: torch.Tensor, key: GeneratorKey, out: torch.Tensor, scratch: _Scratch) -> None:
    """Write the sign bit of each permuted position ``q`` into ``out`` (int64)."""
    _, high, tmp = scratch.view(q.numel())
    torch.bitwise_and(q, MASK32, out=out)
    _mix32_(out.bitwise_xor_(key.sign_key), tmp)
    torch.bitwise_right_shift(q, 32, out=high)
    _mix32_(out.bitwise_xor_(high), tmp)
    out.bitwise_right_shift_(31)


def _check_total(total: int) -> None:
    if not 1 <= total <= MAX_POSITIONS:
        raise ValueError(f"total must be in [1, 2**62], got {total}")


def check_positions(positions: torch.Tensor, total: int) -> None:
    """Positions must lie in ``[0, total)``: outside, the Feistel network would give another
    ring entry silently. On CPU in eager mode a ``ValueError``; on GPUs and under
    ``torch.compile`` an asynchronous device-side assert (no host synchronisation)."""
    if positions.numel() == 0:
        return
    if positions.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= total:
            bad = low if low < 0 else high
            raise ValueError(f"positions must be in [0, total={total}), got {bad}")
        return
    torch._assert_async(((positions >= 0) & (positions < total)).all(), f"positions must be in [0, total={total})")


def permute(positions: torch.Tensor, total: int, key: GeneratorKey) -> torch.Tensor:
    """``pi(p)`` for each position: a keyed bijection of ``[0, total)``.

    Values of the Feistel network outside ``[0, total)`` are encrypted again until they
    fall inside (cycle-walking); the domain is less than ``2 * total`` (for ``total >= 3``),
    so fewer than two passes are needed on average.
    """
    _check_total(total)
    check_positions(positions, total)
    x = positions.to(torch.int64, copy=True).flatten()
    _permute_(x, total, key, _Scratch(x.numel(), x.device))
    return x.view(positions.shape)


def is_negative(permuted: torch.Tensor, key: GeneratorKey) -> torch.Tensor:
    """Sign bit (1 = negative) of the element whose permuted position is ``permuted``."""
    q = permuted.to(torch.int64).flatten()
    out = torch.empty_like(q)
    _is_negative_(q, key, out, _Scratch(q.numel(), q.device))
    return out.view(permuted.shape)


def signed_index_dtype(ring_size: int) -> torch.dtype:
    """int32 while indices into the signed ring ``[ring, -ring]`` fit in it, else int64."""
    return torch.int32 if 2 * ring_size <= 2**31 - 1 else torch.int64


def _check_ring_size(ring_size: int, total: int) -> None:
    if not 1 <= ring_size <= total:
        raise ValueError(f"ring_size must be in [1, total={total}], got {ring_size}")


def _signed_indices_(x: torch.Tensor, total: int, ring_size: int, key: GeneratorKey, scratch: _Scratch) -> torch.Tensor:
    """Turn the int64 positions ``x`` into signed-ring indices, in place."""
    _permute_(x, total, key, scratch)
    negative = torch.empty_like(x)
    _is_negative_(x, key, negative, scratch)
    return x.remainder_(ring_size).add_(negative.mul_(ring_size))


def signed_indices(positions: torch.Tensor, total: int, ring_size: int, key: GeneratorKey) -> torch.Tensor:
    """Index into the signed ring ``[ring, -ring]`` for each position.

    Equal to ``permute(p) mod N`` for a positive element and that plus ``N`` for a negative
    one, so that ``signed_ring[index]`` is the element's value before its tensor's gain.
    """
    _check_total(total)
    _check_ring_size(ring_size, total)
    check_positions(positions, total)
    if positions.device.type == "cpu" and uint32_path_applies(total, ring_size) and positions.numel():
        return _signed_indices_uint32(positions, total, ring_size, key)
    x = positions.to(torch.int64, copy=True).flatten()
    _signed_indices_(x, total, ring_size, key, _Scratch(x.numel(), x.device))
    return x.view(positions.shape).to(signed_index_dtype(ring_size))


def build_signed_index(
    total: int,
    ring_size: int,
    key: GeneratorKey,
    *,
    start: int = 0,
    stop: int | None = None,
    device: torch.device | str | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Signed-ring indices of positions ``[start, stop)``, computed chunk by chunk.

    This is the compact cache of the default mode: 4 bytes per generated element (int32),
    never saved, rebuilt from the seed whenever it is needed. On CPU, rings of up to
    ``2**32`` positions use the NumPy uint32 implementation (same results, about 3x faster).
    """
    _check_total(total)
    _check_ring_size(ring_size, total)
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"need 0 <= start <= stop <= total, got {start}, {stop}, {total}")
    out = torch.empty(stop - start, dtype=signed_index_dtype(ring_size), device=device)
    if out.device.type == "cpu" and uint32_path_applies(total, ring_size):
        _build_signed_index_uint32(out.numpy(), start, stop, total, ring_size, key, chunk)
    else:
        _build_signed_index_int64(out, start, stop, total, ring_size, key, chunk)
    return out


def _build_signed_index_int64(
    out: torch.Tensor, start: int, stop: int, total: int, ring_size: int, key: GeneratorKey, chunk: int
) -> None:
    size = min(chunk, stop - start)
    x_buffer = torch.empty(size, dtype=torch.int64, device=out.device)
    scratch = _Scratch(size, out.device)
    for begin in range(start, stop, chunk):
        end = min(begin + chunk, stop)
        x = x_buffer[: end - begin]
        torch.arange(begin, end, out=x)
        out[begin - start : end - start] = _signed_indices_(x, total, ring_size, key, scratch)


# --------------------------------------------------------------------------------------
# CPU path on NumPy uint32 arrays. While P <= 2**32 every value of the algorithm fits in
# 32 bits, and uint32 arithmetic wraps modulo 2**32, which is exactly the "& M32" of the
# spec: the results are bit-identical to the int64 path (the tests compare both with the
# reference), with half the memory traffic and SIMD 32-bit multiplies. torch's uint32
# tensors lack shifts, hence NumPy.
# --------------------------------------------------------------------------------------


def uint32_path_applies(total: int, ring_size: int) -> bool:
    """Whether the uint32 implementation covers a ring: every position and every signed
    index (``< 2N``) must fit in 32 (respectively 31) bits."""
    return total <= 2**32 and 2 * ring_size <= 2**31 - 1


def _mix32_u32(x: np.ndarray, scratch: np.ndarray) -> None:
    np.right_shift(x, _U16, out=scratch)
    x ^= scratch
    x *= _U_MULTIPLIER_1
    np.right_shift(x, _U15, out=scratch)
    x ^= scratch
    x *= _U_MULTIPLIER_2
    np.right_shift(x, _U16, out=scratch)
    x ^= scratch


def _feistel_u32(x: np.ndarray, bits: int, keys: list[np.uint32], low: np.ndarray, high: np.ndarray, tmp) -> None:
    low_bits = (bits + 1) // 2
    high_bits = bits - low_bits
    low_mask, high_mask = np.uint32((1 << low_bits) - 1), np.uint32((1 << high_bits) - 1)
    for round_key in keys:
        np.bitwise_and(x, low_mask, out=low)
        np.right_shift(x, np.uint32(low_bits), out=high)
        np.bitwise_xor(low, round_key, out=x)
        _mix32_u32(x, tmp)
        x &= high_mask
        x ^= high
        np.left_shift(low, np.uint32(high_bits), out=low)
        x |= low


def _signed_indices_u32_(
    x: np.ndarray, total: int, ring_size: int, key: GeneratorKey, low: np.ndarray, high: np.ndarray, tmp: np.ndarray
) -> np.ndarray:
    """Turn the uint32 positions ``x`` into signed-ring indices (returned in ``high``)."""
    if total > 1:
        keys = [np.uint32(k) for k in key.round_keys]
        bits = domain_bits(total)
        _feistel_u32(x, bits, keys, low, high, tmp)
        pending = np.flatnonzero(x >= total)
        while pending.size:  # cycle-walking, on the few values outside [0, P)
            walked = x[pending]
            _feistel_u32(walked, bits, keys, *(np.empty_like(walked) for _ in range(3)))
            x[pending] = walked
            pending = pending[walked >= total]
    else:
        x[:] = 0
    # sign: with q < 2**32, q >> 32 is 0, so the outer mix32 takes the inner hash alone
    np.bitwise_xor(x, np.uint32(key.sign_key), out=low)
    _mix32_u32(low, tmp)
    _mix32_u32(low, tmp)
    low >>= _U31
    n = np.uint32(ring_size)
    np.remainder(x, n, out=high)
    low *= n
    high += low
    return high


def _build_signed_index_uint32(
    out: np.ndarray, start: int, stop: int, total: int, ring_size: int, key: GeneratorKey, chunk: int
) -> None:
    # Chunks are independent: with several torch threads they are shared out among that
    # many Python threads (NumPy releases the GIL inside its loops).
    chunks = [(b, min(b + chunk, stop)) for b in range(start, stop, chunk)]
    if not chunks:
        return
    workers = max(1, min(torch.get_num_threads(), len(chunks)))

    def work(part: list[tuple[int, int]]) -> None:
        size = max(end - begin for begin, end in part)
        x_all, low_all, high_all, tmp_all = (np.empty(size, dtype=np.uint32) for _ in range(4))
        for begin, end in part:
            m = end - begin
            x = x_all[:m]
            x[:] = np.arange(begin, end, dtype=np.uint64)  # end itself may be 2**32
            index = _signed_indices_u32_(x, total, ring_size, key, low_all[:m], high_all[:m], tmp_all[:m])
            out[begin - start : end - start] = index.view(np.int32)

    if workers == 1:
        work(chunks)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf_rpg_index") as pool:
        for future in [pool.submit(work, chunks[i::workers]) for i in range(workers)]:
            future.result()


def _signed_indices_uint32(positions: torch.Tensor, total: int, ring_size: int, key: GeneratorKey) -> torch.Tensor:
    """``signed_indices`` of arbitrary CPU positions on the uint32 path."""
    x = positions.reshape(-1).numpy().astype(np.uint32)
    index = _signed_indices_u32_(x, total, ring_size, key, *(np.empty_like(x) for _ in range(3)))
    return torch.from_numpy(index.view(np.int32)).view(positions.shape)


_U15, _U16, _U31 = np.uint32(15), np.uint32(16), np.uint32(31)
_U_MULTIPLIER_1, _U_MULTIPLIER_2 = np.uint32(MIX_MULTIPLIER_1), np.uint32(MIX_MULTIPLIER_2)


def ring_normal_init(ring_size: int, key: GeneratorKey) -> torch.Tensor:
    """Initial ring values, standard normal, from the key alone (float64, on CPU).

    Two keyed 32-bit hashes of the entry's index give two uniforms, and Box-Muller turns
    them into a normal value. The global RNG is never touched.
    """
    i = torch.arange(ring_size, dtype=torch.int64)
    hashes = []
    for init_key in key.init_keys:
        hashes.append(mix32(mix32((i & MASK32) ^ init_key) ^ (i >> 32)))
    u1 = (hashes[0].to(torch.float64) + 0.5) / 2.0**32
    u2 = hashes[1].to(torch.float64) / 2.0**32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------------------
# Reference implementation on Python integers: the executable form of docs/generator.md.
# Slow; used by the tests to check the tensor implementation.
# --------------------------------------------------------------------------------------


def reference_mix32(x: int) -> int:
    """``mix32`` on one Python int."""
    x ^= x >> 16
    x = (x * MIX_MULTIPLIER_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MULTIPLIER_2) & MASK32
    return x ^ (x >> 16)


def reference_permute(p: int, total: int, key: GeneratorKey) -> int:
    """``permute`` of one position."""
    if total == 1:
        return 0
    bits = domain_bits(total)
    low_bits = (bits + 1) // 2
    high_bits = bits - low_bits
    x = p
    while True:
        for round_key in key.round_keys:
            low = x & ((1 << low_bits) - 1)
            high = x >> low_bits
            f = reference_mix32(low ^ round_key) & ((1 << high_bits) - 1)
            x = (low << high_bits) | (high ^ f)
        if x < total:
            return x


def reference_is_negative(q: int, key: GeneratorKey) -> int:
    """``is_negative`` of one permuted position: 1 for a negative sign, else 0."""
    return reference_mix32((q >> 32) ^ reference_mix32((q & MASK32) ^ key.sign_key)) >> 31


def reference_signed_index(p: int, total: int, ring_size: int, key: GeneratorKey) -> int:
    """``signed_indices`` of one position."""
    q = reference_permute(p, total, key)
    return q % ring_size + ring_size * reference_is_negative(q, key)
