"""Uploading compact checkpoints to the Hub (``push_to_hub``, ``hf-rpg push``).

Finding a checkpoint's files (a directory or a Hub repo) is ``hf_rpg.format.files``; the model
card is ``hf_rpg.format.card``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from huggingface_hub import HfApi

from ..format.card import is_generated_card, model_card_text
from ..format.files import CARD_NAME, CHECKPOINT_FILES, CONFIG_NAME
from ..format.hub_resolve import resolve_checkpoint_files
from ..format.metadata import read_metadata


class SavesPretrained(Protocol):
    """What ``push_to_hub`` needs of a model: ``save_pretrained`` (an ``RPGModel`` has it)."""

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write the model's checkpoint into ``save_directory``."""


def upload_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card_info: dict[str, Any] | None = None,
) -> Any:
    """Upload the checkpoint files of ``folder`` to ``repo_id``; returns the ``CommitInfo``.

    Only ``rpg_config.json``, ``rpg_model.safetensors``, ``config.json`` and ``README.md``
    are uploaded. A card written by hf_rpg is rendered again for ``repo_id`` (with
    ``card_info``); a hand-written card is uploaded as it is.
    """
    source = Path(folder)
    resolve_checkpoint_files(source)  # fails clearly when it is no checkpoint
    meta = read_metadata(source / CONFIG_NAME)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    with tempfile.TemporaryDirectory(prefix="hf_rpg_push_") as staging:
        for name in CHECKPOINT_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, Path(staging) / name)
        card = Path(staging) / CARD_NAME
        if not card.exists() or is_generated_card(card.read_text(encoding="utf-8", errors="replace")):
            card.write_text(model_card_text(meta, repo_id=repo_id, **(card_info or {})), encoding="utf-8")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message or "Upload hf_rpg checkpoint",
            revision=revision,
            create_pr=create_pr,
            allow_patterns=list(CHECKPOINT_FILES),
            token=token,
        )


def push_to_hub(model: SavesPretrained, repo_id: str, *, card_info: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Save ``model`` as a compact checkpoint and upload it (see ``upload_checkpoint``)."""
    with tempfile.TemporaryDirectory(prefix="hf_rpg_save_") as folder:
        model.save_pretrained(folder, card_info={"repo_id": repo_id, **(card_info or {})})
        return upload_checkpoint(folder, repo_id, card_info=card_info, **kwargs)


__all__ = ["push_to_hub", "upload_checkpoint"]
