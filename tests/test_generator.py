"""The rpg-v1 generator: golden vectors, bijection, balance, chunk/thread invariance."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from conftest import torch_threads

from hf_rpg.spec import generator as G
from hf_rpg.spec.generator import (
    build_signed_index,
    derive_key,
    permute,
    reference_permute,
    reference_signed_index,
    ring_normal_init,
    signed_indices,
)

# The one golden table. (seed, ring, P, N) -> signed indices and permuted positions at
# p = 0, 1, 2, 3, P//2, P-1, computed once with the pure-Python reference; the last three
# rows go above 2**31: N above 2**30 (int64 indices), P = 2**62 (the largest size) and
# P = 2**33 + 1 (the longest cycle walks). Any change to the generator must change
# GENERATOR_VERSION and these vectors; a silent change fails here (and in
# test_generator_properties, against the spec written again from docs/generator.md).
GOLDEN = [
    ((0, "default", 1000, 100), [48, 79, 77, 128, 69, 96], [848, 879, 777, 328, 669, 296]),
    ((12345, "default", 4097, 10), [9, 8, 0, 10, 19, 7], [3449, 1078, 170, 3920, 3259, 657]),
    (
        (2**64 - 1, "stage1", 65536, 65536),
        [98510, 1526, 25891, 10585, 89638, 108649],
        [32974, 1526, 25891, 10585, 24102, 43113],
    ),
    (
        (7, "default", 10**9 + 7, 1000),
        [615, 1022, 1899, 805, 91, 1090],
        [296848615, 421545022, 222558899, 400295805, 674356091, 945136090],
    ),
    (
        (2**63 + 1, "default", 2**62, 2**40),
        [1886383914913, 774521025343, 1826838229328, 988249339156, 1350525594358, 427079978592],
        [
            2898302442573545377,
            1365219282753745727,
            3086356254772900176,
            319292567885722900,
            3361525055985625846,
            796704353543212640,
        ],
    ),
    (
        (5, "stage2", 2**31 + 11, 2**30 + 3),
        [1958087259, 443274462, 1698895152, 974049764, 1686968558, 2005245113],
        [1958087259, 1517016289, 1698895152, 974049764, 1686968558, 931503286],
    ),
    (
        (99, "default", 2**33 + 1, 12345),
        [10620, 17095, 12154, 14761, 19251, 10961],
        [4225543635, 341023030, 8065346314, 7578721366, 7986826866, 7692106391],
    ),
]
GOLDEN_KEY = (1964657192, 65944947, 1362666387, 311127504)
GOLDEN_INIT = [2.0046675368482108, 0.4674008012717793, 0.01044426657156852, -0.47829400412448664, 1.77214250912412]


@pytest.mark.parametrize(("args", "signed", "permuted"), GOLDEN)
def test_golden_vectors(args, signed, permuted):
    seed, ring, total, size = args
    key = derive_key(seed, ring)
    positions = torch.tensor([0, 1, 2, 3, total // 2, total - 1])
    assert signed_indices(positions, total, size, key).tolist() == signed
    assert permute(positions, total, key).tolist() == permuted
    assert [reference_signed_index(int(p), total, size, key) for p in positions] == signed


def test_golden_key_and_ring_init():
    key = derive_key(0, "default")
    assert key.round_keys == GOLDEN_KEY
    assert G.GENERATOR_VERSION == "rpg-v1"
    torch.testing.assert_close(
        ring_normal_init(5, key), torch.tensor(GOLDEN_INIT, dtype=torch.float64), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 64, 97, 1000, 4096, 10007])
def test_permutation_is_a_bijection_and_matches_reference(total):
    key = derive_key(3, "default")
    q = permute(torch.arange(total), total, key)
    assert sorted(q.tolist()) == list(range(total))
    assert q.tolist() == [reference_permute(p, total, key) for p in range(total)]


@pytest.mark.parametrize(("total", "size"), [(10007, 333), (4096, 4096), (1000, 1), (999, 7), (12345, 6000)])
def test_each_ring_entry_is_used_floor_or_ceil_times(total, size):
    index = build_signed_index(total, size, derive_key(1, "default")).to(torch.int64)
    counts = torch.bincount(index % size, minlength=size)
    assert counts.min().item() == total // size
    assert counts.max().item() == -(-total // size)
    assert counts.sum().item() == total


def test_signs_are_balanced_and_seed_dependent():
    total, size = 100_000, 1000
    a = build_signed_index(total, size, derive_key(0, "default"))
    b = build_signed_index(total, size, derive_key(1, "default"))
    c = build_signed_index(total, size, derive_key(0, "other"))
    negative = (a >= size).double().mean().item()
    assert 0.48 < negative < 0.52
    assert not torch.equal(a, b) and not torch.equal(a, c)
    # the same entry's copies carry both signs
    per_entry = torch.zeros(size).index_add_(0, a.long() % size, ((a >= size).float() * 2 - 1))
    assert per_entry.abs().mean() < 10


def test_chunking_does_not_change_anything():
    total, size = 50_001, 977
    key = derive_key(42, "default")
    whole = build_signed_index(total, size, key)
    for chunk in (7, 1000, 1 << 16):  # one-element chunks: test_single_position_chunks_match
        assert torch.equal(build_signed_index(total, size, key, chunk=chunk), whole)
    assert torch.equal(build_signed_index(total, size, key, start=123, stop=4567, chunk=333), whole[123:4567])
    shuffled = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    assert torch.equal(signed_indices(shuffled, total, size, key), whole[shuffled])


def test_single_position_chunks_match():
    total, size = 300, 17
    key = derive_key(5, "default")
    whole = build_signed_index(total, size, key)
    singles = torch.cat([build_signed_index(total, size, key, start=p, stop=p + 1) for p in range(total)])
    assert torch.equal(singles, whole)


def test_thread_count_does_not_change_anything():
    total, size = 300_000, 12345
    key = derive_key(9, "default")
    with torch_threads(1):
        one = build_signed_index(total, size, key)
    with torch_threads(2):
        two = build_signed_index(total, size, key)
    assert torch.equal(one, two)


def test_positions_beyond_int32_and_large_totals():
    total = 2**40 + 7
    key = derive_key(11, "default")
    positions = torch.tensor([0, 2**31, 2**33 + 5, 2**40, total - 1])
    q = permute(positions, total, key)
    assert q.tolist() == [reference_permute(int(p), total, key) for p in positions]
    assert (q >= 0).all() and (q < total).all()
    signed = signed_indices(positions, total, 2**29, key)
    assert signed.dtype == torch.int32
    assert signed.tolist() == [reference_signed_index(int(p), total, 2**29, key) for p in positions]


def test_generator_uses_no_library_rng(monkeypatch):
    """rpg-v1 must not depend on torch/NumPy RNG streams: forbid them while it runs."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the generator used an RNG")

    monkeypatch.setattr(torch, "randperm", forbidden)
    monkeypatch.setattr(torch, "Generator", forbidden)
    monkeypatch.setattr(torch, "rand", forbidden)
    monkeypatch.setattr(torch, "randn", forbidden)
    monkeypatch.setattr(torch, "randint", forbidden)
    build_signed_index(10_000, 100, derive_key(0, "default"))
    ring_normal_init(100, derive_key(0, "default"))
    tree = ast.parse(inspect.getsource(G))
    identifiers = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    identifiers |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not identifiers & {"randperm", "Generator", "random", "manual_seed", "rand", "randn", "default_rng"}


