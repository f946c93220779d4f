"""How a ring is written to disk: float32, float16, int8 with per-block scales, or sparse.

Pure tensor functions, no file access: ``encode_ring`` turns a ring into the tensors a
checkpoint stores plus a JSON description (recorded in ``rpg_config.json`` under
``ring_storage``); ``decode_ring`` turns them back into a float32 ring of the manifest's
size, which the loader then copies into the live ring (casting to its dtype).

- ``float32``: the ring as float32 (4 bytes per entry).
- ``float16``: half precision (2 bytes per entry); a ring entry beyond float16's range
  (|x| > 65504) is refused rather than written as Inf.
- ``int8``: symmetric absmax quantisation in blocks of ``INT8_BLOCK_SIZE`` (256) consecutive
  entries: ``scale_b = max|x| / 127`` over block ``b``, ``q = round(x / scale_b)`` in
  [-127, 127], decoded as ``q * scale_b``. 1 byte per entry plus one float32 scale per
  block (about 1.02 bytes per entry); the error of an entry is at most ``scale_b / 2``.
  An all-zero block has scale 0 and decodes to zeros.
- ``sparse``: the non-zero entries only, as int32 positions and float32 values (8 bytes per
  non-zero entry): smaller than float32 once more than half the ring is zero, which is what
  ``hf_rpg.prune_ring`` makes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RPGCheckpointError, RPGConfigError

RING_STORAGES = ("float32", "float16", "int8", "sparse")
INT8_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 1 << 20
# Keys a description may hold (``dtype``: the ring's dtype when saved, informational).
DESCRIPTION_KEYS = {"format", "block_size", "dtype", "nonzero"}
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def check_storage(storage: Any) -> str:
    """``storage`` if it is a known ring storage; else ``RPGConfigError`` naming the choices."""
    if storage not in RING_STORAGES:
        raise RPGConfigError(f"ring_storage must be one of {', '.join(map(repr, RING_STORAGES))}; got {storage!r}")
    return storage


def encode_ring(ring: torch.Tensor, storage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a 1-D ring for storage.

    Returns ``(main, extras, description)``: ``main`` is stored under the ring's usual key,
    ``extras`` (suffix -> tensor) beside it, ``description`` is the JSON for ``rpg_config.json``.
    """
    check_storage(storage)
    dtype = str(ring.dtype).removeprefix("torch.")
    values = ring.detach().to("cpu", torch.float32).contiguous()
    if storage == "float32":
        return values, {}, {"format": storage, "dtype": dtype}
    if storage == "float16":
        peak = float(values.abs().max()) if values.numel() else 0.0
        if peak > _FLOAT16_MAX:
            raise RPGConfigError(
                f"ring_storage='float16' cannot hold a ring entry of magnitude {peak:.4g} (float16 max 65504); "
                "use 'int8' (scaled per block) or 'float32'"
            )
        return values.to(torch.float16), {}, {"format": storage, "dtype": dtype}
    if storage == "int8":
        codes, scales = quantize_int8(values, INT8_BLOCK_SIZE)
        return codes, {"scales": scales}, {"format": storage, "block_size": INT8_BLOCK_SIZE, "dtype": dtype}
    positions = values.nonzero().flatten()
    description = {"format": storage, "dtype": dtype, "nonzero": int(positions.numel())}
    return values[positions].contiguous(), {"positions": positions.to(torch.int32)}, description


