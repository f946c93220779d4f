"""A checkpoint's file names, and where its files are: a local directory or a Hub repo."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from ..errors import RPGCheckpointError
from .hub_resolve import HubDownloadOptions, download_checkpoint, looks_local, missing_local_path_message

CONFIG_NAME = "rpg_config.json"
WEIGHTS_NAME = "rpg_model.safetensors"
MODEL_CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
OPTIONAL_FILES = (MODEL_CONFIG_NAME,)
# Only these files are ever uploaded or downloaded: JSON, safetensors and the card.
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, MODEL_CONFIG_NAME, CARD_NAME)


def resolve_checkpoint_files(path_or_repo_id: str | Path, **options: Unpack[HubDownloadOptions]) -> dict[str, Path]:
    """Local paths of a checkpoint's files, downloading them from the Hub when needed.

    A directory is used as it is; a name that looks like a local path fails at once, naming
    it (``hf_rpg.format.hub_resolve.looks_local``); a Hub repo id is fetched with one
    ``snapshot_download`` of the checkpoint's files (through the cache, so it works offline
    once downloaded).
    """
    local = Path(path_or_repo_id)
    if local.is_dir():
        files = {name: local / name for name in REQUIRED_FILES + OPTIONAL_FILES if (local / name).is_file()}
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise RPGCheckpointError(
                f"{str(local)!r} is not an hf_rpg checkpoint: it lacks {', '.join(missing)} "
                f"(a checkpoint holds {', '.join(REQUIRED_FILES)} and usually {MODEL_CONFIG_NAME})"
            )
        return files
    if local.exists():
        raise RPGCheckpointError(f"{str(local)!r} is a file; from_pretrained takes a checkpoint directory or repo id")
    if looks_local(path_or_repo_id):
        raise RPGCheckpointError(missing_local_path_message(path_or_repo_id))
    return download_checkpoint(
        str(path_or_repo_id),
        REQUIRED_FILES + OPTIONAL_FILES,
        REQUIRED_FILES,
        **options,
    )


__all__ = [
    "CARD_NAME",
    "CHECKPOINT_FILES",
    "CONFIG_NAME",
    "MODEL_CONFIG_NAME",
    "OPTIONAL_FILES",
    "REQUIRED_FILES",
    "WEIGHTS_NAME",
    "resolve_checkpoint_files",
]
