"""Compact checkpoints: the ring(s) plus seeds, never a per-weight map.

A checkpoint is a directory (local, or a Hub repo) holding:

- ``rpg_config.json``: the RPGConfig, the layout manifest, the generator version, the
  hf_rpg version, the base model reference and the SHA-256 of the weights file;
- ``rpg_model.safetensors``: the ring(s), the non-generated parameters that are stored
  (all of them in replace mode, the trainable ones in delta mode) and the persistent
  buffers (BatchNorm statistics), nothing else;
- ``config.json``: the architecture (replace mode loads from it, with no base weights);
- ``README.md``: a model card.

Saves are atomic per file: everything is written into a temporary directory beside the
target, and each file is moved into place with ``os.replace`` only once all are written,
``rpg_config.json`` last. Nothing is ever unpickled on load.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .config import RPGConfig
from .errors import (
    RPGCheckpointError,
    RPGGeneratorVersionError,
    RPGManifestMismatchError,
)
from .generator import GENERATOR_VERSION, SUPPORTED_GENERATORS
from .layout import Layout

if TYPE_CHECKING:
    from .model import RPGModel

CONFIG_NAME = "rpg_config.json"
WEIGHTS_NAME = "rpg_model.safetensors"
MODEL_CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
RING_PREFIX = "rpg_rings."
_REQUIRED_META_KEYS = ("format_version", "generator", "config", "manifest")


def original_class(module: nn.Module) -> type:
    """The class a module had before hf_rpg swapped it."""
    return module.__dict__.get("_rpg_original_class", type(module))


# ---------------------------------------------------------------------------- what is stored


def stored_entries(model: RPGModel) -> dict[str, torch.Tensor]:
    """Name -> live tensor of everything the checkpoint stores besides the rings.

    Tied tensors appear once, under their first name. Delta-mode base weights and, in delta
    mode, frozen parameters are not stored: they come from the base model.
    """
    bases = model._delta_base_ids()
    delta = model.rpg_config.mode == "delta"
    entries: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.base_model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter) and (id(tensor) in bases or (delta and not tensor.requires_grad)):
            continue
        entries[name] = tensor
    return entries


def _tensors_to_save(model: RPGModel, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _base_model_info(model: RPGModel) -> dict[str, Any]:
    base = model.base_model
    cls = original_class(base)
    name_or_path = model.rpg_config.base_model_name_or_path
    if name_or_path is None:
        name_or_path = getattr(getattr(base, "config", None), "_name_or_path", None) or None
    return {
        "class": cls.__name__,
        "module": cls.__module__,
        "name_or_path": name_or_path,
        "revision": model.rpg_config.revision,
    }


def checkpoint_metadata(model: RPGModel, weights_sha256: str, weights_bytes: int) -> dict[str, Any]:
    """The content of ``rpg_config.json``."""
    return {
        "format_version": FORMAT_VERSION,
        "hf_rpg_version": __version__,
        "generator": GENERATOR_VERSION,
        "mode": model.rpg_config.mode,
        "base_model": _base_model_info(model),
        "config": model.rpg_config.to_dict(),
        "dof": model.dof_report().to_dict(),
        "files": {WEIGHTS_NAME: {"sha256": weights_sha256, "bytes": weights_bytes}},
        "manifest": model.layout.to_dict(),
    }


def format_metadata(meta: dict[str, Any]) -> str:
    """``rpg_config.json`` text: indented, with one line per manifest ring and target."""
    head = json.dumps({k: v for k, v in meta.items() if k != "manifest"}, indent=2)
    rings = ",\n".join("      " + json.dumps(r) for r in meta["manifest"]["rings"])
    targets = ",\n".join("      " + json.dumps(t) for t in meta["manifest"]["targets"])
    manifest = f'  "manifest": {{\n    "rings": [\n{rings}\n    ],\n    "targets": [\n{targets}\n    ]\n  }}'
    return head[: -len("\n}")] + ",\n" + manifest + "\n}\n"


def _write_model_config(model: RPGModel, path: Path) -> bool:
    config = getattr(model.base_model, "config", None)
    if config is None or not hasattr(config, "to_json_file"):
        return False
    config = copy.deepcopy(config)
    config.architectures = [original_class(model.base_model).__name__]
    config.to_json_file(path)
    return True


def _card_is_ours(path: Path) -> bool:
    from .hub import CARD_MARKER

    return not path.exists() or CARD_MARKER in path.read_text(encoding="utf-8", errors="replace")


def save_checkpoint(
    model: RPGModel,
    save_directory: str | Path,
    *,
    is_main_process: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
    safe_serialization: bool = True,
    model_card: bool = True,
    card_info: dict[str, Any] | None = None,
    **ignored: Any,
) -> Path:
    """Write the compact checkpoint of ``model`` into ``save_directory``.

    Args:
        is_main_process: Only the main process writes (pass ``accelerator.is_main_process``).
        state_dict: Tensors to save instead of the live ones (``rpg_rings.*`` and
            ``base_model.*`` keys, as ``RPGModel.state_dict()`` names them).
        safe_serialization: Accepted for transformers compatibility; checkpoints are
            always safetensors.
        model_card: Write ``README.md`` (an existing card not written by hf_rpg is kept).
        card_info: Extra model card fields (``metrics``, ``datasets``, ``model_name``...).
        **ignored: Other ``save_pretrained`` arguments of transformers (``max_shard_size``,
            ``push_to_hub`` ...) are accepted and ignored.
    """
    target = Path(save_directory)
    if not is_main_process:
        return target
    if not safe_serialization:
        raise RPGCheckpointError("safe_serialization=False is not supported: hf_rpg writes safetensors only")
    if target.exists() and not target.is_dir():
        raise RPGCheckpointError(f"save_directory {str(target)!r} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = _tensors_to_save(model, state_dict)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.rpg-tmp-", dir=target.parent))
    try:
        weights = staging / WEIGHTS_NAME
        save_file(
            tensors,
            weights,
            metadata={"format": "pt", "hf_rpg_format": str(FORMAT_VERSION), "generator": GENERATOR_VERSION},
        )
        meta = checkpoint_metadata(model, _sha256(weights), weights.stat().st_size)
        names = [WEIGHTS_NAME]
        if _write_model_config(model, staging / MODEL_CONFIG_NAME):
            names.append(MODEL_CONFIG_NAME)
        if model_card and _card_is_ours(target / CARD_NAME):
            from .hub import model_card_text

            (staging / CARD_NAME).write_text(model_card_text(meta, **(card_info or {})), encoding="utf-8")
            names.append(CARD_NAME)
        (staging / CONFIG_NAME).write_text(format_metadata(meta), encoding="utf-8")
        names.append(CONFIG_NAME)
        target.mkdir(exist_ok=True)
        for name in names:  # rpg_config.json last: it names the weights' checksum
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- loading


def read_metadata(path: Path) -> dict[str, Any]:
    """Parse and check ``rpg_config.json``."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RPGCheckpointError(f"{path} is not a readable JSON file: {err}") from None
    if not isinstance(meta, dict):
        raise RPGCheckpointError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    for key in _REQUIRED_META_KEYS:
        if key not in meta:
            raise RPGCheckpointError(f"{path} lacks the field {key!r} (required: {', '.join(_REQUIRED_META_KEYS)})")
    if meta["generator"] not in SUPPORTED_GENERATORS:
        raise RPGGeneratorVersionError(
            f"{path} was written with generator {meta['generator']!r}; this hf_rpg {__version__} implements "
            f"{', '.join(SUPPORTED_GENERATORS)}. Upgrade hf_rpg to load it."
        )
    if meta["format_version"] != FORMAT_VERSION:
        raise RPGCheckpointError(
            f"{path} has format_version {meta['format_version']!r}; this hf_rpg reads format {FORMAT_VERSION}"
        )
    return meta


