"""Compact checkpoint files: writing the ring(s) plus seeds, never a per-weight map.

This module writes files only (``hf_rpg.api.checkpoint_reading`` reads them back). Building a
model from them is ``hf_rpg.api.model`` (``load_checkpoint``, ``RPGModel.from_pretrained``),
with ``hf_rpg.api.base_model``; finding the files (a directory or a Hub repo) is
``hf_rpg.format.files``; the model card is ``hf_rpg.format.card``.

A checkpoint is a directory (local, or a Hub repo) holding:

- ``rpg_config.json``: the RPGConfig, the layout manifest, the generator version, the
  hf_rpg version, the base model reference and the SHA-256 of the weights file;
- ``rpg_model.safetensors``: the ring(s), the non-generated parameters that are stored
  (all of them in replace mode, the trainable ones in delta mode) and the persistent
  buffers (BatchNorm statistics), nothing else;
- ``config.json``: the architecture (replace mode loads from it, with no base weights);
- ``README.md``: a model card.

Saves are atomic (``hf_rpg.format.atomic``): everything is written into a staging directory
beside the target and moved into place only once all is written, ``rpg_config.json``
last; a failure puts the previous files back. ``rpg_config.json`` records the SHA-256 of
the weights file and the weights file records a digest of what in ``rpg_config.json``
decides the generated weights, so a mismatched pair fails to load. Reading checks every
field before use, raises only ``RPGError`` s, writes nothing and unpickles nothing.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import RPGCheckpointError, RPGManifestMismatchError
from ..format import dtype_record, save_checks
from ..format.atomic import BACKUP_DIR, leftover_staging_dirs, write_directory_atomically
from ..format.base_reference import portable_base_model
from ..format.card import is_generated_card, model_card_text
from ..format.files import CARD_NAME, CONFIG_NAME, MODEL_CONFIG_NAME, WEIGHTS_NAME
from ..format.manifest import Layout
from ..format.metadata import (
    BINDING_KEY,
    CONFIG_JSON_KEY,
    FORMAT_VERSION,
    MODEL_BINDING_KEY,
    binding_digest,
    config_json_digest,
    model_binding_digest,
)
from ..format.report import DoFReport
from ..format.ring_storage import check_storage, decode_ring, encode_ring
from ..runtime import base_fingerprint
from ..runtime.parametrize import original_class
from ..runtime.plan import Plan
from ..spec.generator import GENERATOR_VERSION
from ..version import __version__

if TYPE_CHECKING:  # the protocol names the config's type only
    from .config import RPGConfig

RING_PREFIX = "rpg_rings."
STORAGE_PREFIX = "rpg_ring_storage."  # extra tensors of an encoded ring: f"{STORAGE_PREFIX}{ring}.{suffix}"


class CheckpointModel(Protocol):
    """What saving and loading tensors need of a model (an ``RPGModel`` has all of it).

    A protocol rather than an import: ``hf_rpg.api.model`` builds on this module, not the
    other way round.
    """

    base_model: nn.Module
    rpg_config: RPGConfig
    layout: Layout
    rpg_rings: nn.ParameterDict

    @property
    def plan(self) -> Plan:
        """The per-target plan (``plan.delta``: the checkpoint is an update of a base model)."""

    def dof_report(self, configured: bool = False) -> DoFReport:
        """Ring DoF, trainable parameters, dense model size and compression ratio."""

    def is_stored(self, param: nn.Parameter, stored_ids: set[int] | None = None) -> bool:
        """Whether a checkpoint stores ``param``."""

    def stored_parameter_ids(self) -> set[int]:
        """ids of the parameters a checkpoint stores."""


# ---------------------------------------------------------------------------- what is stored


def stored_entries(model: CheckpointModel) -> dict[str, torch.Tensor]:
    """Name -> live tensor of everything the checkpoint stores besides the rings.

    Tied tensors appear once, under their first name. Delta-mode base weights and, in delta
    mode, frozen parameters are not stored: they come from the base model.
    """
    stored = model.stored_parameter_ids()
    # What a module adds to its state dict besides its parameters and buffers (bitsandbytes'
    # quant_state of a frozen quantized base) is the base's, not the checkpoint's.
    real = {id(t) for t in itertools.chain(model.base_model.parameters(), model.base_model.buffers())}
    entries: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.base_model.state_dict(keep_vars=True).items():
        if id(tensor) in seen or id(tensor) not in real:
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter) and not model.is_stored(tensor, stored):
            continue
        entries[name] = tensor
    return entries


def _tensors_to_save(model: CheckpointModel, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    live = {RING_PREFIX + name: ring for name, ring in model.rpg_rings.items()}
    live.update(stored_entries(model))
    tensors = {}
    for name, tensor in live.items():
        if state_dict is not None:
            # A state dict from the training framework (gathered under FSDP/ZeRO) wins.
            key = name if name.startswith(RING_PREFIX) else "base_model." + name
            tensor = state_dict.get(key, state_dict.get(name, tensor))
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def _encode_rings(tensors: dict[str, torch.Tensor], storage: str | None) -> dict[str, Any] | None:
    """Encode every ring of ``tensors`` in place as ``storage``; their descriptions (None: as is)."""
    if storage is None:
        return None
    descriptions = {}
    for key in [k for k in tensors if k.startswith(RING_PREFIX)]:
        name = key.removeprefix(RING_PREFIX)
        tensors[key], extras, descriptions[name] = encode_ring(tensors[key], storage)
        tensors.update({f"{STORAGE_PREFIX}{name}.{suffix}": t for suffix, t in extras.items()})
    return descriptions


def _decode_rings(
    values: dict[str, torch.Tensor], storage: dict[str, Any] | None, sizes: dict[str, int], path: Path
) -> None:
    """Replace the encoded rings of ``values`` by float32 rings, in place (see ``ring_storage``)."""
    for name, description in (storage or {}).items():
        key = RING_PREFIX + name
        if name not in sizes:
            raise RPGManifestMismatchError(f"{path}: ring_storage names ring {name!r}, which the model does not have")
        extras = {k.removeprefix(f"{STORAGE_PREFIX}{name}."): values.pop(k) for k in list(values)
                  if k.startswith(f"{STORAGE_PREFIX}{name}.")}  # fmt: skip
        if key in values:
            values[key] = decode_ring(values[key], extras, description, sizes[name], f"{path}: {key!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _base_model_info(model: CheckpointModel) -> dict[str, Any]:
    base = model.base_model
    cls = original_class(base)
    name_or_path = model.rpg_config.base_model_name_or_path
    if name_or_path is None:
        name_or_path = getattr(getattr(base, "config", None), "_name_or_path", None) or None
    if name_or_path is None and model.plan.delta:
        warnings.warn(
            "this delta model records no base model (it was not loaded with from_pretrained and "
            "RPGConfig.base_model_name_or_path is None): its checkpoint stores only the update, so loading "
            "it will need from_pretrained(path, base_model=<the same base model>)",
            stacklevel=3,
        )
    return {
        "class": cls.__name__,
        "module": cls.__module__,
        "name_or_path": name_or_path,
        "revision": model.rpg_config.revision,
    }


def checkpoint_metadata(
    model: CheckpointModel,
    weights_sha256: str,
    weights_bytes: int,
    ring_storage: dict[str, Any] | None = None,
    model_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``rpg_config.json`` (``ring_storage``: how each ring is encoded, if not as
    is; ``model_record``: ``model_record(model)``, the ``dtypes`` and ``base_fingerprint``)."""
    storage = {} if ring_storage is None else {"ring_storage": ring_storage}
    storage.update(model_record or {})
    return {
        "format_version": FORMAT_VERSION,
        "hf_rpg_version": __version__,
        "generator": GENERATOR_VERSION,
        "mode": model.rpg_config.mode,
        "base_model": _base_model_info(model),
        "config": model.rpg_config.to_dict(),
        # what the config trains, also for a model loaded frozen for inference (is_trainable=False)
        "dof": model.dof_report(configured=True).to_dict(),
        "files": {WEIGHTS_NAME: {"sha256": weights_sha256, "bytes": weights_bytes}},
        **storage,
        "manifest": model.layout.to_dict(),
    }


