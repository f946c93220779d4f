"""Checks of what a caller passes in that would otherwise fail deep in torch, or not at all.

Each raises an ``RPGError`` naming the argument, the value and what would be valid.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from ..describe import describe
from ..errors import RPGConfigError, RPGTargetError
from .config import RPGConfig
from .targets import matches

_DEVICE_EXAMPLES = "'cpu', 'cuda', 'cuda:0', 'mps' or a torch.device"


def check_device(device: Any, argument: str = "device") -> torch.device | None:
    """``device`` as a ``torch.device`` this torch can use (``None`` stays ``None``)."""
    if device is None:
        return None
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise RPGConfigError(f"{argument} must be a device such as {_DEVICE_EXAMPLES}, got {describe(device)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise RPGConfigError(f"{argument}={device!r} is not a torch device ({err}); use {_DEVICE_EXAMPLES}") from None
    if parsed.type in ("cpu", "meta"):
        return parsed
    backend = getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and not available():
        build = f", CUDA build {torch.version.cuda}" if parsed.type == "cuda" and torch.version.cuda else ""
        raise RPGConfigError(
            f"{argument}={device!r}: this torch ({torch.__version__}{build}) has no usable {parsed.type} device; "
            f"use 'cpu' or install a torch build for your accelerator"
        )
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and callable(count) and parsed.index >= count():
        raise RPGConfigError(f"{argument}={device!r}: there are {count()} {parsed.type} device(s), indices from 0")
    return parsed


def check_not_peft(model: nn.Module) -> None:
    """A PEFT-wrapped model: hf_rpg applies to the plain model, not on top of an adapter."""
    wrapped = [type(m) for m in model.modules() if type(m).__module__.split(".")[0] == "peft"]
    if wrapped:
        raise RPGTargetError(
            f"the model holds PEFT modules ({wrapped[0].__module__}.{wrapped[0].__name__}): hf_rpg is applied to "
            "a plain model, not on top of a PEFT adapter. Use model.get_base_model() (or merge_and_unload() to "
            "keep the adapter's update) and apply_rpg to that"
        )


def check_every_target_entry_matches(model: nn.Module, config: RPGConfig) -> None:
    """Each entry of a ``target_modules`` list must match some module: a typo in one entry
    would otherwise leave that layer untouched without a word."""
    if not isinstance(config.target_modules, list):
        return
    names = [name for name, _ in model.named_modules() if name]
    for entry in config.target_modules:
        if any(matches(name, [entry]) for name in names):
            continue
        leaves = sorted({name.rpartition(".")[2] for name in names})
        close = difflib.get_close_matches(entry.rpartition(".")[2], leaves, n=3)
        hint = (
            f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; module names end in e.g. {leaves[:8]}"
        )
        raise RPGTargetError(
            f"target_modules entry {entry!r} matches no module of {type(model).__name__} (an entry matches a full "
            f"module name or its last dotted parts){hint}"
        )


__all__ = ["check_device", "check_every_target_entry_matches", "check_not_peft"]
