"""A checkpoint's file names, and where its files are: a local directory or a Hub repo."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import RPGCheckpointError
from ..version import __version__

CONFIG_NAME = "rpg_config.json"
WEIGHTS_NAME = "rpg_model.safetensors"
MODEL_CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
OPTIONAL_FILES = (MODEL_CONFIG_NAME,)
# Only these files are ever uploaded or downloaded: JSON, safetensors and the card.
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, MODEL_CONFIG_NAME, CARD_NAME)


def resolve_checkpoint_files(
    path_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> dict[str, Path]:
    """Local paths of a checkpoint's files, downloading them from the Hub when needed.

    A directory is used as it is; anything else is taken as a Hub repo id and resolved
    through ``huggingface_hub`` (and its cache, so it works offline once downloaded).
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
    files = {}
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        try:
            files[name] = Path(
                hf_hub_download(
                    str(path_or_repo_id),
                    name,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    library_name="hf_rpg",
                    library_version=__version__,
                )
            )
        except HFValidationError:
            raise RPGCheckpointError(
                f"{str(path_or_repo_id)!r} is neither a local checkpoint directory nor a valid Hub repo id"
            ) from None
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise RPGCheckpointError(f"cannot load {str(path_or_repo_id)!r} from the Hub: {err}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
            # checked before EntryNotFoundError: the "not in the cache" error subclasses it
            if name in REQUIRED_FILES:
                raise RPGCheckpointError(
                    f"{str(path_or_repo_id)!r} is not a local directory and its {name} could not be fetched "
                    f"from the Hub or found in the cache: {err}"
                ) from None
        except EntryNotFoundError:
            if name in REQUIRED_FILES:
                raise RPGCheckpointError(
                    f"Hub repo {str(path_or_repo_id)!r} is not an hf_rpg checkpoint: it lacks {name}"
                ) from None
        except (HfHubHTTPError, OSError) as err:
            if name in REQUIRED_FILES:
                raise RPGCheckpointError(
                    f"cannot fetch {name} of {str(path_or_repo_id)!r} from the Hub: {err}"
                ) from None
    return files


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