def model_record(model: CheckpointModel) -> dict[str, Any]:
    """``dtypes`` (every model) and ``base_fingerprint`` (delta mode) of ``rpg_config.json``."""
    plan = model.plan
    named = dtype_record.floating_dtypes(model.base_model)
    for entry, target in zip(model.layout.targets, plan.targets, strict=True):
        if target.serving.replaces_parameter:  # the Parameter is gone: its dtype is the plan's
            named.setdefault(entry.name, target.dtype)
    record: dict[str, Any] = {"dtypes": dtype_record.record(named)}
    if plan.delta and getattr(model, "_base_fingerprint", None) is not None:
        record["base_fingerprint"] = model._base_fingerprint  # taken when RPG was applied or loaded
    elif plan.delta:
        bases = []
        for entry, owners in zip(model.layout.targets, model._targets, strict=True):
            owner = owners[0]
            bases.append((entry.name, entry.shape, owner.module._parameters[owner.attr], owner.module))
        record["base_fingerprint"] = base_fingerprint.fingerprint(bases)
    return record


def format_metadata(meta: dict[str, Any]) -> str:
    """``rpg_config.json`` text: indented, with one line per manifest ring and target."""
    head = json.dumps({k: v for k, v in meta.items() if k != "manifest"}, indent=2)
    rings = ",\n".join("      " + json.dumps(r) for r in meta["manifest"]["rings"])
    targets = ",\n".join("      " + json.dumps(t) for t in meta["manifest"]["targets"])
    manifest = f'  "manifest": {{\n    "rings": [\n{rings}\n    ],\n    "targets": [\n{targets}\n    ]\n  }}'
    return head[: -len("\n}")] + ",\n" + manifest + "\n}\n"


