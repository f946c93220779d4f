"""Dtypes and devices: rings stay float32 on a bf16 base, each weight takes its own target's dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from architectures import ARCHITECTURES, build

from hf_rpg import RPGConfig, apply_rpg


def _ring_after_one_small_step(ring_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = build("llama").to(torch.bfloat16)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=64, target_modules=["q_proj"], ring_dtype=ring_dtype))
    ring = model.rpg_rings["default"]
    with torch.no_grad():
        ring.fill_(1.0)
    before = ring.detach().clone()
    model.train()
    model(**ARCHITECTURES["llama"].batch(0)).loss.backward()
    with torch.no_grad():  # an update of 1e-4 relative: below bf16's resolution of about 4e-3 at 1.0
        ring.sub_(1e-4 * ring.grad.sign())
    return before, ring.detach()


def test_a_bf16_base_keeps_a_float32_ring_and_its_small_updates():
    before, after = _ring_after_one_small_step("float32")
    assert after.dtype == torch.float32
    assert (after != before).all()  # every entry moved
    before16, after16 = _ring_after_one_small_step("bfloat16")
    assert after16.dtype == torch.bfloat16
    assert torch.equal(after16, before16)  # the same update, rounded away


@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_each_generated_weight_has_its_own_targets_dtype(mode):
    # T5 keeps its feed-forward output layers (wo) in float32 inside a bf16 model and reads
    # wo.weight.dtype from the parent module, outside wo's own forward
    base = build("t5").to(torch.bfloat16)
    for block in base.encoder.block + base.decoder.block:
        block.layer[-1].DenseReluDense.wo.float()
    reference = copy.deepcopy(base)
    model = apply_rpg(base, RPGConfig(mode=mode, dof=0.3, target_modules="all"))
    assert {r.dtype for r in model.rpg_rings.values()} == {torch.float32}
    dtypes = {name: weight.dtype for name, weight in model.generated_weights()}
    assert {d for n, d in dtypes.items() if ".wo." in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".wo." not in n} == {torch.bfloat16}
    batch = ARCHITECTURES["t5"].batch(0)
    model.train()
    out = model(**batch)
    assert out.logits.dtype == reference(**batch).logits.dtype and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.rpg_rings["default"].grad.dtype == torch.float32
    if mode == "delta":
        model.eval()
        reference.eval()
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reference(**batch).logits)


def test_moving_the_model_moves_and_casts_the_generated_weights():
    model = apply_rpg(build("gpt2"), RPGConfig(dof=0.3))
    model.to(torch.float64)
    assert {w.dtype for _, w in model.generated_weights()} == {torch.float64}
    # the ring keeps config.ring_dtype (issue 20: a cast ring no longer matched its checkpoint's ring_dtype)
    assert model.rpg_rings["default"].dtype == torch.float32
    batch = ARCHITECTURES["gpt2"].batch(0)
    assert model(**batch).logits.dtype == torch.float64