def test_global_rng_state_is_untouched():
    state = torch.get_rng_state()
    build_signed_index(5000, 50, derive_key(0, "default"))
    ring_normal_init(50, derive_key(0, "default"))
    assert torch.equal(state, torch.get_rng_state())


def test_invalid_arguments():
    key = derive_key(0, "default")
    with pytest.raises(ValueError, match="seed"):
        derive_key(-1, "default")
    with pytest.raises(ValueError, match="total"):
        permute(torch.arange(3), 0, key)
    with pytest.raises(ValueError, match="ring_size"):
        signed_indices(torch.arange(3), 10, 11, key)


@pytest.mark.parametrize(
    ("total", "size", "start", "stop"),
    [
        (1, 1, 0, 1),
        (2, 1, 0, 2),
        (17, 5, 3, 17),
        (10007, 333, 0, 10007),
        (65536, 65536, 100, 60000),
        (300_001, 7, 0, 300_001),
    ],
)
def test_uint32_and_int64_paths_are_bit_identical(total, size, start, stop):
    key = derive_key(21, "default")
    assert G.uint32_path_applies(total, size)
    fast = build_signed_index(total, size, key, start=start, stop=stop, chunk=4096)  # CPU: the uint32 path
    portable = torch.empty(stop - start, dtype=torch.int32)
    G._build_signed_index_int64(portable, start, stop, total, size, key, 4096)  # the path CUDA takes
    assert torch.equal(fast, portable)
    sample = range(start, stop, max(1, (stop - start) // 97))
    assert [int(fast[p - start]) for p in sample] == [reference_signed_index(p, total, size, key) for p in sample]
    # arbitrary positions (row-wise embeddings, on-the-fly indices) take the same two paths
    positions = torch.randint(start, stop, (2, 500), generator=torch.Generator().manual_seed(0))
    x = positions.flatten().clone()
    G._signed_indices_(x, total, size, key, G._Scratch(x.numel(), "cpu"))
    assert torch.equal(signed_indices(positions, total, size, key).long(), x.view(2, 500))


def test_the_uint32_path_stops_where_32_bits_stop():
    assert G.uint32_path_applies(2**32, 1000)
    assert not G.uint32_path_applies(2**32 + 1, 1000)
    assert not G.uint32_path_applies(2**33, 2**30)
