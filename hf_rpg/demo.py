"""Deprecated alias of ``hf_rpg.examples_support.demo`` (example plumbing, kept apart from the core).

``import hf_rpg.demo`` still works and gives that very module, with a ``FutureWarning``.
"""

import sys
import warnings

from .examples_support import demo as _moved

warnings.warn(
    "hf_rpg.demo moved to hf_rpg.examples_support.demo; the old name will be removed in a future release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
