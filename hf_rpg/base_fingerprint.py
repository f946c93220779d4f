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
import re
from collections.abc import Iterable
from typing import Any

import torch

from .describe import describe
from .errors import RPGBaseMismatchError, RPGCheckpointError
from .quantized import bnb4_codes, dequantize, quantization_of

METHOD = "rpg-base-sample-v1"
SAMPLES = 64
_DIGEST = re.compile(r"[0-9a-f]{16}")


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


def check_description(value: Any, source: str, target_count: int) -> None:
    """``rpg_config.json``'s ``base_fingerprint`` is well formed (``RPGCheckpointError`` if not)."""
    if not isinstance(value, dict) or set(value) != {"method", "samples", "targets"}:
        raise RPGCheckpointError(
            f"{source}: 'base_fingerprint' must be an object with method, samples and targets, got {describe(value)}"
        )
    if value["method"] != METHOD or value["samples"] != SAMPLES:
        raise RPGCheckpointError(
            f"{source}: base_fingerprint method {describe(value['method'])} with {describe(value['samples'])} "
            f"samples is not known to this hf_rpg ({METHOD!r}, {SAMPLES}); upgrade hf_rpg to load it"
        )
    digests = value["targets"]
    if not (
        isinstance(digests, list)
        and len(digests) == target_count
        and all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests)
    ):
        raise RPGCheckpointError(
            f"{source}: base_fingerprint.targets must list 16 hex digits for each of the {target_count} manifest "
            f"targets, got {describe(digests)}"
        )


def check_base(
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


__all__ = ["METHOD", "SAMPLES", "check_base", "check_description", "fingerprint", "sample_positions"]
