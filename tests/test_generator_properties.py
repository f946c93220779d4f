"""rpg-v1 properties, property-tested: pi is a bijection for any size (checked on sizes up
to 2**62 with an independent inverse written from docs/generator.md, without allocating
them), chunking and threads change nothing, ring entries are used evenly, results are the
same in another process and on CUDA. Complements the fixed cases of test_generator.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_bert_mlm, torch_threads
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_generator import GOLDEN

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.spec.generator import (
    build_signed_index,
    derive_key,
    permute,
    reference_mix32,
    reference_permute,
    reference_signed_index,
    ring_normal_init,
    signed_indices,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
M32 = (1 << 32) - 1
SETTINGS = settings(max_examples=60, deadline=None)

# ------------------------------------------------------------------ the spec, written again
# From docs/generator.md alone (not from hf_rpg.spec.generator), so that a shared mistake in
# both would have to be made twice.


def spec_mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x31848BAB) & M32
    return x ^ (x >> 16)


def _widths(total: int) -> tuple[int, int]:
    bits = max(2, (total - 1).bit_length())
    low = (bits + 1) // 2
    return low, bits - low


def spec_encrypt(x: int, total: int, keys: tuple[int, ...]) -> int:
    """One Feistel pass E."""
    low_bits, high_bits = _widths(total)
    for k in keys:
        low, high = x & ((1 << low_bits) - 1), x >> low_bits
        x = (low << high_bits) | (high ^ (spec_mix32(low ^ k) & ((1 << high_bits) - 1)))
    return x


def spec_decrypt(y: int, total: int, keys: tuple[int, ...]) -> int:
    """E^-1: each round undone, last round first (docs/generator.md spells out the inverse)."""
    low_bits, high_bits = _widths(total)
    for k in reversed(keys):
        low = y >> high_bits
        high = (y & ((1 << high_bits) - 1)) ^ (spec_mix32(low ^ k) & ((1 << high_bits) - 1))
        y = (high << low_bits) | low
    return y


def spec_permute(p: int, total: int, keys: tuple[int, ...]) -> int:
    if total == 1:
        return 0
    x = spec_encrypt(p, total, keys)
    while x >= total:  # cycle-walking
        x = spec_encrypt(x, total, keys)
    return x


def spec_unpermute(q: int, total: int, keys: tuple[int, ...]) -> int:
    """pi^-1: walk the cycle of E backwards to the first value inside [0, total)."""
    if total == 1:
        return 0
    x = spec_decrypt(q, total, keys)
    while x >= total:
        x = spec_decrypt(x, total, keys)
    return x


def spec_signed_index(p: int, total: int, size: int, seed: int, ring: str) -> int:
    key = derive_key(seed, ring)
    q = spec_permute(p, total, key.round_keys)
    negative = spec_mix32((q >> 32) ^ spec_mix32((q & M32) ^ key.sign_key)) >> 31
    return q % size + size * negative


# ------------------------------------------------------------------ strategies

seeds = st.integers(0, 2**64 - 1)
ring_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
# Sizes above 2**31 (positions that do not fit int32), including just above and below
# powers of two, where cycle-walking runs longest.
huge_totals = st.one_of(
    st.integers(2**31 + 1, 2**62),
    st.builds(lambda k, d: 2**k + d, st.integers(31, 61), st.integers(-3, 3)),
    st.just(2**62),
)


@st.composite
def positions_in(draw, total: int, most: int = 8) -> list[int]:
    edges = [0, total - 1, total // 2]
    return draw(st.lists(st.one_of(st.sampled_from(edges), st.integers(0, total - 1)), min_size=1, max_size=most))


def test_the_spec_rewrite_agrees_with_the_library_mixer():
    for x in (0, 1, 2**31, M32, 0x12345678, 0xDEADBEEF):
        assert spec_mix32(x) == reference_mix32(x)


# ------------------------------------------------------------------ bijection


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 13, 8191, 65521, 2**12, 2**16, 2**16 + 1, 2**17 - 1])
def test_pi_is_a_bijection_on_primes_powers_of_two_and_neighbours(total):
    key = derive_key(total, "default")
    q = permute(torch.arange(total), total, key)
    assert torch.equal(torch.sort(q).values, torch.arange(total))


@SETTINGS
@given(total=st.integers(1, 5000), seed=seeds, ring=ring_names)
def test_pi_is_a_bijection_for_any_enumerable_size(total, seed, ring):
    key = derive_key(seed, ring)
    q = permute(torch.arange(total), total, key)
    assert torch.equal(torch.sort(q).values, torch.arange(total))
    probe = [0, total - 1, total // 3]
    assert [spec_unpermute(int(q[p]), total, key.round_keys) for p in probe] == probe


@settings(max_examples=150, deadline=None)
@given(data=st.data(), total=huge_totals, seed=seeds, ring=ring_names)
@example(data=None, total=2**62, seed=0, ring="default")
def test_pi_on_sizes_up_to_2_62_is_inverted_by_the_spec_inverse(data, total, seed, ring):
    """No allocation of [0, P): each drawn p maps into [0, P) and back to itself, so pi is
    injective there, hence a bijection; the tensor code, the library's pure-Python
    reference and the spec rewrite all agree."""
    positions = data.draw(positions_in(total)) if data is not None else [0, 1, total // 2, total - 1]
    key = derive_key(seed, ring)
    q = permute(torch.tensor(positions), total, key).tolist()
    assert q == [reference_permute(p, total, key) for p in positions]
    assert q == [spec_permute(p, total, key.round_keys) for p in positions]
    assert all(0 <= v < total for v in q)
    assert [spec_unpermute(v, total, key.round_keys) for v in q] == positions


@SETTINGS
@given(data=st.data(), total=st.one_of(huge_totals, st.integers(1, 10**6)), seed=seeds, ring=ring_names)
def test_signed_indices_equal_the_reference_and_the_spec(data, total, seed, ring):
    size = data.draw(st.one_of(st.integers(1, min(total, 1000)), st.integers(1, total)))
    positions = data.draw(positions_in(total))
    key = derive_key(seed, ring)
    got = signed_indices(torch.tensor(positions), total, size, key)
    assert got.dtype == (torch.int32 if 2 * size <= 2**31 - 1 else torch.int64)
    expected = [reference_signed_index(p, total, size, key) for p in positions]
    assert got.tolist() == expected
    assert expected == [spec_signed_index(p, total, size, seed, ring) for p in positions]
    assert all(0 <= v < 2 * size for v in expected)


# ------------------------------------------------------------------ chunking, balance


@SETTINGS
@given(data=st.data(), total=st.integers(1, 20_000), seed=seeds)
def test_chunked_generation_equals_whole(data, total, seed):
    size = data.draw(st.integers(1, total))
    start = data.draw(st.integers(0, total))
    stop = data.draw(st.integers(start, total))
    chunk = data.draw(st.integers(max(1, (stop - start) // 64), 2**18))
    key = derive_key(seed, "default")
    whole = build_signed_index(total, size, key)
    assert torch.equal(build_signed_index(total, size, key, start=start, stop=stop, chunk=chunk), whole[start:stop])
    picked = torch.tensor(data.draw(st.lists(st.integers(0, total - 1), max_size=50)), dtype=torch.int64)
    assert torch.equal(signed_indices(picked, total, size, key), whole[picked])


@SETTINGS
@given(data=st.data(), total=st.integers(1, 30_000), seed=seeds, ring=ring_names)
def test_every_ring_entry_is_used_floor_or_ceil_times(data, total, seed, ring):
    size = data.draw(st.integers(1, total))
    index = build_signed_index(total, size, derive_key(seed, ring)).to(torch.int64)
    assert bool(((index >= 0) & (index < 2 * size)).all())
    counts = torch.bincount(index % size, minlength=size)
    assert counts.min().item() == total // size
    assert counts.max().item() == -(-total // size)


# ------------------------------------------------------------------ golden vectors


@pytest.mark.parametrize(("args", "signed", "permuted"), GOLDEN)
def test_the_spec_written_again_gives_the_golden_vectors(args, signed, permuted):
    """The independent implementation above reproduces test_generator's golden table."""
    seed, ring, total, size = args
    positions = [0, 1, 2, 3, total // 2, total - 1]
    assert [spec_signed_index(p, total, size, seed, ring) for p in positions] == signed


def test_golden_vectors_of_the_smallest_sizes():
    assert permute(torch.tensor([0]), 1, derive_key(0, "default")).tolist() == [0]
    assert permute(torch.tensor([0, 1]), 2, derive_key(1, "default")).tolist() == [1, 0]
    assert signed_indices(torch.tensor([0, 1]), 2, 1, derive_key(1, "default")).tolist() == [0, 1]


# ------------------------------------------------------------------ threads, processes, devices


def _generated(threads: int, index_cache: str) -> dict[str, torch.Tensor]:
    with torch_threads(threads):
        torch.manual_seed(0)
        model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.1, seed=2**40 + 3, index_cache=index_cache))
        with torch.no_grad():
            return {name: w.clone() for name, w in model.generated_weights()}


