"""Quantized base layers: recognising them, their logical shape, and dequantising them.

Covered backends (delta mode; the update is added to the quantized layer's own output):

- bitsandbytes ``Linear4bit`` (nf4 / fp4, ``Params4bit``) and ``Linear8bitLt``
  (``Int8Params``);
- torchao weight-only quantization (``quantize_(model, Int8WeightOnlyConfig())`` and the
  other configs that put a tensor subclass with ``dequantize()`` in ``Linear.weight``).

Nothing here imports bitsandbytes or torchao unless a model already holds their tensors.
"""

from __future__ import annotations

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

        return bnb_functional.dequantize_4bit(param.data, param.quant_state).reshape(logical_shape(module))
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
