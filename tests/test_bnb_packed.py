"""hf_rpg on bitsandbytes 4-bit bases that took the packed CPU path (AVX512-BF16 CPUs).

There a ``Linear4bit`` run in eval mode without grad repacks its weight for a fused
inference kernel that has no backward and other ``quant_state`` fields. hf_rpg must still
train (gradients reach the layers below a packed one), dequantize (gain, merge) and save
on such a base. Skipped where bitsandbytes has no packed kernel (the CPU lacks AVX512-BF16).
"""

from __future__ import annotations

import copy

import pytest
import torch
from architectures import ARCHITECTURES

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.runtime.quantized import dequantize

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is a dev dependency")
if not bnb.functional.has_avx512bf16():
    pytest.skip("this CPU (or bitsandbytes build) has no packed 4-bit kernel", allow_module_level=True)

from test_quantized import _quantize_bnb, quantizable_llama  # noqa: E402


def _packed_and_plain() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A nf4 Llama whose layers took the packed path, and a copy put back in the plain layout
    by bitsandbytes itself (the same numbers: packing rounds the scales to bfloat16)."""
    base = _quantize_bnb(quantizable_llama(), "nf4")
    for module in base.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    base.eval()
    with torch.no_grad():
        base(**{k: v for k, v in ARCHITECTURES["llama"].batch(0).items() if k != "labels"})
    q_proj = base.model.layers[0].self_attn.q_proj
    assert q_proj.weight.quant_state.packing_format_for_cpu
    plain = copy.deepcopy(base)
    for module in plain.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            module.state_dict()  # bitsandbytes unpacks before saving
            assert not module.weight.quant_state.packing_format_for_cpu
    return base, plain


def test_dequantize_reads_a_packed_weight_without_changing_it():
    packed, plain = _packed_and_plain()
    layer, plain_layer = packed.model.layers[1].mlp.up_proj, plain.model.layers[1].mlp.up_proj
    before = layer.weight.data.clone()
    assert torch.equal(dequantize(layer, layer.weight), dequantize(plain_layer, plain_layer.weight))
    assert layer.weight.quant_state.packing_format_for_cpu and torch.equal(layer.weight.data, before)


def test_training_on_a_packed_base_gets_the_gradients_of_the_plain_one():
    config = RPGConfig(mode="delta", dof=300, target_modules=["q_proj", "v_proj", "up_proj"])
    packed, plain = _packed_and_plain()
    batch = ARCHITECTURES["llama"].batch(1)
    grads = []
    for base in (packed, plain):
        model = apply_rpg(base, config)
        with torch.no_grad():
            model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(0))
        model.train()
        model(**batch).loss.backward()
        grads.append(model.rpg_rings["default"].grad)
    # gradients flow through every quantized layer to the rings of the layers below it
    assert torch.equal(grads[0], grads[1])


def test_merge_on_a_packed_base():
    packed, _ = _packed_and_plain()
    batch = ARCHITECTURES["llama"].batch(0)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model = apply_rpg(packed, RPGConfig(mode="delta", dof=300, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(0))
        model.eval()
        expected = model(**inputs).logits
        merged = model.merge_and_unload()
        # the packed kernel computes in bfloat16, the merged dense layers in float32
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=2e-2, atol=2e-2)
