"""The results file: one JSON line per finished run, keyed so that a killed benchmark resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.library_identity import library_identity
from benchmarks.rpg_update import normalise_record

from .protocol import is_rpg
from .record import _key_lr


def library_version(rec: dict[str, Any]) -> str | None:
    """Which hf_rpg an hf_rpg-variant run used, by the numbers it computes
    (``benchmarks.library_identity``); None for the other methods, which do not use it."""
    if not is_rpg(rec["method"]):
        return None
    return library_identity(rec)


def protocol_of(rec: dict[str, Any]) -> int:
    """The protocol a run followed (``protocol.PROTOCOL_VERSION``; runs before it was recorded: 1)."""
    return int(rec.get("protocol", 1))


def run_key(rec: dict[str, Any]) -> str:
    """A run's identity in the results file; hf_rpg variants also by the hf_rpg that ran them, so
    that runs of another version of the library are neither skipped nor mixed into one row, and
    runs of a later protocol by its number (protocol 1's keys are as they were)."""
    fields = [rec["task"], rec["method"], rec["budget"], rec["config"], _key_lr(rec["lr"]), rec["seed"]]
    version = library_version(rec)
    if version is not None:
        fields.append(version)
    if protocol_of(rec) != 1:
        fields.append(f"protocol {protocol_of(rec)}")
    return json.dumps(fields, sort_keys=True)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (hf_rpg runs normalised by ``benchmarks.rpg_update``)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            out.append(normalise_record(rec, "method" in rec and is_rpg(rec["method"])))
    return out


def append_result(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(rec, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
