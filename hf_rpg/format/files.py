"""A checkpoint's file names (``hub_resolve`` finds the files: a local directory or a Hub repo)."""

from __future__ import annotations

CONFIG_NAME = "rpg_config.json"
WEIGHTS_NAME = "rpg_model.safetensors"
MODEL_CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
OPTIONAL_FILES = (MODEL_CONFIG_NAME,)
# Only these files are ever uploaded or downloaded: JSON, safetensors and the card.
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, MODEL_CONFIG_NAME, CARD_NAME)


__all__ = [
    "CARD_NAME",
    "CHECKPOINT_FILES",
    "CONFIG_NAME",
    "MODEL_CONFIG_NAME",
    "OPTIONAL_FILES",
    "REQUIRED_FILES",
    "WEIGHTS_NAME",
]