def _write_model_config(model: CheckpointModel, path: Path) -> bool:
    config = getattr(model.base_model, "config", None)
    if config is None or not hasattr(config, "to_json_file"):
        return False
    config = copy.deepcopy(config)
    config.architectures = [original_class(model.base_model).__name__]
    config.to_json_file(path)
    return True


def _card_is_ours(path: Path) -> bool:
    return not path.exists() or is_generated_card(path.read_text(encoding="utf-8", errors="replace"))


def _is_main_process(flag: bool | None) -> bool:
    """``flag`` when given; else, under ``torch.distributed``, whether this is rank 0."""
    if flag is not None:
        return bool(flag)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return True


def _refuse_what_would_not_load(
    model: CheckpointModel, tensors: dict[str, torch.Tensor], directory: Path, allow_invalid: bool
) -> None:
    """Raise before anything is written when ``from_pretrained`` would refuse ``tensors``."""
    live = {RING_PREFIX + name: ring for name, ring in model.rpg_rings.items()}
    live.update(stored_entries(model))
    sizes = {name: ring.size for name, ring in model.layout.rings.items()}
    found = save_checks.problems(tensors, sizes, live)
    if not found:
        return
    more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
    existing = (directory / CONFIG_NAME).exists() or (directory / WEIGHTS_NAME).exists()
    if not allow_invalid:
        raise RPGCheckpointError(
            f"refusing to save to {str(directory)!r}: {found[0]}{more}; from_pretrained would refuse this "
            "checkpoint. Nothing was written (a checkpoint there is unchanged). For debugging, "
            "save_pretrained(..., allow_invalid=True) writes it anyway into a directory without a checkpoint"
        )
    if existing:
        raise RPGCheckpointError(
            f"allow_invalid=True never writes over a checkpoint, and {str(directory)!r} holds one: {found[0]}{more}. "
            "Nothing was written; choose an empty directory"
        )
    warnings.warn(
        f"saving a checkpoint from_pretrained will refuse (allow_invalid=True): {found[0]}{more}", stacklevel=4
    )


