"""Helpers for the reliability tests: save a tiny checkpoint, edit its files, snapshot a directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from conftest import make_bert_mlm
from safetensors import safe_open
from safetensors.torch import save_file

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.format.atomic import STAGING_MARK

CONFIG = "rpg_config.json"
WEIGHTS = "rpg_model.safetensors"


def save_tiny(path: Path, build: Callable[[], torch.nn.Module] = make_bert_mlm, **config: Any) -> RPGModel:
    """A tiny model (BERT MLM: tied weights) with RPG applied, saved into ``path``."""
    torch.manual_seed(0)
    model = apply_rpg(build(), RPGConfig(**({"dof": 0.1, "seed": 3} | config)))
    model.save_pretrained(path)
    return model


def copy_checkpoint(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = read_json(path)
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        keys = handle.keys()
        return {k: handle.get_tensor(k) for k in keys}, handle.metadata() or {}


def rewrite_weights(
    directory: Path, edit: Callable[[dict[str, torch.Tensor]], None], *, record_checksum: bool = True
) -> None:
    """Change the tensors of the weights file; keep its metadata; update (or drop) the
    SHA-256 that rpg_config.json records, so that only the tensor checks can catch it."""
    tensors, metadata = read_weights(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS, metadata=metadata)
    data = (directory / WEIGHTS).read_bytes()

    def update(meta: dict[str, Any]) -> None:
        if record_checksum:
            meta["files"][WEIGHTS] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        else:
            meta.pop("files")

    edit_json(directory / CONFIG, update)


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``directory``: relative name -> (size, mtime_ns, sha256)."""
    state = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns, digest)
    return state


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def staging_leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if STAGING_MARK in p.name]
