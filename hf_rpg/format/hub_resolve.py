"""Where a checkpoint's files are: a local directory or a Hub repo id (which one a name is),
and the files from the Hub in one ``snapshot_download`` call.

A name that looks like a local path never goes to the Hub (no retries, no waiting on a
network that is not there): it starts with ``.``, ``/`` or ``~``, holds a path separator
more than once, names no Hub repo (``namespace/name``: every repo created on the Hub has a
namespace, and hf_rpg checkpoints are never legacy namespace-less repos), or part of it
exists on disk (``runs/ckpt`` where ``runs/`` exists).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypedDict, Unpack

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import RPGCheckpointError
from ..version import __version__
from .files import MODEL_CONFIG_NAME, OPTIONAL_FILES, REQUIRED_FILES

# huggingface_hub's rule for a repo id with its namespace (letters, digits, '-', '_', '.').
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def looks_local(name: str | os.PathLike) -> bool:
    """Whether ``name`` is to be read as a local path, never as a Hub repo id."""
    if isinstance(name, os.PathLike):
        return True
    text = str(name)
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if text.startswith((".", "~", *separators)) or sum(text.count(s) for s in separators) > 1:
        return True
    if not _REPO_ID.fullmatch(text) or text.endswith(".") or ".." in text:
        return True
    first = text.split("/", 1)[0]
    return Path(first).exists()


def missing_local_path_message(name: str | os.PathLike) -> str:
    """Why a local-looking name is not a checkpoint: the path, and how far it exists."""
    path = Path(name).expanduser()
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    partial = (
        f" ({str(existing)!r} exists, {path.name!r} does not)" if existing is not None and path.parent != Path() else ""
    )
    return (
        f"{str(name)!r} is not a checkpoint directory: no such path{partial}. It reads as a local path, so the Hub "
        "is not asked (a Hub repo id is 'namespace/name')"
    )


class HubDownloadOptions(TypedDict, total=False):
    """The ``huggingface_hub.snapshot_download`` options a checkpoint download passes on."""

    revision: str | None
    cache_dir: str | Path | None
    token: str | bool | None
    local_files_only: bool
    force_download: bool


def download_checkpoint(
    repo_id: str, filenames: tuple[str, ...], required: tuple[str, ...], **options: Unpack[HubDownloadOptions]
) -> dict[str, Path]:
    """``filenames`` of Hub repo ``repo_id`` (those present), fetched with one
    ``snapshot_download(allow_patterns=filenames)``; raise ``RPGCheckpointError`` naming the
    repo when it cannot be fetched or lacks one of ``required``."""
    unknown = sorted(set(options) - set(HubDownloadOptions.__annotations__))
    if unknown:
        known = ", ".join(HubDownloadOptions.__annotations__)
        raise TypeError(f"unexpected Hub download option(s) {', '.join(unknown)}; known: {known}")
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                **options,
                allow_patterns=list(filenames),
                library_name="hf_rpg",
                library_version=__version__,
            )
        )
    except HFValidationError:
        raise RPGCheckpointError(
            f"{repo_id!r} is neither a local checkpoint directory nor a valid Hub repo id"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise RPGCheckpointError(f"cannot load {repo_id!r} from the Hub: {err}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise RPGCheckpointError(
            f"{repo_id!r} is not a local directory and its files could not be fetched from the Hub or found in "
            f"the cache: {err}"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise RPGCheckpointError(f"cannot fetch {repo_id!r} from the Hub: {err}") from None
    files = {name: folder / name for name in filenames if (folder / name).is_file()}
    missing = [name for name in required if name not in files]
    if missing:
        raise RPGCheckpointError(f"Hub repo {repo_id!r} is not an hf_rpg checkpoint: it lacks {', '.join(missing)}")
    return files


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
    "HubDownloadOptions",
    "download_checkpoint",
    "looks_local",
    "missing_local_path_message",
    "resolve_checkpoint_files",
]