def save_checkpoint(
    model: CheckpointModel,
    save_directory: str | Path,
    *,
    is_main_process: bool | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    safe_serialization: bool = True,
    model_card: bool = True,
    card_info: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    ring_storage: str | None = None,
    allow_invalid: bool = False,
) -> Path:
    """Write the compact checkpoint of ``model`` into ``save_directory``, atomically.

    Either every checkpoint file is replaced or none is: a failure leaves the previous
    checkpoint (and a fresh directory: nothing at all) in place, and other files in the
    directory are never touched (see ``hf_rpg.format.atomic`` and ``docs/reliability.md``).

    Args:
        is_main_process: Whether this process writes. By default, under an initialised
            ``torch.distributed`` process group only rank 0 writes; pass
            ``accelerator.is_main_process`` (or ``args.should_save``) to choose yourself.
        state_dict: Tensors to save instead of the live ones (``rpg_rings.*`` and
            ``base_model.*`` keys, as ``CheckpointModel.state_dict()`` names them).
        safe_serialization: Accepted for transformers compatibility; checkpoints are
            always safetensors.
        model_card: Write ``README.md`` (an existing card not written by hf_rpg is kept).
        card_info: Extra model card fields (``metrics``, ``datasets``, ``model_name``...).
        max_shard_size: Accepted for transformers compatibility and ignored: the weights
            file holds only rings and a few parameters, one file. Any other keyword is an
            error.
        ring_storage: How the ring(s) are written: ``None`` (default) as they are (their own
            dtype, float32 normally), ``"float32"``, ``"float16"``, ``"int8"`` (symmetric
            absmax, one float32 scale per block of 256 entries) or ``"sparse"`` (non-zero
            entries only, for pruned rings); see ``hf_rpg.format.ring_storage``. Loading decodes to
            the ring's dtype; ``rpg_config.json`` records the choice under ``ring_storage``.
        allow_invalid: Write a checkpoint that ``from_pretrained`` would refuse (a ring with
            NaN or Inf, a ``state_dict`` entry of the wrong shape), with a warning, for
            debugging; never over a directory that already holds a checkpoint. By default
            such a save is refused before anything is written.

    Raises:
        RPGCheckpointError: The directory cannot be written (the message says what state
            it is in), or the state would not load (nothing is written then).
    """
    target = Path(save_directory)
    if not _is_main_process(is_main_process):
        return target
    if not safe_serialization:
        raise RPGCheckpointError("safe_serialization=False is not supported: hf_rpg writes safetensors only")
    if target.exists() and not target.is_dir():
        raise RPGCheckpointError(f"save_directory {str(target)!r} exists and is not a directory")
    # Resolved, so that the staging directory lies beside the real directory (same
    # filesystem) when the target is a symlink.
    real = target.resolve()
    tensors = _tensors_to_save(model, state_dict)
    _refuse_what_would_not_load(model, tensors, real, allow_invalid)
    storage = _encode_rings(tensors, None if ring_storage is None else check_storage(ring_storage))
    bound = {"generator": GENERATOR_VERSION, "config": model.rpg_config.to_dict(), "manifest": model.layout.to_dict()}
    binding = binding_digest(bound if storage is None else {**bound, "ring_storage": storage})
    record = model_record(model)
    write_card = model_card and _card_is_ours(real / CARD_NAME)

    def write(staging: Path) -> list[str]:
        weights = staging / WEIGHTS_NAME
        names = [WEIGHTS_NAME]
        metadata = {
            "format": "pt",
            "hf_rpg_format": str(FORMAT_VERSION),
            "generator": GENERATOR_VERSION,
            BINDING_KEY: binding,
            MODEL_BINDING_KEY: model_binding_digest(
                {**bound, **({} if storage is None else {"ring_storage": storage}), **record}
            ),
        }
        if _write_model_config(model, staging / MODEL_CONFIG_NAME):  # first: the weights file binds it
            names.append(MODEL_CONFIG_NAME)
            content = json.loads((staging / MODEL_CONFIG_NAME).read_text(encoding="utf-8"))
            metadata[CONFIG_JSON_KEY] = config_json_digest(content)
        save_file(tensors, weights, metadata=metadata)
        meta = checkpoint_metadata(model, _sha256(weights), weights.stat().st_size, storage, record)
        meta["base_model"] = portable_base_model(meta["base_model"], real, mode=model.rpg_config.mode)
        if write_card:
            (staging / CARD_NAME).write_text(model_card_text(meta, **(card_info or {})), encoding="utf-8")
            names.append(CARD_NAME)
        (staging / CONFIG_NAME).write_text(format_metadata(meta), encoding="utf-8")
        return [*names, CONFIG_NAME]  # rpg_config.json last: it vouches for the weights file

    write_directory_atomically(real, write)
    return target


# ---------------------------------------------------------------------------- loading


def _interrupted_save_hint(directory: Path) -> str:
    """Where an interrupted save left files, for errors about a mismatched pair of files."""
    leftovers = leftover_staging_dirs(directory)
    if not leftovers:
        return ""
    where = ", ".join(repr(str(p)) for p in leftovers)
    return (
        f". A save into this directory was interrupted and left {where}: its {BACKUP_DIR}/ folder holds the "
        f"previous files it had replaced, the other files are the new ones not moved yet; move one set into "
        f"{str(directory)!r} to recover (docs/reliability.md)"
    )


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes on disk of the checkpoint files in ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


__all__ = [
    "RING_PREFIX",
    "CheckpointModel",
    "checkpoint_bytes",
    "save_checkpoint",
    "stored_entries",
]
