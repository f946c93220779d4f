"""The two in-memory layouts of the index cache give the same model.

Large CPU rings keep their cache in the sign-bit layout (``hf_rpg.spec.index_encoding``); the
tiny test models are far below that size, so these tests lower the threshold and compare
each model against the signed layout: weights bit for bit, ring gradients to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, forward_backward, torch_threads

import hf_rpg.runtime.ring_autograd
from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.spec import index_encoding
from hf_rpg.spec.generator import build_signed_index, derive_key


def _pair(name: str, monkeypatch, **config):
    """The same tiny model under RPG twice: signed layout, then sign-bit layout."""
    torch.manual_seed(0)
    tiny = MODELS[name]
    base = tiny.build()
    signed = apply_rpg(copy.deepcopy(base), RPGConfig(seed=3, index_cache="int32", **config))
    signed.build_index_caches()  # caches are built on first use: build them under each threshold
    monkeypatch.setattr(index_encoding, "SIGN_BIT_MIN_SIGNED_BYTES", 0)
    sign_bit = apply_rpg(base, RPGConfig(seed=3, index_cache="int32", **config))
    sign_bit.build_index_caches()
    assert not any(signed.runtime_stats().sign_bit_rings.values())
    assert all(sign_bit.runtime_stats().sign_bit_rings.values())
    return tiny, signed, sign_bit


@pytest.mark.parametrize("name", ["bert_cls", "gpt2", "resnet"])
@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_sign_bit_layout_gives_the_same_weights_and_gradients(name, mode, monkeypatch):
    tiny, signed, sign_bit = _pair(name, monkeypatch, dof=0.3, mode=mode)
    batch = tiny.batch(0)
    if mode == "delta":  # a ring at zero hides sign mistakes: start both from the same values
        with torch.no_grad():
            for ring_name, ring in signed.rpg_rings.items():
                ring.normal_(generator=torch.Generator().manual_seed(1))
                sign_bit.rpg_rings[ring_name].copy_(ring)
    loss_a, weights_a, grads_a = forward_backward(signed, batch)
    loss_b, weights_b, grads_b = forward_backward(sign_bit, batch)
    assert weights_a.keys() == weights_b.keys()
    for key, weight in weights_a.items():
        assert torch.equal(weights_b[key], weight), key  # the gather is exact in both layouts
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    assert sign_bit.runtime_stats().index_cache_bytes == signed.runtime_stats().index_cache_bytes  # still 4 B/element
    assert not any(signed.runtime_stats().sign_bit_rings.values()) and all(
        sign_bit.runtime_stats().sign_bit_rings.values()
    )


def test_sign_bit_layout_with_tied_weights(monkeypatch):
    """BertForMaskedLM ties its word embedding to the LM head: generated once, used twice.
    (BertForSequenceClassification above covers the looked-up-rows path of an untied one.)"""
    tiny, signed, sign_bit = _pair("bert_mlm", monkeypatch, dof=0.5)
    batch = tiny.batch(1)
    _, _, grads_a = forward_backward(signed, batch)
    _, _, grads_b = forward_backward(sign_bit, batch)
    torch.testing.assert_close(grads_b["rpg_rings.default"], grads_a["rpg_rings.default"], rtol=1e-5, atol=1e-7)


def test_sign_bit_layout_in_parallel_blocks(monkeypatch):
    """Several threads and blocks smaller than a target."""
    tiny, signed, sign_bit = _pair("vit", monkeypatch, dof=0.25)
    batch = tiny.batch(2)
    monkeypatch.setattr(index_encoding, "BLOCK", 100)
    monkeypatch.setattr(hf_rpg.runtime.ring_autograd, "PARALLEL_CHUNK", 512)
    with torch_threads(2):
        _, weights_a, grads_a = forward_backward(signed, batch)
        _, weights_b, grads_b = forward_backward(sign_bit, batch)
    for key, weight in weights_a.items():
        assert torch.equal(weights_b[key], weight), key
    torch.testing.assert_close(grads_b["rpg_rings.default"], grads_a["rpg_rings.default"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_sign_bit_gather_and_scatter_against_the_signed_ring(dtype, monkeypatch):
    """Each float width (float32 flips the sign bit; others multiply by the sign)."""
    monkeypatch.setattr(index_encoding, "BLOCK", 333)
    total, size, gain = 5000, 700, 0.7
    signed = build_signed_index(total, size, derive_key(0, "default"))
    sign_bit = index_encoding.signed_to_sign_bit_(signed.clone(), size)
    ring = torch.randn(size, generator=torch.Generator().manual_seed(0)).to(dtype)
    base = torch.randn(total, generator=torch.Generator().manual_seed(1)).to(dtype)

    out = torch.empty(total, dtype=dtype)
    index_encoding.gather_sign_bit(ring, sign_bit, out, gain, base)
    assert torch.equal(out, torch.cat((ring, ring.neg()))[signed] * gain + base)
    assert torch.equal(index_encoding.lookup(ring, sign_bit, True), index_encoding.lookup(ring, signed, False))

    grad = torch.randn(total, generator=torch.Generator().manual_seed(2)).to(dtype)
    folded = torch.zeros(2 * size, dtype=dtype).index_add_(0, signed, grad, alpha=gain)
    got = torch.zeros(size, dtype=dtype)
    index_encoding.scatter_sign_bit_(got, sign_bit, grad, gain)
    tolerance = {"rtol": 2e-2, "atol": 5e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got, folded[:size] - folded[size:], **tolerance)


def test_layout_round_trip_and_threshold():
    total, size = 5000, 700
    signed = build_signed_index(total, size, derive_key(0, "default"))
    sign_bit = index_encoding.signed_to_sign_bit_(signed.clone(), size)
    negative = signed >= size
    assert torch.equal(sign_bit < 0, negative)
    assert torch.equal(sign_bit.bitwise_and(index_encoding.MAGNITUDE), signed - size * negative.int())
    assert torch.equal(index_encoding.sign_bit_to_signed(sign_bit, size), signed)

    cpu, meta = torch.device("cpu"), torch.device("meta")
    big = index_encoding.SIGN_BIT_MIN_SIGNED_BYTES // 8 + 1  # its float32 signed ring is just over
    assert index_encoding.use_sign_bit(big, 4, torch.int32, cpu)
    assert not index_encoding.use_sign_bit(big - 1, 4, torch.int32, cpu)
    assert not index_encoding.use_sign_bit(big, 4, torch.int64, cpu)  # the layout needs int32
    assert not index_encoding.use_sign_bit(big, 4, torch.int32, meta)  # CPU only


def test_projection_init_reads_indices_in_either_layout(monkeypatch):
    """``init="project"`` decodes the cache to signed indices: same ring in both layouts."""
    _, signed, sign_bit = _pair("bert_cls", monkeypatch, dof=0.5, init="project")
    torch.testing.assert_close(sign_bit.rpg_rings["default"], signed.rpg_rings["default"], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign_bit", [False, True])
@pytest.mark.parametrize("with_base", [False, True])
def test_numba_cached_kernels_are_bit_identical_to_the_torch_ops(dtype, sign_bit, with_base, monkeypatch):
    """``gather_cached`` / ``scatter_cached_`` run numba kernels on CPU; with them turned off the
    torch ops run. Both give the same bits (weights and ring gradients, repeated entries too)."""
    from hf_rpg.spec import index_kernels

    if not index_kernels.available("cpu"):
        pytest.skip("numba does not import here: only the torch ops run")
    generator = torch.Generator().manual_seed(1)
    n, count = 97, 5000  # many repeats of each entry: the scatter's summation order matters
    ring = torch.randn(n, dtype=dtype, generator=generator)
    index = torch.randint(0, 2 * n, (count,), dtype=torch.int32, generator=generator)
    table = torch.cat((ring, ring.neg()))
    if sign_bit:
        index, table = index_encoding.signed_to_sign_bit_(index, n), ring
    base = torch.randn(count, dtype=dtype, generator=generator) if with_base else None
    grad = torch.randn(count, dtype=dtype, generator=generator)
    gain = 0.3741

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(count, dtype=dtype)
        index_encoding.gather_cached(table, index, out, gain, base, sign_bit)
        grad_table = torch.zeros(table.numel(), dtype=dtype)
        index_encoding.scatter_cached_(grad_table, index, grad, gain, sign_bit)
        return out, grad_table

    kernels = run()
    assert index_encoding._numba_kernels(table) is not None
    monkeypatch.setattr(index_encoding, "_numba_kernels", lambda *tensors: None)
    torch_ops = run()
    assert torch.equal(kernels[0], torch_ops[0])
    assert torch.equal(kernels[1], torch_ops[1])
    assert not torch.equal(kernels[1], torch.zeros_like(kernels[1]))


def test_numba_cached_kernels_leave_storages_resizable():
    """FSDP2 frees an unsharded parameter by resizing its storage to zero; ``Tensor.numpy()``
    would forbid that for good, so the kernels read the tensors through plain NumPy views."""
    n, count = 11, 64
    ring, base = torch.randn(n), torch.randn(count)
    index = torch.randint(0, 2 * n, (count,), dtype=torch.int32)
    table, out, grad_table = torch.cat((ring, ring.neg())), torch.empty(count), torch.zeros(2 * n)
    index_encoding.gather_cached(table, index, out, 0.5, base, sign_bit=False)
    index_encoding.scatter_cached_(grad_table, index, out, 0.5, sign_bit=False)
    for tensor in (table, index, out, base, grad_table):
        tensor.untyped_storage().resize_(0)  # raises "not resizable" after Tensor.numpy()