def _check_weights_file(path: Path, meta: dict[str, Any]) -> None:
    expected = (meta.get("files") or {}).get(WEIGHTS_NAME, {}).get("sha256")
    if expected is not None and _sha256(path) != expected:
        raise RPGCheckpointError(
            f"{path} does not match the SHA-256 recorded in {CONFIG_NAME}: the file is corrupted, truncated, "
            "or from another save"
        )


def _model_class(meta: dict[str, Any]) -> type:
    import transformers

    info = meta.get("base_model") or {}
    name, module = info.get("class"), info.get("module") or ""
    cls = getattr(transformers, name, None) if isinstance(name, str) and module.startswith("transformers") else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise RPGCheckpointError(
            f"cannot rebuild the base model class {module}.{name} (only transformers classes are rebuilt); "
            "pass base_model=<an instance of the architecture> to from_pretrained"
        )
    return cls


def _build_base_model(meta: dict[str, Any], model_config_path: Path | None, hub_kwargs: dict[str, Any]) -> nn.Module:
    cls = _model_class(meta)
    if meta["config"].get("mode") == "delta":
        info = meta.get("base_model") or {}
        reference = info.get("name_or_path")
        if not reference:
            raise RPGCheckpointError(
                "this delta checkpoint records no base model (base_model.name_or_path is empty); "
                "pass base_model=<the pretrained model> to from_pretrained"
            )
        revision = info.get("revision")
        return cls.from_pretrained(reference, revision=revision, **hub_kwargs)
    if model_config_path is None:
        raise RPGCheckpointError(f"the checkpoint has no {MODEL_CONFIG_NAME}; pass base_model=<the architecture>")
    from transformers.initialization import no_init_weights

    config = cls.config_class.from_json_file(str(model_config_path))
    with no_init_weights():  # every weight is loaded or generated: skip the random init
        model = cls._from_config(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _copy_into(tensor: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(value.shape) != tuple(tensor.shape):
        raise RPGManifestMismatchError(
            f"{WEIGHTS_NAME}: {name!r} has shape {list(value.shape)} but the model expects {list(tensor.shape)}"
        )
    with torch.no_grad():
        tensor.copy_(value)


def load_tensors(model: RPGModel, path: Path) -> None:
    """Copy the rings, stored parameters and buffers of ``path`` into ``model``."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise RPGCheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    with handle:
        keys = set(handle.keys())
        for name, ring in model.rpg_rings.items():
            key = RING_PREFIX + name
            if key not in keys:
                raise RPGCheckpointError(f"{path} has no tensor {key!r} for ring {name!r}")
            value = handle.get_tensor(key)
            if tuple(value.shape) != (model.layout.rings[name].size,):
                raise RPGManifestMismatchError(
                    f"{path}: ring {name!r} has shape {list(value.shape)}, the manifest says "
                    f"[{model.layout.rings[name].size}]"
                )
            if not bool(torch.isfinite(value).all()):
                raise RPGCheckpointError(f"{path}: ring {name!r} holds NaN or Inf values")
            _copy_into(ring, value, key)
        expected = stored_entries(model)
        for key in sorted(keys - {RING_PREFIX + n for n in model.rpg_rings}):
            if key not in expected:
                raise RPGManifestMismatchError(
                    f"{path} holds {key!r}, which the model ({type(model.base_model).__name__}) does not have "
                    "as a stored parameter or buffer"
                )
            _copy_into(expected[key], handle.get_tensor(key), key)
    if model.rpg_config.mode == "replace":
        missing = [k for k in expected if k not in keys]
        if missing:
            raise RPGCheckpointError(
                f"{path} lacks {len(missing)} tensor(s) the model needs, first {missing[0]!r}; "
                "a replace-mode checkpoint must hold every parameter and buffer that is not generated"
            )


def load_checkpoint(
    path_or_repo_id: str | Path,
    base_model: nn.Module | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> RPGModel:
    """Load an hf_rpg checkpoint from a local directory or a Hub repo id.

    Args:
        path_or_repo_id: A directory written by ``save_pretrained``, or ``"user/repo"``.
        base_model: The model to apply the checkpoint to. Needed when the architecture
            cannot be rebuilt from ``config.json`` (a custom ``nn.Module``), or to reuse
            an already loaded base in delta mode.
        revision, cache_dir, token, local_files_only, force_download: Hub options, as in
            ``huggingface_hub.hf_hub_download``.

    Returns:
        An ``RPGModel`` in eval mode. Its outputs are bit-identical to the saved model's.
    """
    from .hub import resolve_checkpoint_files
    from .model import RPGModel, targets_from_manifest

    hub_kwargs = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
    files = resolve_checkpoint_files(path_or_repo_id, revision=revision, force_download=force_download, **hub_kwargs)
    meta = read_metadata(files[CONFIG_NAME])
    config = RPGConfig.from_dict(meta["config"])
    layout = Layout.from_dict(meta["manifest"])
    _check_weights_file(files[WEIGHTS_NAME], meta)
    if base_model is None:
        base_model = _build_base_model(meta, files.get(MODEL_CONFIG_NAME), hub_kwargs)
    targets = targets_from_manifest(base_model, layout)
    model = RPGModel._wrap(base_model, config, layout, targets, "empty")
    load_tensors(model, files[WEIGHTS_NAME])
    model.eval()
    return model


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes on disk of the checkpoint files in ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "MODEL_CONFIG_NAME",
    "WEIGHTS_NAME",
    "checkpoint_bytes",
    "load_checkpoint",
    "save_checkpoint",
]
