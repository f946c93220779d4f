"""Fused on-the-fly kernels (hf_rpg.spec.index_kernels): bit for bit the rpg-v1 weights of
today's cache path, gradients equal to index_add_ to rounding, validation on every path.

Each test runs on the compiled (numba) path and on the tensor path the module falls back
to; the compiled one is skipped only where numba is not installed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import torch_threads
from test_generator import GOLDEN

from hf_rpg.spec import index_kernels as K
from hf_rpg.spec.generator import build_signed_index, derive_key, reference_signed_index, signed_indices
from hf_rpg.spec.kernel_arguments import division_magic

COMPILED = K.available(torch.device("cpu"))


@pytest.fixture(params=["compiled", "tensor"])
def path(request, monkeypatch):
    """Run the test on one of the module's two CPU paths."""
    if request.param == "compiled" and not COMPILED:
        pytest.skip("numba is not installed: only the tensor path can run")
    if request.param == "tensor":
        monkeypatch.setattr(K, "_DISABLED", True)
    return request.param


def spec_values(ring: torch.Tensor, key, total: int, start: int, numel: int, gain: float) -> torch.Tensor:
    """Today's path: the signed index, a gather from [ring, -ring], then the gain."""
    index = build_signed_index(total, ring.numel(), key, start=start, stop=start + numel)
    values = torch.index_select(torch.cat((ring, ring.neg())), 0, index)
    return values.mul_(gain)


def spec_grad(n: int, key, total: int, positions: torch.Tensor, grad: torch.Tensor, gain: float) -> torch.Tensor:
    """Today's backward: index_add_ into the signed ring, then the fold (float64 here)."""
    index = signed_indices(positions, total, n, key).to(torch.int64)
    signed = torch.zeros(2 * n, dtype=torch.float64).index_add_(0, index, grad.double().flatten(), alpha=gain)
    return signed[:n] - signed[n:]


def ring_of(n: int, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dtype)


# (total, ring size, seed, start, numel): tiny totals, ring == total, powers of two and one
# past them (the most cycle-walking), the uint32 domain's last positions, several blocks.
CASES = [
    (1, 1, 0, 0, 1),
    (2, 1, 1, 0, 2),
    (2, 2, 2, 1, 1),
    (3, 2, 3, 0, 3),
    (3, 3, 4, 0, 3),
    (5, 5, 5, 1, 4),
    (4096, 4096, 6, 0, 4096),
    (4097, 10, 12345, 0, 4097),
    (65537, 300, 7, 1000, 60000),
    (1000, 100, 0, 0, 1000),
    (10**6 + 3, 400_000, 8, 123_457, 300_000),
    (2**20, 1, 9, 2**20 - 5000, 5000),
    (2**32, 1000, 10, 2**32 - 3000, 3000),
    (2**32 - 1, 2**20 + 3, 11, 2**31, 2000),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("total", "size", "seed", "start", "numel"), CASES)
def test_span_is_bit_identical_to_todays_path(path, dtype, total, size, seed, start, numel):
    key = derive_key(seed, "default")
    ring = ring_of(size, dtype, seed)
    got = K.generate_span(ring, key, total, start, numel, 0.0123456789)
    assert got.dtype == dtype and got.shape == (numel,)
    assert torch.equal(got, spec_values(ring, key, total, start, numel, 0.0123456789))


def test_random_spans_are_bit_identical(path):
    rng = random.Random(5)
    for _ in range(25):
        total = rng.choice(
            [rng.randint(1, 300), rng.randint(300, 300_000), 2 ** rng.randint(2, 18) + rng.randint(-1, 1)]
        )
        size = rng.randint(1, total)
        start = rng.randint(0, total - 1)
        numel = rng.randint(0, min(total - start, 20_000))
        key = derive_key(rng.getrandbits(64), rng.choice(["default", "r1"]))
        ring = ring_of(size, rng.choice([torch.float32, torch.bfloat16, torch.float64]), rng.getrandbits(16))
        gain = rng.uniform(-2, 2)
        got = K.generate_span(ring, key, total, start, numel, gain)
        assert torch.equal(got, spec_values(ring, key, total, start, numel, gain)), (total, size, start, numel)


# rows whose ring can be materialised (the table also pins rings of 2**40 entries)
SMALL_GOLDEN = [row for row in GOLDEN if row[0][3] <= 1 << 20]


