"""The update kind of an hf_rpg benchmark run, always written into its config.

``RPGConfig(update="auto")`` decides the kind from the budget (``rpg-lora-v1`` at small
budgets, full rank above), so the benchmarks write the resolved kind into every hf_rpg plan's
config: a run's config says what ran, and runs of another kind never share its key. Runs made
before ``update`` existed lack the field; the hf_rpg that ran them knew two kinds, ``rank=``
for ``rpg-lowrank-v1`` and full rank otherwise, and ``with_update`` fills in which. Their
``rpg`` (the defaults) runs at a budget where the defaults are now another kind are the
full-rank variant's runs (``rpg-full``): that is what they measured.
"""

from __future__ import annotations

from typing import Any

from hf_rpg import RPGConfig

# the RPGConfig fields that decide the update kind
_DECIDING = ("rank", "update", "rank_pattern")


def resolved_update(budget: int, config: dict[str, Any]) -> str:
    """What ``update="auto"`` (or the given ``update``) resolves to for a delta run at ``budget``."""
    settings = {k: v for k, v in config.items() if k in _DECIDING}
    return RPGConfig(mode="delta", dof=budget, **settings).resolved_update


def with_update(config: dict[str, Any], budget: int) -> dict[str, Any]:
    """A new plan's config with its resolved update kind written in."""
    return {**config, "update": resolved_update(budget, config)}


def normalise_record(rec: dict[str, Any], is_rpg: bool) -> dict[str, Any]:
    """A results record as if written today: an hf_rpg run from before ``update`` gets the kind
    its library ran, and a defaults run that is no longer the defaults' kind becomes ``rpg-full``."""
    config = rec.get("config")
    if not is_rpg or not isinstance(config, dict) or "update" in config:
        return rec
    update = "lowrank" if config.get("rank") is not None else "full"
    rec = {**rec, "config": {**config, "update": update}}
    if rec["method"] == "rpg" and isinstance(rec.get("budget"), int) and resolved_update(rec["budget"], {}) != update:
        rec["method"] = "rpg-full"
    return rec
