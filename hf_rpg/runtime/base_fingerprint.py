"""The base a delta checkpoint was trained on, fingerprinted so that it cannot load onto another.

A delta checkpoint stores only the update; its meaning depends on the frozen base weights
under it. ``rpg_config.json`` records ``base_fingerprint``: for each manifest target, in
manifest order, 16 hex digits of the SHA-256 of the target's name, its dense shape and a
fixed sample of its base weights (``docs/checkpoint-format.md`` specifies it):

- the weight read densely (a quantized base dequantized; a bitsandbytes 4-bit one as its
  4-bit codes 0-15, since bitsandbytes rounds its scales when it repacks a layer for its CPU
  kernel), flattened row-major, ``n`` elements;
- ``k = min(64, n)`` samples at positions ``⌊i·n/k⌋`` for ``i = 0 … k−1``;
- each sample rounded to bfloat16 (round to nearest even) and written as its 16 bits,
  little-endian.

Rounding to bfloat16 lets the same pretrained weights loaded in float32, bfloat16 or (for
weights that are exact there) float16 match. Cost: one gather of 64 elements per target
(a quantized layer is dequantized once): well under a second for a 7B model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import RPGBaseMismatchError, RPGConfigError
from ..format.fingerprint_record import METHOD, SAMPLES
from .quantized import bnb4_codes, dequantize, quantization_of


def sample_positions(numel: int, samples: int = SAMPLES) -> list[int]:
    """Positions of the sampled elements in the flattened weight."""
    count = min(samples, numel)
    return [i * numel // count for i in range(count)]


def _dense(param: torch.Tensor, layer: torch.nn.Module | None) -> torch.Tensor:
    if quantization_of(param) is None or layer is None:
        return param
    if type(param).__name__ == "Params4bit":  # its codes: bitsandbytes may round its scales at run time
        return bnb4_codes(param)
    return dequantize(layer, param)


def target_digest(name: str, shape: Iterable[int], param: torch.Tensor, layer: torch.nn.Module | None) -> str:
    """The fingerprint entry of one target (see the module docstring)."""
    values = _dense(param, layer).detach().reshape(-1)
    positions = torch.tensor(sample_positions(values.numel()), dtype=torch.int64, device=values.device)
    sample = values[positions].to(device="cpu", dtype=torch.float32).to(torch.bfloat16).view(torch.int16)
    head = json.dumps({"name": name, "shape": list(shape)}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(head.encode("utf-8"))
    digest.update(sample.numpy().astype("<i2").tobytes())
    return digest.hexdigest()[:16]


def fingerprint(targets: Iterable[tuple[str, Iterable[int], torch.Tensor, torch.nn.Module | None]]) -> dict[str, Any]:
    """``base_fingerprint`` of ``(name, shape, base weight, layer)`` for each target, in manifest order."""
    with torch.no_grad():
        digests = [target_digest(*target) for target in targets]
    return {"method": METHOD, "samples": SAMPLES, "targets": digests}


def check_base_weights(
    recorded: dict[str, Any],
    targets: list[tuple[str, Iterable[int], torch.Tensor, torch.nn.Module | None]],
    source: str,
) -> None:
    """Raise ``RPGBaseMismatchError`` naming the first target whose base weights differ from the recorded ones."""
    with torch.no_grad():
        for (name, shape, param, layer), expected in zip(targets, recorded["targets"], strict=True):
            if target_digest(name, shape, param, layer) != expected:
                raise RPGBaseMismatchError(
                    f"{source} was trained on another base model: the base weights of {name!r} differ from the "
                    "ones the update was trained on (base_fingerprint; docs/checkpoint-format.md). Load the base "
                    "the checkpoint records, or pass check_base=False to from_pretrained to load the update onto "
                    "this base anyway"
                )


def check_recorded(
    recorded: dict[str, Any] | None,
    targets: list[tuple[str, Iterable[int], torch.Tensor, torch.nn.Module | None]],
    source: str,
    check_base: bool,
) -> None:
    """Loading a delta checkpoint: the base's weights must be the ones the update was trained
    on. A checkpoint without a fingerprint (older hf_rpg) loads with a warning."""
    if not isinstance(check_base, bool):
        raise RPGConfigError(f"check_base must be True or False, got {check_base!r}")
    if recorded is None:
        warnings.warn(
            f"{source} records no base_fingerprint (saved before hf_rpg bound delta checkpoints to their "
            "base): the base model's weights are not checked; make sure it is the one the update was "
            "trained on",
            UserWarning,
            stacklevel=4,
        )
        return
    if check_base:
        check_base_weights(recorded, targets, source)


__all__ = ["METHOD", "SAMPLES", "check_base_weights", "check_recorded", "fingerprint", "sample_positions"]
