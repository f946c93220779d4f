"""Quantized base layers: recognising them, their logical shape, and dequantising them.

Covered backends (delta mode; the update is added to the quantized layer's own output):

- bitsandbytes ``Linear4bit`` (nf4 / fp4, ``Params4bit``) and ``Linear8bitLt``
  (``Int8Params``);
- torchao weight-only quantization (``quantize_(model, Int8WeightOnlyConfig())`` and the
  other configs that put a tensor subclass with ``dequantize()`` in ``Linear.weight``).

Nothing here imports bitsandbytes or torchao unless a model already holds their tensors.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

_BNB_4BIT = "Params4bit"
_BNB_8BIT = "Int8Params"


def quantization_of(param: torch.Tensor) -> str | None:
    """A short name of the quantization of ``param`` (``None`` for a dense tensor)."""
    name = type(param).__name__
    if name == _BNB_4BIT:
        quant_type = getattr(param, "quant_type", None) or "4bit"
        return f"bitsandbytes {quant_type} ({param.dtype})"
    if name == _BNB_8BIT:
        return f"bitsandbytes int8 ({param.dtype})"
    if is_traceable_wrapper_subclass(param) and callable(getattr(param, "dequantize", None)):
        return f"torchao {name} ({param.dtype})"
    if not param.is_floating_point():
        return f"{name} ({param.dtype})"
    return None


def is_distributed_tensor(param: torch.Tensor) -> bool:
    """A DTensor (FSDP2, tensor parallel): hf_rpg is applied before sharding, not after."""
    return type(param).__name__ == "DTensor" or (is_traceable_wrapper_subclass(param) and hasattr(param, "device_mesh"))


def additive_layer_supported(module: nn.Module) -> bool:
    """Whether a quantized layer's update can be added to its output: a linear layer."""
    return isinstance(module, nn.Linear) and isinstance(getattr(module, "in_features", None), int)


def logical_shape(module: nn.Module) -> tuple[int, int]:
    """The dense ``[out_features, in_features]`` shape of a quantized linear layer."""
    return (module.out_features, module.in_features)


def dequantize(module: nn.Module, param: torch.Tensor) -> torch.Tensor:
    """The dense float values of a quantized linear layer's weight ``[out, in]``."""
    name = type(param).__name__
    if name == _BNB_4BIT:
        import bitsandbytes.functional as bnb_functional

        data, state = param.data, param.quant_state
        if _packed_for_cpu(param):
            # bitsandbytes' own inverse, on a copy: the layer keeps the layout it chose
            data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return bnb_functional.dequantize_4bit(data, state).reshape(logical_shape(module))
    if name == _BNB_8BIT:
        scales = getattr(param, "SCB", None)
        if scales is None:  # after a training forward the layer keeps its scales in its state
            scales = getattr(getattr(module, "state", None), "SCB", None)
        if scales is None:
            raise ValueError("this bitsandbytes Int8Params has no scales (SCB): load or move it to its device first")
        return param.data.to(torch.float32) * (scales.to(torch.float32).unsqueeze(1) / 127.0)
    return param.dequantize()


def weight_std(layer: nn.Module | None, param: torch.Tensor) -> float:
    """Standard deviation of a weight (dequantized first when quantized; 0 on the meta
    device), in float64, rounded through float32 so that it is stable."""
    values = param if quantization_of(param) is None else dequantize(layer, param)
    if values.device.type == "meta" or values.numel() <= 1:
        return 0.0
    return float(torch.tensor(values.detach().to(torch.float64).std(unbiased=False).item(), dtype=torch.float32))


def _packed_for_cpu(param: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit weight in its AVX512-BF16 CPU layout.

    On CPUs with AVX512-BF16, ``Linear4bit`` repacks its weight the first time it runs in
    eval mode without grad (``quant_state.packing_format_for_cpu``); that layout has a
    kernel without autograd and other ``quant_state`` fields.
    """
    return type(param).__name__ == _BNB_4BIT and bool(
        getattr(getattr(param, "quant_state", None), "packing_format_for_cpu", False)
    )


def prepare_for_grad(module: nn.Module) -> None:
    """Before a forward with grad through a quantized layer: put a bitsandbytes 4-bit weight
    packed for the CPU inference kernel back in its usual layout (as bitsandbytes itself does
    before saving or moving it), since the packed kernel has no backward and gradients to
    the layer's input would be lost. Any other layer is left as it is."""
    param = module._parameters.get("weight")
    if param is None or not _packed_for_cpu(param):
        return
    import bitsandbytes.functional as bnb_functional

    param.data, param.quant_state = bnb_functional._convert_weight_packed_for_cpu_inverse(param.data, param.quant_state)
    if getattr(module, "quant_state", None) is not None:
        module.quant_state = param.quant_state


def bnb4_codes(param: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes (0-15) of a bitsandbytes 4-bit weight, flattened row-major, whatever
    its layout (a weight packed for the CPU kernel is read through bitsandbytes' inverse, on
    a copy). They identify the quantized weights independently of the scales' dtype."""
    data = param.data
    if _packed_for_cpu(param):
        import bitsandbytes.functional as bnb_functional

        data, _ = bnb_functional._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(param.quant_state))
    raw = data.reshape(-1).view(torch.uint8)
    codes = torch.stack([raw >> 4, raw & 0xF], dim=1).reshape(-1)  # the first element in the high nibble
    return codes[: math.prod(param.quant_state.shape)]
