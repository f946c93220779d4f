"""``rpg_config.json``: what each field must hold, checked before anything uses it.

A checkpoint can come from anywhere (a Hub repo, a half-copied directory, a newer
hf_rpg), so every field the loader, ``hf-rpg info`` or the model card reads is checked
here first and a bad one raises an ``RPGError`` that names it, its value and what is
valid, never a ``KeyError`` or ``TypeError`` from deep inside the loader. The manifest
itself is checked by ``Layout.from_dict`` and the config by ``RPGConfig.from_dict``.

The *binding* ties the weights file to the ``rpg_config.json`` it was saved with: the
SHA-256 of the fields that decide the generated weights (generator, seed, mode, manifest)
is stored in the safetensors metadata. ``rpg_config.json`` records the SHA-256 of the
weights file in return, so a mismatched pair is caught whichever file changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from ..describe import describe
from ..describe import is_int as _is_int
from ..errors import RPGCheckpointError, RPGGeneratorVersionError
from ..spec.generator import SUPPORTED_GENERATORS
from ..version import __version__
from . import dtype_record, fingerprint_record
from .files import WEIGHTS_NAME
from .ring_storage import check_description

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "generator", "config", "manifest")
OPTIONAL_KEYS = ("hf_rpg_version", "mode", "base_model", "dof", "files", "ring_storage", "dtypes", "base_fingerprint")
# Without these a checkpoint would silently regenerate other weights: no defaults for them.
REQUIRED_CONFIG_KEYS = ("seed", "mode")
BASE_MODEL_KEYS = ("class", "module", "name_or_path", "revision")
BINDING_KEY = "hf_rpg_binding"
# Written beside BINDING_KEY since base_fingerprint and dtypes exist: covers every field that
# changes the loaded model (see model_binding_digest); older files have BINDING_KEY only.
MODEL_BINDING_KEY = "hf_rpg_model_binding"
# The SHA-256 of config.json's content (see config_json_digest), beside MODEL_BINDING_KEY.
CONFIG_JSON_KEY = "hf_rpg_config_json"
# The RPGConfig fields the model binding covers (fixed: a field added later gets its own key).
# Not covered, since they never change a loaded model's values: index_cache,
# weights_in_backward, embedding_rows, inference_cache (in-memory choices) and
# base_model_name_or_path, revision (a base may move; base_fingerprint checks its weights).
BOUND_CONFIG_FIELDS = (
    "dof",
    "seed",
    "mode",
    "init",
    "target_modules",
    "exclude_modules",
    "target_parameters",
    "rings",
    "rank",
    "gain",
    "other_parameters",
    "modules_to_save",
    "ring_dtype",
)
# config.json keys that never change the model hf_rpg builds (remote code is never run).
UNBOUND_CONFIG_JSON_KEYS = ("_name_or_path", "transformers_version", "auto_map")
_SHA256 = re.compile(r"[0-9a-f]{64}")


_describe = functools.partial(describe, limit=80)


def check_metadata(meta: Any, source: str, *, weights_name: str) -> dict[str, Any]:
    """Check the parsed content of ``rpg_config.json``; return it unchanged.

    Raises ``RPGGeneratorVersionError`` for a generator this hf_rpg does not implement and
    ``RPGCheckpointError`` for anything else that is missing or malformed. Unknown
    top-level keys (a newer hf_rpg may add some) only warn.
    """
    if not isinstance(meta, dict):
        raise RPGCheckpointError(f"{source} must hold a JSON object, got {_describe(meta)}")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise RPGCheckpointError(f"{source} lacks the field {key!r} (required: {', '.join(REQUIRED_KEYS)})")
    _check_generator(meta["generator"], source)
    _check_format_version(meta["format_version"], source)
    _check_config(meta, source)
    _check_optional_str(meta, "hf_rpg_version", source)
    _check_base_model(meta.get("base_model"), source)
    _check_files(meta.get("files"), source, weights_name)
    _check_dof(meta.get("dof"), source)
    _check_ring_storage(meta.get("ring_storage"), meta["manifest"], source)
    if meta.get("dtypes") is not None:
        dtype_record.check_description(meta["dtypes"], source)
    if meta.get("base_fingerprint") is not None:
        manifest_targets = meta["manifest"].get("targets") if isinstance(meta["manifest"], dict) else None
        count = len(manifest_targets) if isinstance(manifest_targets, list) else 0
        fingerprint_record.check_description(meta["base_fingerprint"], source, count)
    unknown = sorted(k for k in meta if k not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        warnings.warn(
            f"{source}: ignoring unknown top-level keys {unknown} (written by a newer hf_rpg?); loading goes on",
            UserWarning,
            stacklevel=4,
        )
    return meta


def _check_generator(generator: Any, source: str) -> None:
    if not isinstance(generator, str):
        raise RPGCheckpointError(
            f"{source}: 'generator' must be a generator name such as {SUPPORTED_GENERATORS[0]!r}, "
            f"got {_describe(generator)}"
        )
    if generator not in SUPPORTED_GENERATORS:
        raise RPGGeneratorVersionError(
            f"{source} was written with generator {generator!r}; this hf_rpg {__version__} implements "
            f"{', '.join(SUPPORTED_GENERATORS)}. Upgrade hf_rpg to load it."
        )


def _check_format_version(version: Any, source: str) -> None:
    if _is_int(version) and version > FORMAT_VERSION:
        raise RPGCheckpointError(
            f"{source} has format_version {version}, written by a newer hf_rpg; this hf_rpg {__version__} reads "
            f"format {FORMAT_VERSION}. Upgrade hf_rpg to load it."
        )
    if not _is_int(version) or version != FORMAT_VERSION:
        raise RPGCheckpointError(f"{source}: format_version must be the int {FORMAT_VERSION}, got {_describe(version)}")


def _check_config(meta: dict[str, Any], source: str) -> None:
    config = meta["config"]
    if not isinstance(config, dict):
        raise RPGCheckpointError(f"{source}: 'config' must be an object (the RPGConfig), got {_describe(config)}")
    for key in REQUIRED_CONFIG_KEYS:
        if key not in config:
            raise RPGCheckpointError(
                f"{source}: 'config' lacks the field {key!r} (required: {', '.join(REQUIRED_CONFIG_KEYS)}); "
                "without it the generated weights cannot be rebuilt"
            )
    if "mode" in meta and meta["mode"] != config["mode"]:
        raise RPGCheckpointError(
            f"{source}: 'mode' is {_describe(meta['mode'])} but 'config' says mode {_describe(config['mode'])}; "
            "they must agree"
        )


def _check_optional_str(section: dict[str, Any], key: str, where: str) -> None:
    value = section.get(key)
    if value is not None and not isinstance(value, str):
        raise RPGCheckpointError(f"{where}: {key!r} must be a string or null, got {_describe(value)}")


def _check_base_model(info: Any, source: str) -> None:
    if info is None:
        return
    if not isinstance(info, dict):
        raise RPGCheckpointError(
            f"{source}: 'base_model' must be an object with {', '.join(BASE_MODEL_KEYS)}, got {_describe(info)}"
        )
    for key in BASE_MODEL_KEYS:
        _check_optional_str(info, key, f"{source}: base_model")


def _check_files(files: Any, source: str, weights_name: str) -> None:
    if files is None:
        return
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise RPGCheckpointError(
            f"{source}: 'files' must map file names to {{'sha256': ..., 'bytes': ...}} objects, got {_describe(files)}"
        )
    entry = files.get(weights_name)
    if entry is None:
        return
    digest = entry.get("sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise RPGCheckpointError(
            f"{source}: files[{weights_name!r}].sha256 must be 64 lowercase hex digits, got {_describe(digest)}"
        )
    size = entry.get("bytes")
    if size is not None and not (_is_int(size) and size >= 0):
        raise RPGCheckpointError(
            f"{source}: files[{weights_name!r}].bytes must be a non-negative int, got {_describe(size)}"
        )


def _check_dof(dof: Any, source: str) -> None:
    """The DoF report is informative (``hf-rpg info``, the model card): numbers only."""
    if dof is None:
        return
    if not isinstance(dof, dict):
        raise RPGCheckpointError(f"{source}: 'dof' must be an object (the DoF report), got {_describe(dof)}")
    for key, value in dof.items():
        if key == "rings":
            ok = isinstance(value, dict) and all(_is_int(v) for v in value.values())
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise RPGCheckpointError(f"{source}: dof[{key!r}] must be a number, got {_describe(value)}")


def _check_ring_storage(storage: Any, manifest: Any, source: str) -> None:
    """``ring_storage`` (absent: every ring stored as is): ring name -> how it is encoded."""
    if storage is None:
        return
    if not isinstance(storage, dict) or not storage:
        raise RPGCheckpointError(
            f"{source}: 'ring_storage' must map ring names to objects such as {{'format': 'int8', 'block_size': 256}}, "
            f"got {_describe(storage)}"
        )
    rings = manifest.get("rings") if isinstance(manifest, dict) else None
    names = {r.get("name") for r in rings if isinstance(r, dict)} if isinstance(rings, list) else set()
    for name, description in storage.items():
        if name not in names:
            raise RPGCheckpointError(
                f"{source}: 'ring_storage' names ring {name!r}, which the manifest does not list "
                f"(rings: {', '.join(sorted(map(str, names))) or 'none'})"
            )
        check_description(description, f"{source}: ring_storage[{name!r}]")


def binding_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of what decides the generated weights: generator, seed, mode and manifest, and
    how the rings are encoded (``ring_storage``) when the checkpoint records it (absent, the
    digest is the one older checkpoints hold).

    ``meta`` is the content of ``rpg_config.json`` (or a dict with at least those fields).
    The JSON is canonical (sorted keys, no spaces), so the digest of the parsed file equals
    the one computed before writing it: floats are written with ``repr`` and read back
    exactly.
    """
    bound = {
        "generator": meta["generator"],
        "seed": meta["config"]["seed"],
        "mode": meta["config"]["mode"],
        "manifest": meta["manifest"],
    }
    if meta.get("ring_storage") is not None:
        bound["ring_storage"] = meta["ring_storage"]
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def model_binding_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of every field of ``rpg_config.json`` that changes the loaded model: the
    generator, the manifest, the config's ``BOUND_CONFIG_FIELDS`` (``seed``, ``mode``,
    ``ring_dtype``, ``other_parameters``, ``modules_to_save``...), and ``ring_storage``,
    ``dtypes`` and ``base_fingerprint`` when present. Canonical JSON as in ``binding_digest``.
    """
    config = {k: meta["config"][k] for k in BOUND_CONFIG_FIELDS if k in meta["config"]}
    bound = {"generator": meta["generator"], "config": config, "manifest": meta["manifest"]}
    for key in ("ring_storage", "dtypes", "base_fingerprint"):
        if meta.get(key) is not None:
            bound[key] = meta[key]
    return _canonical_sha256(bound)


def config_json_digest(content: dict[str, Any]) -> str:
    """SHA-256 of ``config.json``'s parsed content without ``UNBOUND_CONFIG_JSON_KEYS`` (canonical JSON)."""
    return _canonical_sha256({k: v for k, v in content.items() if k not in UNBOUND_CONFIG_JSON_KEYS})


def read_metadata(path: Path) -> dict[str, Any]:
    """Parse and check ``rpg_config.json`` (see ``check_metadata``)."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or UTF-8
        raise RPGCheckpointError(f"{path} is not a readable JSON file: {err}") from None
    return check_metadata(meta, str(path), weights_name=WEIGHTS_NAME)


__all__ = [
    "BINDING_KEY",
    "BOUND_CONFIG_FIELDS",
    "CONFIG_JSON_KEY",
    "FORMAT_VERSION",
    "MODEL_BINDING_KEY",
    "binding_digest",
    "check_metadata",
    "config_json_digest",
    "model_binding_digest",
    "read_metadata",
]
