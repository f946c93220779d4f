"""hf_rpg: Recurrent Parameter Generators for Hugging Face models.

Every targeted weight of a model is generated from one small trainable vector, the ring,
through a fixed pseudo-random permutation and sign flip (arXiv 2107.07110). The model
keeps its size and architecture; only the ring is trained and stored.

    >>> from hf_rpg import RPGConfig, apply_rpg, RPGModel
    >>> model = apply_rpg(base_model, RPGConfig(dof=0.1, seed=0))
"""

from .api.apply import apply_rpg
from .api.config import RPGConfig
from .api.model import RPGModel
from .api.pruning import prune_ring
from .errors import (
    RPGBaseMismatchError,
    RPGCheckpointError,
    RPGConfigError,
    RPGError,
    RPGGeneratorVersionError,
    RPGManifestMismatchError,
    RPGStateError,
    RPGTargetError,
)
from .format.report import DoFReport
from .spec.generator import GENERATOR_VERSION
from .version import __version__


def __getattr__(name: str):
    # RPGTrainer imports transformers.Trainer (and accelerate): load it only when asked.
    if name == "RPGTrainer":
        from .api.trainer import RPGTrainer

        return RPGTrainer
    raise AttributeError(f"module 'hf_rpg' has no attribute {name!r}")


__all__ = [
    "GENERATOR_VERSION",
    "DoFReport",
    "RPGBaseMismatchError",
    "RPGCheckpointError",
    "RPGConfig",
    "RPGConfigError",
    "RPGError",
    "RPGGeneratorVersionError",
    "RPGManifestMismatchError",
    "RPGModel",
    "RPGStateError",
    "RPGTargetError",
    "RPGTrainer",
    "__version__",
    "apply_rpg",
    "prune_ring",
]
