"""The base model a checkpoint names, rebuilt: from ``config.json`` (replace mode) or from
the pretrained reference it records (delta mode). ``hf_rpg.api.model.load_checkpoint`` puts the
checkpoint's ring(s) on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import RPGCheckpointError
from ..format.files import CONFIG_NAME, MODEL_CONFIG_NAME
from .config import RPGConfig


def _model_class(meta: dict[str, Any]) -> type:
    import transformers

    info = meta.get("base_model") or {}
    name, module = info.get("class"), info.get("module") or ""
    cls = getattr(transformers, name, None) if isinstance(name, str) and module.startswith("transformers") else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise RPGCheckpointError(
            f"cannot rebuild the base model class {module}.{name} named in {CONFIG_NAME} (only transformers "
            "PreTrainedModel classes are rebuilt); pass base_model=<an instance of the architecture> to from_pretrained"
        )
    return cls


def _read_model_config(cls: type, path: Path) -> Any:
    try:
        return cls.config_class.from_json_file(str(path))
    except Exception as err:  # a malformed config.json fails anywhere inside transformers
        raise RPGCheckpointError(f"cannot build {cls.__name__} from {path}: {err!r}") from err


def build_base_model(
    meta: dict[str, Any], config: RPGConfig, model_config_path: Path | None, hub_kwargs: dict[str, Any]
) -> nn.Module:
    """The base model a checkpoint names, without its ring: built from ``config.json`` on the
    meta device in replace mode (no base weights), loaded from the recorded reference and
    revision in delta mode.

    ``hub_kwargs`` (``cache_dir``, ``token``, ``local_files_only``) go to ``from_pretrained``.
    Only transformers ``PreTrainedModel`` classes are rebuilt, from safetensors, without remote code.
    """
    cls = _model_class(meta)
    if config.is_delta:
        info = meta.get("base_model") or {}
        reference = info.get("name_or_path")
        if not reference:
            raise RPGCheckpointError(
                "this delta checkpoint records no base model (base_model.name_or_path is empty); "
                "pass base_model=<the pretrained model> to from_pretrained"
            )
        revision = info.get("revision")
        # The saved config.json, not the base's: a fine-tuned head may differ from the base's
        # (num_labels, id2label).
        extra = {"config": _read_model_config(cls, model_config_path)} if model_config_path is not None else {}
        try:
            # safetensors only and no remote code: a checkpoint never makes hf_rpg unpickle or run code.
            return cls.from_pretrained(
                reference, revision=revision, use_safetensors=True, trust_remote_code=False, **extra, **hub_kwargs
            )
        except Exception as err:  # transformers and huggingface_hub raise many types (OSError, ValueError...)
            raise RPGCheckpointError(
                f"cannot load the base model {reference!r} (revision {revision!r}) that this delta checkpoint "
                f"records, from safetensors weights: {err}. Pass base_model=<the pretrained model> to from_pretrained"
            ) from err
    if model_config_path is None:
        raise RPGCheckpointError(f"the checkpoint has no {MODEL_CONFIG_NAME}; pass base_model=<the architecture>")
    import torch
    from transformers.initialization import no_init_weights

    model_config = _read_model_config(cls, model_config_path)
    try:
        # On the meta device: the generated weights are never allocated; what the checkpoint
        # stores is materialised by the loader (and the rest initialised there).
        with no_init_weights(), torch.device("meta"):
            model = cls._from_config(model_config)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    except Exception as err:  # a malformed config.json fails anywhere inside transformers
        raise RPGCheckpointError(f"cannot build {cls.__name__} from {model_config_path}: {err!r}") from err
    return model


__all__ = ["build_base_model"]
