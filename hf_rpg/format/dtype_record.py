"""The dtypes of a model's parameters and buffers, recorded in a checkpoint and restored on load.

A replace-mode model is rebuilt from ``config.json``, which says nothing reliable about the
dtype the model was trained in (a model built from a config and cast with
``.to(torch.bfloat16)`` keeps ``dtype: float32`` there). ``rpg_config.json`` therefore records
``dtypes``: the dtype most floating tensors have (``default``), and every floating tensor
that differs (``exceptions``, name -> dtype), generated weights included. The loader casts
the model it builds to them before loading the stored values into it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from ..describe import describe
from ..errors import RPGCheckpointError

DTYPES = ("float32", "float64", "bfloat16", "float16")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def record(named: dict[str, torch.dtype]) -> dict[str, Any]:
    """``dtypes`` of the floating tensors ``named`` (name -> dtype)."""
    names = {key: _name(dtype) for key, dtype in named.items()}
    default = Counter(names.values()).most_common(1)[0][0] if names else "float32"
    return {"default": default, "exceptions": {k: v for k, v in sorted(names.items()) if v != default}}


def floating_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """Name -> dtype of every floating parameter and buffer of ``model`` (tied ones once)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {name: t.dtype for name, t in tensors.items() if t.is_floating_point() and _name(t.dtype) in DTYPES}


def restore(model: nn.Module, recorded: dict[str, Any]) -> None:
    """Cast the floating parameters and buffers of ``model`` (built by the loader) to ``recorded``.

    Parameters are cast in place (``param.data``), so tied weights stay tied.
    """
    default, exceptions = recorded["default"], recorded["exceptions"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            dtype = getattr(torch, exceptions.get(name, default))
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
        for name, buffer in list(model.named_buffers()):
            dtype = getattr(torch, exceptions.get(name, default))
            if buffer.is_floating_point() and buffer.dtype != dtype:
                module_name, _, attr = name.rpartition(".")
                model.get_submodule(module_name)._buffers[attr] = buffer.to(dtype)


def check_description(value: Any, source: str) -> None:
    """``rpg_config.json``'s ``dtypes`` is well formed (``RPGCheckpointError`` if not)."""
    ok = (
        isinstance(value, dict)
        and set(value) == {"default", "exceptions"}
        and value["default"] in DTYPES
        and isinstance(value["exceptions"], dict)
        and all(isinstance(k, str) and v in DTYPES for k, v in value["exceptions"].items())
    )
    if not ok:
        raise RPGCheckpointError(
            f"{source}: 'dtypes' must be {{'default': <dtype>, 'exceptions': {{<name>: <dtype>}}}} with dtypes in "
            f"{', '.join(DTYPES)}, got {describe(value)}"
        )


def keeping_dtype(fn: Any) -> Any:
    """``fn`` of ``nn.Module._apply`` (``.to()``, ``.half()``...) without its dtype change:
    the device move (and anything else) only."""

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        probe = fn(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
        if probe.dtype == tensor.dtype:
            return fn(tensor)
        return tensor.to(device=probe.device)

    return apply


__all__ = ["DTYPES", "check_description", "floating_dtypes", "keeping_dtype", "record", "restore"]
