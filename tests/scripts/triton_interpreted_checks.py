"""The Triton kernels in Triton's interpreter, against the reference generator, bit for bit.

Run by ``tests/test_triton_kernels.py`` in a child process with ``TRITON_INTERPRET=1`` (set
before triton is imported); by hand::

    TRITON_INTERPRET=1 python -m pytest tests/scripts/triton_interpreted_checks.py

Sizes stay small: the interpreter runs each block of positions as a few hundred NumPy calls.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import MODELS
from test_generator import GOLDEN
from test_lowrank import GOLDEN_PROJECTION
from test_triton_kernels import random_cases, reference

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.spec import index_kernels
from hf_rpg.spec import triton_kernels as kernels
from hf_rpg.spec.generator import build_signed_index, derive_key, signed_indices
from hf_rpg.spec.lowrank import projection, projection_key_name
from hf_rpg.spec.lowrank_shapes import REFERENCE_RANK

if not kernels.INTERPRETED:
    pytest.skip("run with TRITON_INTERPRET=1 (see the module docstring)", allow_module_level=True)

# A few checks also run with small blocks: many programs, masked last blocks.
SMALL_BLOCK = 256


@pytest.mark.parametrize(("args", "signed", "permuted"), GOLDEN)
def test_golden_vectors(args, signed, permuted):
    """The committed golden vectors, at given positions and as a span, in both domains
    (uint32 below 2**32 positions, uint64 above)."""
    seed, ring, total, size = args
    key = derive_key(seed, ring)
    positions = torch.tensor([0, 1, 2, 3, total // 2, total - 1])
    out = torch.empty(6, dtype=torch.int64)
    kernels.signed_indices(key, total, size, 0, positions, out)
    assert out.tolist() == signed
    span = torch.empty(4, dtype=torch.int64)
    kernels.signed_indices(key, total, size, 0, None, span)
    assert span.tolist() == signed[:4]
    if size <= 1 << 16:  # a ring small enough to hold: the gathered values too
        ring_values = torch.randn(size, dtype=torch.float64)
        values = torch.empty(6, dtype=torch.float64)
        kernels.gather(ring_values, key, total, 0, positions, values, 1.0)
        assert torch.equal(values, reference(ring_values, torch.tensor(signed), 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gather_span_is_the_tensor_path_bit_for_bit(dtype):
    key = derive_key(11, "default")
    for i, (total, size, start, numel) in enumerate(random_cases(8, seed=1, largest=50_000)):
        ring = torch.randn(size, dtype=torch.float64).to(dtype)
        gain = [1.0, 0.37, -2.5, 1e-3][i % 4]
        out = torch.empty(numel, dtype=dtype)
        kernels.gather(ring, key, total, start, None, out, gain, block=SMALL_BLOCK if i % 2 else None)
        index = build_signed_index(total, size, key, start=start, stop=start + numel)
        assert torch.equal(out, reference(ring, index, gain)), (total, size, start, numel)


def test_gather_beyond_the_uint32_domain():
    """Above 2**32 positions the kernels work on uint64 (here: spans at both ends and random
    positions of a ring of 2**33 + 5 positions)."""
    key = derive_key(5, "big")
    total, size = 2**33 + 5, 3001
    ring = torch.randn(size)
    for start in (0, total - 700, 2**32 - 300):
        out = torch.empty(700)
        kernels.gather(ring, key, total, start, None, out, 0.5)
        positions = torch.arange(start, start + 700)
        assert torch.equal(out, reference(ring, signed_indices(positions, total, size, key), 0.5))
    positions = torch.randint(0, total, (2000,), generator=torch.Generator().manual_seed(0))
    out = torch.empty(2000)
    kernels.gather(ring, key, total, 0, positions, out, 0.5)
    assert torch.equal(out, reference(ring, signed_indices(positions, total, size, key), 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_at_positions_with_repeats(dtype):
    key = derive_key(3, "embeddings")
    total, size = 40_000, 777
    ring = torch.randn(size).to(dtype)
    positions = torch.randint(0, total, (2500,), generator=torch.Generator().manual_seed(2))
    positions[100:200] = positions[0]  # repeated positions read the same entry
    out = torch.empty(2500, dtype=dtype)
    kernels.gather(ring, key, total, 0, positions, out, 1.25)
    assert torch.equal(out, reference(ring, signed_indices(positions, total, size, key), 1.25))


@pytest.mark.parametrize(("grad_dtype", "ring_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                        (torch.float64, torch.float64)])  # fmt: skip
def test_scatter_is_index_add_to_rounding(grad_dtype, ring_dtype):
    key = derive_key(9, "default")
    g = torch.Generator().manual_seed(4)
    for total, size, start, numel in random_cases(6, seed=2, largest=30_000):
        grad = torch.randn(numel, generator=g).to(grad_dtype)
        got = torch.zeros(size, dtype=ring_dtype)
        kernels.scatter(got, key, total, start, None, grad, -0.75, block=SMALL_BLOCK if numel % 2 else None)
        index = build_signed_index(total, size, key, start=start, stop=start + numel).to(torch.int64)
        signed = torch.zeros(2 * size, dtype=ring_dtype).index_add_(0, index, grad.to(ring_dtype), alpha=-0.75)
        torch.testing.assert_close(got, signed[:size] - signed[size:], rtol=1e-5, atol=1e-5)
    # at positions, with repeats: each use adds once
    positions = torch.tensor([5, 5, 5, 17, 29_999])
    got = torch.zeros(50, dtype=ring_dtype)
    kernels.scatter(got, key, 30_000, 0, positions, torch.ones(5, dtype=grad_dtype), 2.0)
    index = signed_indices(positions, 30_000, 50, key).to(torch.int64)
    signed = torch.zeros(100, dtype=ring_dtype).index_add_(0, index, torch.full((5,), 2.0, dtype=ring_dtype))
    assert torch.equal(got, signed[:50] - signed[50:])


@pytest.mark.parametrize(("args", "signs"), GOLDEN_PROJECTION)
def test_projection_golden_vectors(args, signs):
    seed, name, rank, in_features = args
    scale = math.sqrt(REFERENCE_RANK) / rank
    values = kernels.projection(derive_key(seed, projection_key_name(name)), rank, in_features, scale,
                                    torch.float32, "cpu")  # fmt: skip
    assert torch.equal(values, torch.tensor(signs, dtype=torch.float32).view(rank, in_features) * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(("rank", "in_features"), [(1, 7), (3, 100), (16, 257)])
def test_projection_is_the_tensor_path_bit_for_bit(dtype, rank, in_features):
    key = derive_key(21, projection_key_name("layer.weight"))
    scale = math.sqrt(REFERENCE_RANK) / rank
    got = kernels.projection(key, rank, in_features, scale, dtype, "cpu")
    assert torch.equal(got, projection(21, "layer.weight", rank, in_features, dtype=dtype))


def test_a_model_trains_through_the_interpreted_kernels(monkeypatch):
    """The engine's hook: with numba absent and the kernels interpreted, a model without an
    index cache generates through Triton (counted) the weights numba generates, and its ring
    gradients agree."""
    tiny = MODELS["bert_cls"]
    torch.manual_seed(0)
    base = tiny.build()
    batch = tiny.batch(0)
    config = RPGConfig(dof=0.3, seed=6, index_cache="none")
    results = {}
    calls = {"gather": 0, "scatter": 0}
    for path in ("numba", "triton"):
        with monkeypatch.context() as patch:
            if path == "triton":
                patch.setattr(index_kernels, "_kernels_module", False)  # as if numba were missing
                patch.setattr(index_kernels, "_triton_module", kernels)
                for name in calls:
                    patch.setattr(kernels, name, _counted(getattr(kernels, name), calls, name))
                assert index_kernels.triton_serves("cpu")
            model = apply_rpg(copy.deepcopy(base), config)
            with torch.no_grad():
                weights = {n: w.clone() for n, w in model.generated_weights()}
            model.train()
            model(**batch).loss.backward()
            results[path] = (weights, {n: p.grad.clone() for n, p in model.rpg_rings.items()})
    assert calls["gather"] > 0 and calls["scatter"] > 0
    for name, weight in results["numba"][0].items():
        assert torch.equal(results["triton"][0][name], weight), name
    for name, grad in results["numba"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, rtol=1e-4, atol=1e-6)


def _counted(function, calls: dict[str, int], name: str):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return wrapper


def test_the_index_cache_is_built_by_the_kernel(monkeypatch):
    """Where Triton serves (CUDA; here the interpreter with numba absent), the engine builds its
    int32 cache with one kernel: the generator's indices, bit for bit."""
    monkeypatch.setattr(index_kernels, "_kernels_module", False)
    monkeypatch.setattr(index_kernels, "_triton_module", kernels)
    calls = {"signed_indices": 0}
    monkeypatch.setattr(kernels, "signed_indices", _counted(kernels.signed_indices, calls, "signed_indices"))
    torch.manual_seed(0)
    model = apply_rpg(MODELS["gpt2"].build(), RPGConfig(dof=0.3, seed=8, index_cache="int32"))
    model.build_index_caches()
    assert calls["signed_indices"] == len(model.layout.rings) > 0
    for name, ring in model.layout.rings.items():
        expected = build_signed_index(ring.elements, ring.size, derive_key(8, name))
        # white-box: the cache's contents (on the CPU, float32 rings keep the signed-index layout)
        assert torch.equal(model._engine.indices.cached(name, torch.device("cpu")), expected), name