@pytest.mark.parametrize(("args", "signed", "permuted"), SMALL_GOLDEN)
def test_golden_vectors(path, args, signed, permuted):
    """A ring 1, 2, ..., N (float64, gain 1) shows the signed index of every value."""
    seed, name, total, size = args
    key = derive_key(seed, name)
    ring = torch.arange(1, size + 1, dtype=torch.float64)
    positions = torch.tensor([0, 1, 2, 3, total // 2, total - 1])
    values = K.generate_at(ring, key, total, positions, 1.0)
    decoded = [int(abs(v)) - 1 + size * int(v < 0) for v in values]
    assert decoded == signed
    assert [int(K.generate_span(ring, key, total, int(p), 1, 1.0)[0]) for p in positions] == values.tolist()
    assert [q % size for q in permuted] == [s % size for s in signed]


@pytest.mark.parametrize("total", [2**32 + 1, 2**33 + 5, 3 * 2**40 + 7])
def test_totals_beyond_uint32_take_the_int64_path(path, total):
    key = derive_key(99, "default")
    ring = ring_of(1000, torch.float32)
    for start in (0, min(2**32 - 2, total - 40), total - 40):
        got = K.generate_span(ring, key, total, start, 40, 0.5)
        assert torch.equal(got, spec_values(ring, key, total, start, 40, 0.5))
        expected = [reference_signed_index(start + j, total, 1000, key) for j in range(40)]
        assert torch.equal(got, torch.cat((ring, -ring))[torch.tensor(expected)] * 0.5)
    positions = torch.tensor([[0, total - 1], [2**32, 12345]])
    got = K.generate_at(ring, key, total, positions, 1.5)
    assert got.shape == (2, 2)
    index = torch.tensor([reference_signed_index(int(p), total, 1000, key) for p in positions.flatten()])
    assert torch.equal(got.flatten(), torch.cat((ring, -ring))[index] * 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_generate_at_any_shape_with_repeats(path, dtype):
    key = derive_key(3, "emb")
    total, size = 30_011, 2_000
    ring = ring_of(size, dtype)
    positions = torch.randint(0, total, (7, 5, 33), generator=torch.Generator().manual_seed(1))
    positions[0, 0, :4] = torch.tensor([0, total - 1, 17, 17])
    got = K.generate_at(ring, key, total, positions, -0.75)
    index = signed_indices(positions.flatten(), total, size, key)
    expected = torch.index_select(torch.cat((ring, -ring)), 0, index).mul_(-0.75).view(positions.shape)
    assert got.shape == positions.shape and torch.equal(got, expected)


def test_out_buffer_is_filled_and_returned(path):
    key = derive_key(1, "default")
    ring = ring_of(500)
    out = torch.full((20, 30), 7.0)
    got = K.generate_span(ring, key, 10_000, 300, 600, 0.2, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out.flatten(), spec_values(ring, key, 10_000, 300, 600, 0.2))


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    ("total", "size", "start", "numel"), [(3, 2, 0, 3), (70_001, 3000, 1, 70_000), (2**32, 999, 2**32 - 9000, 9000)]
)
def test_span_gradient_equals_index_add(path, grad_dtype, total, size, start, numel):
    """Equal to rounding (float32 sums in another order), and added to what was there."""
    key = derive_key(21, "default")
    grad = torch.randn(numel, generator=torch.Generator().manual_seed(2)).to(grad_dtype)
    grad_ring = torch.linspace(-1, 1, size)
    K.accumulate_span_grad(grad_ring, key, total, start, grad, 0.37)
    expected = torch.linspace(-1, 1, size).double() + spec_grad(
        size, key, total, torch.arange(start, start + numel), grad, 0.37
    )
    torch.testing.assert_close(grad_ring.double(), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_ring_gradient_is_summed_in_float32(path):
    key = derive_key(4, "default")
    grad = torch.randn(50_000, generator=torch.Generator().manual_seed(3))
    grad_ring = torch.zeros(700, dtype=torch.bfloat16)
    K.accumulate_span_grad(grad_ring, key, 60_000, 1000, grad, 1.0)
    expected = spec_grad(700, key, 60_000, torch.arange(1000, 51_000), grad, 1.0)
    assert grad_ring.dtype == torch.bfloat16
    torch.testing.assert_close(grad_ring.double(), expected, rtol=1e-2, atol=2e-2)  # bf16 rounding of each sum


@pytest.mark.parametrize("total", [40_009, 2**33 + 1])
def test_gradient_at_positions_with_repeats(path, total):
    key = derive_key(8, "emb")
    positions = torch.randint(0, min(total, 40_009), (64, 12), generator=torch.Generator().manual_seed(4))
    positions[:, 0] = 5  # one position used 64 times
    grad = torch.randn(64, 12, generator=torch.Generator().manual_seed(5))
    grad_ring = torch.zeros(3001, dtype=torch.float64)
    K.accumulate_grad_at(grad_ring, key, total, positions, grad, -1.25)
    torch.testing.assert_close(grad_ring, spec_grad(3001, key, total, positions.flatten(), grad, -1.25))


def test_empty_spans_and_positions(path):
    key = derive_key(0, "default")
    ring = ring_of(10)
    assert K.generate_span(ring, key, 100, 100, 0, 1.0).shape == (0,)
    assert K.generate_at(ring, key, 100, torch.empty(0, 4, dtype=torch.int64), 1.0).shape == (0, 4)
    grad_ring = torch.ones(10)
    K.accumulate_span_grad(grad_ring, key, 100, 0, torch.empty(0), 1.0)
    K.accumulate_grad_at(grad_ring, key, 100, torch.empty(0, dtype=torch.int64), torch.empty(0), 1.0)
    assert torch.equal(grad_ring, torch.ones(10))


@pytest.mark.parametrize("total", [1000, 2**33])
def test_positions_outside_the_ring_raise_before_anything_is_written(path, total):
    key = derive_key(0, "default")
    ring, grad_ring = ring_of(100), torch.zeros(100)
    for bad in ([0, -1, 5], [total], [3, total + 10**6]):
        positions = torch.tensor(bad)
        with pytest.raises(ValueError, match=r"positions must be in \[0, total="):
            K.generate_at(ring, key, total, positions, 1.0)
        with pytest.raises(ValueError, match=r"positions must be in \[0, total="):
            K.accumulate_grad_at(grad_ring, key, total, positions, torch.ones(len(bad)), 1.0)
    assert torch.equal(grad_ring, torch.zeros(100))
    with pytest.raises(ValueError, match="positions must be an integer tensor"):
        K.generate_at(ring, key, total, torch.tensor([1.0]), 1.0)


def test_bad_arguments_name_the_parameter(path):
    key = derive_key(0, "default")
    ring = ring_of(100)
    with pytest.raises(ValueError, match="start >= 0"):
        K.generate_span(ring, key, 1000, 990, 20, 1.0)
    with pytest.raises(ValueError, match="start >= 0"):
        K.generate_span(ring, key, 1000, -1, 2, 1.0)
    with pytest.raises(ValueError, match="ring size"):
        K.generate_span(ring, key, 50, 0, 2, 1.0)
    with pytest.raises(ValueError, match="total must be in"):
        K.generate_span(ring, key, 0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="gain must be a float"):
        K.generate_span(ring, key, 1000, 0, 2, "1")
    with pytest.raises(ValueError, match=r"out must be a torch\.float32 tensor of 3 elements"):
        K.generate_span(ring, key, 1000, 0, 3, 1.0, out=torch.empty(4))
    with pytest.raises(ValueError, match="grad must have 5 elements"):
        K.accumulate_grad_at(torch.zeros(100), key, 1000, torch.arange(5), torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="start >= 0"):
        K.accumulate_span_grad(torch.zeros(100), key, 1000, 999, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="grad_ring must be contiguous"):
        K.accumulate_span_grad(torch.zeros(100, 2)[:, 0], key, 1000, 0, torch.ones(2), 1.0)


def test_threads_give_the_same_weights_and_gradients(monkeypatch):
    """Weights bit for bit whatever the thread count; gradients to rounding (one buffer per thread)."""
    if not COMPILED:
        pytest.skip("numba is not installed: the tensor path has no threads of its own")
    monkeypatch.setattr(K, "MIN_PER_WORKER", 1000)
    key = derive_key(6, "default")
    ring, grad = ring_of(5000), torch.randn(90_000, generator=torch.Generator().manual_seed(6))
    results = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            values = K.generate_span(ring, key, 123_457, 17, 90_000, 0.9)
            at = K.generate_at(ring, key, 123_457, torch.arange(90_000) * 7 % 123_457, 0.9)
            grad_ring = torch.zeros(5000)
            K.accumulate_span_grad(grad_ring, key, 123_457, 17, grad, 0.9)
            results.append((values, at, grad_ring))
    for values, at, grad_ring in results[1:]:
        assert torch.equal(values, results[0][0]) and torch.equal(at, results[0][1])
        torch.testing.assert_close(grad_ring, results[0][2], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[0][0], spec_values(ring, key, 123_457, 17, 90_000, 0.9))


def test_division_magic_is_exact():
    """q // n by multiply-high and shifts, for the edge values of q and many n."""
    rng = random.Random(0)
    sizes = [1, 2, 3, 5, 7, 255, 256, 257, 65535, 65536, 65537, 400_000, 2**29 + 1, 2**30 - 1, 2**31 - 1]
    sizes += [rng.randint(1, 2**31 - 1) for _ in range(200)]
    for n in sizes:
        magic, sh1, sh2 = division_magic(n)
        assert 0 < magic < 2**32
        for q in [0, 1, n - 1, n, n + 1, 2**32 - 1, 2**32 - n, *(rng.getrandbits(32) for _ in range(50))]:
            if not 0 <= q < 2**32:
                continue
            t = (q * magic) >> 32
            assert (t + ((q - t) >> sh1)) >> sh2 == q // n, (q, n)


def test_available():
    assert K.available(torch.device("meta")) is False
    assert K.available("cpu") == COMPILED


def test_torch_compile_calls_the_kernels_as_custom_ops(path):
    """One graph, no break: dynamo must not trace into the NumPy arguments handed to numba
    (it would make them its own arrays, which numba cannot type); the ops' fake kernels give
    the shapes."""
    key = derive_key(2, "default")
    ring, x = ring_of(300), torch.randn(2000)
    positions = torch.tensor([[3, 4999], [17, 17]])

    def step(ring, x):
        weights = K.generate_span(ring, key, 5000, 100, 2000, 0.5)
        rows = K.generate_at(ring, key, 5000, positions, 0.5)
        grad_ring = torch.zeros_like(ring)
        K.accumulate_span_grad(grad_ring, key, 5000, 100, x, 0.5)
        K.accumulate_grad_at(grad_ring, key, 5000, positions, torch.ones(2, 2), 0.5)
        return (weights * x).sum(), rows, grad_ring

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # fake kernels and mutations too
    for got, expected in zip(compiled(ring, x), step(ring, x), strict=True):
        assert torch.equal(got, expected)


class _Generate(torch.autograd.Function):
    """The shape of the per-layer engine's function: generate in forward, regenerate in backward."""

    @staticmethod
    def forward(ctx, ring, key, total, start, shape):
        ctx.key, ctx.total, ctx.start, ctx.ring_size = key, total, start, ring.numel()
        return K.generate_span(ring, key, total, start, shape[0] * shape[1], 0.5).view(shape)

    @staticmethod
    def backward(ctx, grad):
        grad_ring = torch.zeros(ctx.ring_size, dtype=grad.dtype)
        K.accumulate_span_grad(grad_ring, ctx.key, ctx.total, ctx.start, grad, 0.5)
        return grad_ring, None, None, None, None


def test_an_autograd_function_on_the_kernels_compiles_in_one_graph(path):
    key = derive_key(5, "default")
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(7))

    def loss(ring):
        return (x @ _Generate.apply(ring, key, 7000, 1000, (50, 100))).square().sum()

    grads = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        ring = ring_of(300).requires_grad_()
        fn(ring).backward()
        grads.append(ring.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_integer_and_key_arguments(path):
    """NumPy / torch integers are ints; a key that is not a GeneratorKey is named."""
    key = derive_key(0, "default")
    ring = ring_of(100)
    got = K.generate_span(ring, key, np.int64(1000), torch.tensor(5), np.int32(10), np.float32(0.5))
    assert torch.equal(got, spec_values(ring, key, 1000, 5, 10, float(np.float32(0.5))))
    with pytest.raises(ValueError, match="key must be a GeneratorKey"):
        K.generate_span(ring, (1, 2, 3), 1000, 0, 10, 1.0)
    with pytest.raises(ValueError, match="start must be an int"):
        K.generate_span(ring, key, 1000, 1.5, 10, 1.0)
