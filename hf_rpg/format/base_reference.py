"""The base model a checkpoint records (``base_model.name_or_path``), never as an absolute
local path: a Hub repo id when one is known, else a path relative to the checkpoint
directory (with a warning), which ``from_pretrained`` resolves against that directory.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

# huggingface_hub's cache layout: <cache>/models--<namespace>--<name>/snapshots/<commit>/...
_CACHE_SNAPSHOT = re.compile(r"models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<commit>[0-9a-f]{40})(?:[/\\]|$)")


def _hub_cache_origin(path: Path) -> tuple[str, str] | None:
    """``(repo_id, commit)`` of a folder inside huggingface_hub's cache, else None."""
    match = _CACHE_SNAPSHOT.search(path.as_posix())
    if match is None:
        return None
    return match.group("repo").replace("--", "/"), match.group("commit")


def portable_base_model(info: dict[str, Any], save_directory: Path, *, mode: str) -> dict[str, Any]:
    """``info`` (the ``base_model`` entry of ``rpg_config.json``) with a local path replaced by
    a repo id and revision (a folder of the Hub cache) or a path relative to ``save_directory``.
    A relative record warns in delta mode: elsewhere (on the Hub) loading needs ``base_model=``."""
    name = info.get("name_or_path")
    if not isinstance(name, str) or not Path(name).expanduser().exists():
        return info  # a Hub repo id (or nothing)
    local = Path(name).expanduser().absolute()
    origin = _hub_cache_origin(local)
    if origin is not None:
        repo_id, commit = origin
        return {**info, "name_or_path": repo_id, "revision": info.get("revision") or commit}
    try:
        relative = Path(os.path.relpath(local, Path(save_directory).absolute())).as_posix()
        recorded = relative if relative.startswith(".") else f"./{relative}"
    except ValueError:  # another drive (Windows): no relative path exists
        recorded = local.name
    if mode == "delta":
        warnings.warn(
            f"the base model {name!r} is a local folder: the checkpoint records it as {recorded!r}, relative to "
            "the checkpoint directory (a local path is no base model on the Hub). Set "
            "RPGConfig.base_model_name_or_path to its Hub repo id so that the checkpoint loads anywhere; "
            "otherwise loading it elsewhere needs from_pretrained(path, base_model=<the base model>)",
            UserWarning,
            stacklevel=4,
        )
    return {**info, "name_or_path": recorded}


def resolve_base_reference(name: str | None, checkpoint_directory: Path) -> str | None:
    """A recorded relative path (``./`` or ``../``) read against the checkpoint's directory."""
    if not isinstance(name, str) or not name.startswith(("./", "../")):
        return name
    candidate = (checkpoint_directory / name).resolve()
    return str(candidate) if candidate.exists() else name


__all__ = ["portable_base_model", "resolve_base_reference"]
