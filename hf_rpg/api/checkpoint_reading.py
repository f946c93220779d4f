"""Reading a compact checkpoint back: the weights file checked against ``rpg_config.json`` (its
SHA-256, the bindings of every field that changes the model, ``config.json``), then its tensors
copied into a model, each checked (name, shape, dtype kind, finite) before anything is changed.
Reads only safetensors and JSON: nothing is unpickled. Writing is ``hf_rpg.api.checkpoint``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import RPGCheckpointError, RPGConfigError, RPGManifestMismatchError
from ..format.files import CONFIG_NAME, MODEL_CONFIG_NAME, WEIGHTS_NAME
from ..format.hub_resolve import resolve_checkpoint_files
from ..format.metadata import (
    BINDING_KEY,
    CONFIG_JSON_KEY,
    MODEL_BINDING_KEY,
    binding_digest,
    config_json_digest,
    model_binding_digest,
    read_metadata,
)
from .checkpoint import RING_PREFIX, CheckpointModel, _decode_rings, _interrupted_save_hint, _sha256, stored_entries
from .config import RPGConfig


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A delta checkpoint read to become an adapter: its config and metadata parsed, its weights
    file checked or loaded on request (``adapters.load_adapter`` decides the order)."""

    config: RPGConfig
    meta: dict[str, Any]
    files: dict[str, Path]

    @property
    def source(self) -> Path:
        """Its ``rpg_config.json`` (what error messages name)."""
        return self.files[CONFIG_NAME]

    def check_weights(self) -> None:
        """Raise ``RPGCheckpointError`` when the weights file is not the one ``rpg_config.json`` records."""
        check_weights_file(self.files[WEIGHTS_NAME], self.meta)

    def load_into(self, model: CheckpointModel) -> None:
        """Copy the checkpoint's tensors into ``model`` (each checked before anything changes)."""
        load_tensors(
            model,
            self.files[WEIGHTS_NAME],
            binding=binding_digest(self.meta),
            ring_storage=self.meta.get("ring_storage"),
        )


def read_adapter_checkpoint(path_or_repo_id: str | Path, **hub_kwargs: Any) -> AdapterCheckpoint:
    """The files of a delta checkpoint (a directory or Hub repo id) and its parsed config."""
    files = resolve_checkpoint_files(path_or_repo_id, **hub_kwargs)
    meta = read_metadata(files[CONFIG_NAME])
    try:
        config = RPGConfig.from_dict(meta["config"])
    except RPGConfigError as err:
        raise RPGConfigError(f"{files[CONFIG_NAME]}: 'config': {err}") from None
    return AdapterCheckpoint(config, meta, files)


def check_weights_file(path: Path, meta: dict[str, Any]) -> None:
    """Raise ``RPGCheckpointError`` when the weights file's size or SHA-256 differs from ``rpg_config.json``'s."""
    entry = (meta.get("files") or {}).get(WEIGHTS_NAME) or {}
    size, digest = entry.get("bytes"), entry.get("sha256")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise RPGCheckpointError(
            f"{path} is {actual} bytes but {CONFIG_NAME} records {size}: the file is truncated, corrupted, "
            f"or from another save{_interrupted_save_hint(path.parent)}"
        )
    if digest is not None and _sha256(path) != digest:
        raise RPGCheckpointError(
            f"{path} does not match the SHA-256 recorded in {CONFIG_NAME}: the file is corrupted, truncated, "
            f"or from another save{_interrupted_save_hint(path.parent)}"
        )


