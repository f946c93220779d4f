"""Errors raised by hf_rpg. Catch ``RPGError`` to catch them all."""

from __future__ import annotations


class RPGError(Exception):
    """Base class of every error hf_rpg raises on purpose."""


class RPGConfigError(RPGError, ValueError):
    """An ``RPGConfig`` field has a wrong type or value."""


class RPGTargetError(RPGError, ValueError):
    """Target selection failed: nothing matched, or a match cannot be generated."""


class RPGCheckpointError(RPGError, OSError):
    """A checkpoint is missing a file, is malformed, or cannot be written."""


class RPGManifestMismatchError(RPGError, ValueError):
    """A model does not match the layout manifest of the checkpoint being loaded."""


class RPGGeneratorVersionError(RPGError, ValueError):
    """A checkpoint names a generator version this hf_rpg does not implement."""


class RPGStateError(RPGError, RuntimeError):
    """An operation does not fit the current state (RPG applied twice, model unloaded...)."""


class RPGBaseMismatchError(RPGCheckpointError):
    """A delta checkpoint is being loaded onto a base model other than the one it was trained on."""
