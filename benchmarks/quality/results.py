"""The results file: one JSON line per finished run, keyed so that a killed benchmark resumes;
the learning-rate pick and the grid's edge extension."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from benchmarks.library_identity import library_identity

from .protocol import is_rpg
from .record import _key_lr


def library_version(rec: dict[str, Any]) -> str | None:
    """Which hf_rpg an hf_rpg-variant run used, by the numbers it computes
    (``benchmarks.library_identity``); None for the other methods, which do not use it."""
    if not is_rpg(rec["method"]):
        return None
    return library_identity(rec)


def run_key(rec: dict[str, Any]) -> str:
    """A run's identity in the results file; hf_rpg variants also by the hf_rpg that ran them, so
    that runs of another version of the library are neither skipped nor mixed into one row."""
    fields = [rec["task"], rec["method"], rec["budget"], rec["config"], _key_lr(rec["lr"]), rec["seed"]]
    version = library_version(rec)
    return json.dumps(fields if version is None else [*fields, version], sort_keys=True)


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    return out


def append_result(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(rec, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def pick_lr(runs: list[dict[str, Any]]) -> float | None:
    """The lr of the best seed-0 validation accuracy (ties: lower validation loss, then lower lr)."""
    seed0 = [r for r in runs if r["seed"] == 0]
    if not seed0:
        return None
    best = min(seed0, key=lambda r: (-r["val_acc"], r["val_loss"], r["lr"]))
    return best["lr"]


def edge_extension(lrs: list[float], picked: float) -> float | None:
    """One more lr a grid step beyond the edge ``picked`` lies at, else None."""
    if len(lrs) < 2:
        return None
    ordered = sorted(lrs)
    step = ordered[1] / ordered[0]
    if math.isclose(picked, ordered[0]):
        return ordered[0] / step
    if math.isclose(picked, ordered[-1]):
        return ordered[-1] * step
    return None