def test_generated_weights_are_identical_with_1_and_2_threads_and_without_the_cache():
    one = _generated(1, "int32")
    for threads, cache in [(2, "int32"), (2, "none"), (1, "none")]:
        other = _generated(threads, cache)
        assert other.keys() == one.keys()
        assert all(torch.equal(other[k], one[k]) for k in one), (threads, cache)


CASES = [(7, "default", 200_003, 977), (2**64 - 1, "stage-1", 65_536, 65_536), (123, "x", 50_001, 25_001)]
# The child loads generator.py on its own (it imports only torch), not the whole package.
CHILD = """
import importlib.util, sys, torch
torch.set_num_threads(2)
spec = importlib.util.spec_from_file_location("rpg_generator", {path!r})
G = sys.modules["rpg_generator"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(G)
build_signed_index, derive_key, ring_normal_init = G.build_signed_index, G.derive_key, G.ring_normal_init
for seed, ring, total, size in {cases!r}:
    key = derive_key(seed, ring)
    sys.stdout.buffer.write(build_signed_index(total, size, key, chunk=4099).numpy().tobytes())
    sys.stdout.buffer.write(ring_normal_init(size, key).numpy().tobytes())
"""


def test_another_process_regenerates_the_same_bytes():
    expected = b"".join(
        build_signed_index(total, size, derive_key(seed, ring)).numpy().tobytes()
        + ring_normal_init(size, derive_key(seed, ring)).numpy().tobytes()
        for seed, ring, total, size in CASES
    )
    env = os.environ | {"PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "2"}  # neither may matter
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(path=str(REPO_ROOT / "hf_rpg" / "spec" / "generator.py"), cases=CASES)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode()
    assert child.stdout == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU vs CUDA needs a GPU; none on this machine")
def test_cuda_regenerates_what_the_cpu_does():
    for seed, ring, total, size in CASES:
        key = derive_key(seed, ring)
        on_gpu = build_signed_index(total, size, key, device="cuda").cpu()
        assert torch.equal(on_gpu, build_signed_index(total, size, key))
    key = derive_key(11, "default")
    positions = torch.tensor([0, 2**31, 2**40 + 5, 2**62 - 1])
    assert torch.equal(
        signed_indices(positions.cuda(), 2**62, 2**33, key).cpu(), signed_indices(positions, 2**62, 2**33, key)
    )
    torch.manual_seed(0)  # index_cache="none": indices computed on the GPU, not copied there
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.1, seed=5, index_cache="none"))
    with torch.no_grad():
        cpu = {n: w.clone() for n, w in model.generated_weights()}
        model.cuda()
        model.clear_cache()
        gpu = {n: w.cpu() for n, w in model.generated_weights()}
    assert all(torch.equal(gpu[n], cpu[n]) for n in cpu)