def quantize_int8(values: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 codes of a 1-D float tensor and one float32 scale per block."""
    blocks = -(-values.numel() // block_size)
    padded = torch.zeros(blocks * block_size, dtype=torch.float32)
    padded[: values.numel()] = values
    padded = padded.view(blocks, block_size)
    scales = padded.abs().amax(dim=1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(padded / safe.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return codes.flatten()[: values.numel()].contiguous(), scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, block_size: int) -> torch.Tensor:
    """The float32 values of ``quantize_int8``'s codes and scales."""
    block = torch.arange(codes.numel()) // block_size
    return codes.to(torch.float32) * scales[block]


def decode_ring(
    main: torch.Tensor, extras: dict[str, torch.Tensor], description: dict[str, Any], size: int, where: str
) -> torch.Tensor:
    """The float32 ring of ``size`` entries that ``encode_ring`` stored; ``RPGCheckpointError``
    (naming ``where``, the tensor and what was expected) when the tensors do not fit."""
    storage = description["format"]
    if storage in ("float32", "float16"):
        if main.dtype != getattr(torch, storage):
            raise RPGCheckpointError(f"{where}: is stored as {main.dtype}, its ring_storage says {storage}")
        return main.to(torch.float32)
    if storage == "int8":
        scales = _extra(extras, "scales", where)
        block = description["block_size"]
        blocks = -(-size // block)
        if main.dtype != torch.int8 or tuple(main.shape) != (size,):
            raise RPGCheckpointError(
                f"{where}: int8 ring_storage needs int8 codes of shape [{size}], got {main.dtype} {list(main.shape)}"
            )
        if scales.dtype != torch.float32 or tuple(scales.shape) != (blocks,):
            raise RPGCheckpointError(
                f"{where}: int8 ring_storage needs {blocks} float32 scales (blocks of {block}), "
                f"got {scales.dtype} {list(scales.shape)}"
            )
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise RPGCheckpointError(f"{where}: the int8 scales must be finite and >= 0")
        return dequantize_int8(main, scales, block)
    positions = _extra(extras, "positions", where)
    count = description.get("nonzero", main.numel())
    if positions.dtype != torch.int32 or positions.dim() != 1 or main.dtype != torch.float32:
        raise RPGCheckpointError(f"{where}: sparse ring_storage needs int32 positions and float32 values")
    if not positions.numel() == main.numel() == count:
        raise RPGCheckpointError(
            f"{where}: sparse ring_storage records {count} non-zero entries but holds "
            f"{positions.numel()} positions and {main.numel()} values"
        )
    if count and (int(positions.min()) < 0 or int(positions.max()) >= size):
        raise RPGCheckpointError(f"{where}: a sparse ring position lies outside [0, {size})")
    ring = torch.zeros(size, dtype=torch.float32)
    ring[positions.to(torch.int64)] = main
    return ring


def _extra(extras: dict[str, torch.Tensor], suffix: str, where: str) -> torch.Tensor:
    if suffix not in extras:
        raise RPGCheckpointError(f"{where}: its ring_storage needs a {suffix!r} tensor, the weights file has none")
    return extras[suffix]


def check_description(description: Any, where: str) -> None:
    """Check one ring's ``ring_storage`` entry of ``rpg_config.json`` (``RPGCheckpointError``)."""
    if not isinstance(description, dict):
        raise RPGCheckpointError(f"{where} must be an object such as {{'format': 'int8', ...}}, got {description!r}")
    unknown = sorted(set(description) - DESCRIPTION_KEYS)
    if unknown:
        raise RPGCheckpointError(f"{where} has unknown keys {unknown} (valid: {sorted(DESCRIPTION_KEYS)})")
    storage = description.get("format")
    if storage not in RING_STORAGES:
        raise RPGCheckpointError(
            f"{where}.format must be one of {', '.join(map(repr, RING_STORAGES))}, got {storage!r}"
        )
    block = description.get("block_size")
    if storage == "int8" and not (
        isinstance(block, int) and not isinstance(block, bool) and 0 < block <= MAX_BLOCK_SIZE
    ):
        raise RPGCheckpointError(f"{where}.block_size must be an int in [1, {MAX_BLOCK_SIZE}] for int8, got {block!r}")
    count = description.get("nonzero")
    if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        raise RPGCheckpointError(f"{where}.nonzero must be a non-negative int, got {count!r}")
    if "dtype" in description and not isinstance(description["dtype"], str):
        raise RPGCheckpointError(f"{where}.dtype must be a string, got {description['dtype']!r}")


def storage_summary(description: dict[str, Any] | None) -> str:
    """One ring's storage in words, for ``hf-rpg info``."""
    if description is None:
        return "as trained (no ring_storage field: the ring's own dtype)"
    storage = description["format"]
    if storage == "int8":
        return f"int8, symmetric absmax scales per block of {description['block_size']}"
    if storage == "sparse":
        return f"sparse, {description.get('nonzero', '?'):,} non-zero entries (int32 positions + float32 values)"
    return storage


__all__ = [
    "INT8_BLOCK_SIZE",
    "RING_STORAGES",
    "check_description",
    "check_storage",
    "decode_ring",
    "encode_ring",
    "storage_summary",
]