def check_model_binding(weights: Path, meta: dict[str, Any], model_config: Path | None) -> None:
    """Raise ``RPGCheckpointError`` when ``rpg_config.json``, or ``config.json`` when given (the
    loader builds the model from it), differ in a field that changes the model from the ones
    the weights file was saved with. Files saved before these digests existed have none and
    are checked by ``binding_digest`` only; a ``config.json`` that is not JSON is left to the
    model builder to report."""
    handle = _safetensors_call(weights, "header", safe_open, str(weights), "pt")
    with handle:
        stored = _safetensors_call(weights, "metadata", handle.metadata) or {}
    hint = _interrupted_save_hint(weights.parent)
    if MODEL_BINDING_KEY in stored and stored[MODEL_BINDING_KEY] != model_binding_digest(meta):
        raise RPGCheckpointError(
            f"{weights} was saved with another {CONFIG_NAME}: the generator, seed, mode, manifest or another field "
            "that changes the model (ring_dtype, other_parameters, modules_to_save, dtypes, base_fingerprint...) "
            f"differs from the ones the weights were saved with; edited or mixed files are refused{hint}"
        )
    if model_config is None or CONFIG_JSON_KEY not in stored:
        return
    try:
        content = json.loads(Path(model_config).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(content, dict) or stored[CONFIG_JSON_KEY] != config_json_digest(content):
        raise RPGCheckpointError(
            f"{model_config} differs from the {MODEL_CONFIG_NAME} the weights were saved with: an edited "
            f"architecture (layer_norm_eps, hidden_act...) would build another model; {MODEL_CONFIG_NAME} edits are "
            f"refused (docs/checkpoint-format.md lists the keys that are not checked){hint}"
        )


def _dtype_kind(dtype: torch.dtype) -> str:
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer or bool"


def _check_value(tensor: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(value.shape) != tuple(tensor.shape):
        raise RPGManifestMismatchError(
            f"{WEIGHTS_NAME}: {name!r} has shape {list(value.shape)} but the model expects {list(tensor.shape)}"
        )
    # Casting between floating dtypes is a choice (a bf16 model); int <-> float never is.
    if _dtype_kind(value.dtype) != _dtype_kind(tensor.dtype):
        raise RPGManifestMismatchError(
            f"{WEIGHTS_NAME}: {name!r} is stored as {value.dtype} but the model's tensor is {tensor.dtype}"
        )


def _safetensors_call(path: Path, what: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as err:  # safetensors (Rust) and torch raise their own types for malformed files
        raise RPGCheckpointError(f"{path} is not a readable safetensors file ({what}): {err}") from None


def _read_weights(path: Path, binding: str | None) -> dict[str, torch.Tensor]:
    """Every tensor of the weights file, after checking that it belongs to ``rpg_config.json``."""
    handle = _safetensors_call(path, "header", safe_open, str(path), "pt")
    with handle:
        metadata = _safetensors_call(path, "metadata", handle.metadata) or {}
        stored_binding = metadata.get(BINDING_KEY)
        if binding is not None and stored_binding is not None and stored_binding != binding:
            raise RPGCheckpointError(
                f"{path} was saved with another {CONFIG_NAME}: the generator, seed, mode or manifest there differ "
                f"from the ones the weights were saved with{_interrupted_save_hint(path.parent)}"
            )
        keys = _safetensors_call(path, "keys", handle.keys)
        return {key: _safetensors_call(path, key, handle.get_tensor, key) for key in keys}


def _check_ring(path: Path, name: str, value: torch.Tensor, size: int) -> None:
    if tuple(value.shape) != (size,):
        raise RPGManifestMismatchError(
            f"{path}: ring {name!r} has shape {list(value.shape)}, the manifest says [{size}]"
        )
    if not value.dtype.is_floating_point:
        raise RPGCheckpointError(f"{path}: ring {name!r} is stored as {value.dtype}; a ring is floating point")
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise RPGCheckpointError(
            f"{path}: ring {name!r} holds {int(bad.sum())} NaN or Inf value(s), the first at index {first} "
            f"(value {value[first].item()}); every generated weight reading them would be NaN or Inf"
        )


def _base_extra_state(model: CheckpointModel) -> set[str]:
    """State-dict keys of the base that are neither parameters nor buffers (see ``stored_entries``)."""
    real = {id(t) for t in itertools.chain(model.base_model.parameters(), model.base_model.buffers())}
    return {k for k, t in model.base_model.state_dict(keep_vars=True).items() if id(t) not in real}


def load_tensors(
    model: CheckpointModel, path: Path, *, binding: str | None = None, ring_storage: dict[str, Any] | None = None
) -> None:
    """Copy the rings, stored parameters and buffers of ``path`` into ``model``.

    Everything is checked before anything is copied, so a failure changes nothing.
    ``binding``: the ``binding_digest`` of the ``rpg_config.json`` being loaded; a weights
    file that records another one was saved with another ``rpg_config.json``.
    ``ring_storage``: the ``ring_storage`` field of ``rpg_config.json`` (None: rings stored as is).
    """
    values = _read_weights(path, binding)
    _decode_rings(values, ring_storage, {n: r.size for n, r in model.layout.rings.items()}, path)
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    ring_keys = {RING_PREFIX + name for name in model.rpg_rings}
    for name, ring in model.rpg_rings.items():
        key = RING_PREFIX + name
        if key not in values:
            raise RPGCheckpointError(f"{path} has no tensor {key!r} for ring {name!r}")
        _check_ring(path, name, values[key], model.layout.rings[name].size)
        _check_value(ring, values[key], key)
        copies.append((ring, values[key]))
    expected = stored_entries(model)
    for key in sorted(set(values) - ring_keys):
        if key not in expected and key in _base_extra_state(model):
            continue  # a quantized base's quant_state, stored by hf_rpg before it left these out
        if key not in expected:
            raise RPGManifestMismatchError(
                f"{path} holds {key!r}, which the model ({type(model.base_model).__name__}) does not have "
                "as a stored parameter or buffer"
            )
        _check_value(expected[key], values[key], key)
        copies.append((expected[key], values[key]))
    missing = [k for k in expected if k not in values]
    if missing:
        what = (
            "every parameter and buffer that is not generated"
            if not model.plan.delta
            else "the parameters it trained (task heads, modules_to_save) and the buffers; without them the base's "
            "own values would be used"
        )
        raise RPGCheckpointError(
            f"{path} lacks {len(missing)} tensor(s) the model needs, first {missing[0]!r}; "
            f"a {'delta' if model.plan.delta else 'replace'}-mode checkpoint must hold {what}"
        )
    with torch.no_grad():
        for tensor, value in copies:
            tensor.copy_(value)


__all__ = ["check_model_binding", "check_weights_file", "load_tensors"]
