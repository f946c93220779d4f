"""Delta mode on quantized bases: bitsandbytes 4-bit (nf4) and 8-bit, torchao int8 weight-only.

The update is added to the quantized layer's own output; at zero the model is the quantized
base exactly. Replace mode, and quantized layers that are not linear, are clear errors.

bitsandbytes has two CPU paths for 4-bit layers: on CPUs with AVX512-BF16 a layer run in
eval mode without grad repacks its weight for a fused kernel (which needs ``in_features`` a
multiple of the block size, 64, and ``out_features`` a multiple of 32); elsewhere it
dequantizes. The models here have shapes both paths serve. ``HF_RPG_BNB_CPU_PACKED=off``
forces the plain path, ``on`` the packed one (skipped where bitsandbytes has no packed
kernel); unset, bitsandbytes chooses (``.ci/run`` runs these tests all three ways).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from architectures import ARCHITECTURES, build
from conftest import train_steps
from torch import nn

from hf_rpg import RPGConfig, RPGModel, RPGTargetError, apply_rpg

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is a dev dependency")
TARGETS = ["q_proj", "v_proj", "up_proj"]
PACKED = os.environ.get("HF_RPG_BNB_CPU_PACKED", "auto")


def packed_path_choice() -> bool | None:
    """Whether new bitsandbytes 4-bit layers may take the packed CPU path (None: theirs to choose)."""
    if PACKED not in ("auto", "on", "off"):
        raise ValueError(f"HF_RPG_BNB_CPU_PACKED must be auto, on or off, got {PACKED!r}")
    if PACKED == "on" and not bnb.functional.has_avx512bf16():
        pytest.skip("HF_RPG_BNB_CPU_PACKED=on: this CPU (or bitsandbytes build) has no AVX512-BF16 packed kernel")
    return None if PACKED == "auto" else PACKED == "on"


def quantizable_llama() -> nn.Module:
    """The tiny Llama with widths both bitsandbytes CPU paths serve (multiples of 64)."""
    import transformers
    from architectures import _DECODER

    config = {**_DECODER, "hidden_size": 64, "intermediate_size": 128}
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config, tie_word_embeddings=False))


def _quantize_bnb(model: nn.Module, kind: str) -> nn.Module:
    """Swap the targeted Linear layers for bitsandbytes ones holding the same weights."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not name.endswith(tuple(TARGETS)):
            continue
        if kind == "nf4":
            layer = bnb.nn.Linear4bit(
                module.in_features, module.out_features, bias=module.bias is not None, compute_dtype=torch.float32,
                quant_type="nf4",
            )  # fmt: skip
            if packed_path_choice() is not None:
                layer.support_avx512bf16_for_cpu = packed_path_choice()
        else:
            layer = bnb.nn.Linear8bitLt(
                module.in_features, module.out_features, bias=module.bias is not None, has_fp16_weights=False
            )
        layer.load_state_dict(module.state_dict())
        parent, _, child = name.rpartition(".")
        model.get_submodule(parent).register_module(child, layer.to("cpu"))  # .to quantizes
    return model


def _quantize_torchao(model: nn.Module) -> nn.Module:
    torchao = pytest.importorskip("torchao.quantization", reason="torchao is a dev dependency")
    torchao.quantize_(model, torchao.Int8WeightOnlyConfig(), filter_fn=lambda m, n: n.endswith(tuple(TARGETS)))
    return model


# Merged (dequantized base + update, in float32) vs the backend's own kernel: bitsandbytes int8
# also quantizes the activations, and the packed 4-bit CPU kernel computes in bfloat16.
MERGE_TOLERANCE = {"rtol": 5e-3, "atol": 5e-3}

QUANTIZERS = {
    "bnb_nf4": lambda m: _quantize_bnb(m, "nf4"),
    "bnb_int8": lambda m: _quantize_bnb(m, "int8"),
    "torchao_int8": _quantize_torchao,
}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("backend", sorted(QUANTIZERS))
def test_delta_mode_on_a_quantized_llama(backend, tmp_path):
    base = QUANTIZERS[backend](quantizable_llama())
    reference = copy.deepcopy(base)
    batch = ARCHITECTURES["llama"].batch(0)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=500, update="full", target_modules=TARGETS))
    assert set(model.plan.servings()) == {"additive"}
    assert torch.equal(_logits(model, batch), _logits(reference, batch))  # the quantized base exactly
    with torch.no_grad():
        model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(0))
    assert not torch.equal(_logits(model, batch), _logits(reference, batch))
    with model.disable_rpg():
        assert torch.equal(_logits(model, batch), _logits(reference, batch))
    with torch.no_grad():
        model.rpg_rings["default"].zero_()
    model.train()
    assert torch.equal(model(**batch).logits.detach(), _logits(reference, batch))  # also on the grad path

    losses = train_steps(model, batch, steps=4)
    assert losses[-1] < losses[0], losses
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == ["rpg_rings.default"]
    model.eval()
    expected = _logits(model, batch)

    model.save_pretrained(tmp_path / "ckpt")
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=copy.deepcopy(reference))
    assert torch.equal(loaded.rpg_rings["default"], model.rpg_rings["default"])
    if backend != "bnb_int8":  # a bitsandbytes int8 layer changes its own state in a training forward
        assert torch.equal(_logits(loaded, batch), expected)

    merged = model.merge_and_unload()  # dense Linear layers: dequantized base + update
    assert not any(type(m).__module__.startswith(("bitsandbytes", "torchao")) for m in merged.modules())
    linear = merged.model.layers[0].self_attn.q_proj
    assert type(linear) is nn.Linear and linear.weight.dtype == torch.float32
    # dequantize-then-matmul vs the backend's kernel: equal to rounding, and the update is in it
    torch.testing.assert_close(_logits(merged, batch), expected, **MERGE_TOLERANCE)
    assert (_logits(merged, batch) - _logits(reference, batch)).abs().max() > 10 * MERGE_TOLERANCE["atol"]


def test_replace_mode_on_quantized_weights_is_an_error():
    base = _quantize_bnb(build("llama"), "nf4")
    with pytest.raises(
        RPGTargetError, match=r"q_proj' \(Linear4bit, bitsandbytes nf4 \(torch.uint8\)\).* mode='delta'"
    ):
        apply_rpg(base, RPGConfig(mode="replace", dof=0.1))


def test_a_quantized_layer_hf_rpg_cannot_serve_is_named():
    base = build("llama")
    embedding = base.model.embed_tokens
    embedding.weight = nn.Parameter(embedding.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(
        RPGTargetError, match=r"embed_tokens' \(Embedding, Parameter \(torch.int8\)\).*not a plain linear"
    ):
        apply_rpg(base, RPGConfig(mode="delta", dof=100, target_modules=["embed_tokens"]))
