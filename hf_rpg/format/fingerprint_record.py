"""How ``rpg_config.json`` records a delta checkpoint's ``base_fingerprint`` (the method, the
sample count, one 16-hex-digit digest per manifest target) and its validation. Computing and
checking a fingerprint against a model's weights is ``hf_rpg.runtime.base_fingerprint``."""

from __future__ import annotations

import re
from typing import Any

from ..describe import describe
from ..errors import RPGCheckpointError

METHOD = "rpg-base-sample-v1"
SAMPLES = 64
_DIGEST = re.compile(r"[0-9a-f]{16}")


def check_description(value: Any, source: str, target_count: int) -> None:
    """``rpg_config.json``'s ``base_fingerprint`` is well formed (``RPGCheckpointError`` if not)."""
    if not isinstance(value, dict) or set(value) != {"method", "samples", "targets"}:
        raise RPGCheckpointError(
            f"{source}: 'base_fingerprint' must be an object with method, samples and targets, got {describe(value)}"
        )
    if value["method"] != METHOD or value["samples"] != SAMPLES:
        raise RPGCheckpointError(
            f"{source}: base_fingerprint method {describe(value['method'])} with {describe(value['samples'])} "
            f"samples is not known to this hf_rpg ({METHOD!r}, {SAMPLES}); upgrade hf_rpg to load it"
        )
    digests = value["targets"]
    if not (
        isinstance(digests, list)
        and len(digests) == target_count
        and all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests)
    ):
        raise RPGCheckpointError(
            f"{source}: base_fingerprint.targets must list 16 hex digits for each of the {target_count} manifest "
            f"targets, got {describe(digests)}"
        )
