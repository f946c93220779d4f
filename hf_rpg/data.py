"""Deprecated alias of ``hf_rpg.examples_support.data`` (example plumbing, kept apart from the core).

``import hf_rpg.data`` still works and gives that very module, with a ``FutureWarning``.
"""

import sys
import warnings

from .examples_support import data as _moved

warnings.warn(
    "hf_rpg.data moved to hf_rpg.examples_support.data; the old name will be removed in a future release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
