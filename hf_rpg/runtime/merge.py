"""Merging: the generated weights of a model as ordinary tensors, ready to replace the generation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .quantized import dequantize, quantization_of

if TYPE_CHECKING:
    from .engine import WeightEngine


def merged_parameters(engine: WeightEngine) -> tuple[dict[int, nn.Parameter], dict[int, torch.Tensor]]:
    """Per target id, the Parameter that takes the generation's place (the generated weight,
    ``W0 + ΔW`` for delta targets); for a quantized base that Parameter is the base itself,
    and the second dict holds its ``ΔW``, to fold into a dense layer (``dense_linear``)."""
    params: dict[int, nn.Parameter] = {}
    dense_updates: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        weights = engine.generate(list(range(len(engine.plan.targets))))
        for tid, weight in weights.items():
            target = engine.plan.targets[tid]
            if not target.serving.added_to_output:  # the generated weight itself (W0 + ΔW when merged)
                params[tid] = nn.Parameter(weight.detach().clone())
                continue
            weight, base = engine.dense_update(tid, weight), target.base()
            if quantization_of(base) is None:  # low-rank on a dense base
                params[tid] = nn.Parameter((base.to(weight.dtype) + weight).to(base.dtype))
            else:
                dense_updates[tid] = weight
                params[tid] = base
    return params, dense_updates


def dense_linear(layer: nn.Module, attr: str, delta: torch.Tensor) -> nn.Linear:
    """A quantized linear layer's update merged: a dense ``nn.Linear`` holding the dequantized
    base plus ``ΔW``, to take the layer's place."""
    base = dequantize(layer, layer._parameters[attr])
    dtype = delta.dtype if layer.bias is None else layer.bias.dtype
    dense = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=base.device, dtype=dtype
    )
    with torch.no_grad():
        dense.weight.copy_(base.to(dtype) + delta.to(device=base.device, dtype=dtype))
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense
