"""hf_rpg beside PEFT and transformers' adapter methods: what cannot be routed, and clear
errors instead of the wrong ones.

**Why hf_rpg is not a PEFT method.** PEFT 0.21.2 registers a method with
``peft.utils.register_peft_method(name=..., config_cls=..., model_cls=...)``, which
refuses any name that is not a member of the enum ``peft.utils.PeftType``
(``"Unknown PEFT type ..., please add an entry to peft.utils.peft_types.PeftType"``).
That enum is closed: adding a member means patching PEFT's internals, and every PEFT
entry point (``get_peft_model``, ``PeftConfig.from_pretrained``, ``PeftModel.from_pretrained``)
dispatches on it (``PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]``, ``PEFT_TYPE_TO_TUNER_MAPPING``).
Reusing an existing member would make PEFT load hf_rpg checkpoints as another method.
So ``get_peft_model(model, RPGConfig(...))`` and ``PeftModel.from_pretrained`` cannot work
without patching PEFT, and hf_rpg does not patch it.

**transformers' ``model.load_adapter(path)``** (``PeftAdapterMixin``, transformers 5.24)
looks for PEFT's ``adapter_config.json`` and reads it with ``PeftConfig``, which dispatches
on the same enum, then injects with ``peft.inject_adapter_in_model``: it reaches hf_rpg only
through PEFT, so it cannot load an hf_rpg folder either (on one it says "adapter model
file not found"). Its other adapter methods (``add_adapter``, ``set_adapter``...) first
require PEFT >= 0.22, which the package registry here does not have.

**transformers' ``AutoModel*.from_pretrained`` on an hf_rpg folder** finds ``config.json``,
builds the architecture and then looks for ``model.safetensors``. transformers has no
hook for other weight formats (its only adapter detour is PEFT's ``adapter_config.json``,
again through PEFT), so the error stays transformers' own ("no file named
model.safetensors"); ``RPGModel.from_pretrained`` is the loader.

What hf_rpg does instead: ``RPGModel`` has PEFT's verbs itself (``add_adapter``,
``set_adapter``, ``delete_adapter``, ``load_adapter``, ``active_adapter(s)``,
``disable_adapter``, ``merge_adapter``..., see ``hf_rpg.api.adapters``); the PeftAdapterMixin
methods that ``RPGModel`` would otherwise forward to the wrapped transformers model (and
that fail there with "PEFT is not installed" or a version error) raise ``RPGStateError``
naming the hf_rpg verb.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import RPGConfigError, RPGStateError


class NotAPeftConfigError(RPGConfigError, AttributeError):
    """Raised when PEFT reads ``RPGConfig.peft_type`` (``get_peft_model(model, RPGConfig(...))``).
    An ``AttributeError`` too, so that ``hasattr(config, "peft_type")`` stays False."""


def not_a_peft_config() -> NotAPeftConfigError:
    """The error PEFT's entry points meet when given an ``RPGConfig``."""
    return NotAPeftConfigError(
        "RPGConfig is not a PEFT config: PEFT registers methods only from its closed PeftType enum, so "
        "get_peft_model and PeftModel cannot take hf_rpg without patching PEFT (hf_rpg.peft_integration, "
        "docs/usage.md). Use hf_rpg.apply_rpg(model, config) where you would call get_peft_model, and "
        "RPGModel.from_pretrained(path) where you would call PeftModel.from_pretrained"
    )


# transformers' PeftAdapterMixin methods RPGModel does not define -> what to use instead.
MIXIN_REPLACEMENTS = {
    "disable_adapters": "`with model.disable_adapter(): ...` (the base model alone inside the block)",
    "enable_adapters": "leaving the `with model.disable_adapter():` block",
    "enable_peft_hotswap": (
        "no setup at all: model.load_adapter(path, adapter_name, hotswap=True) and model.set_adapter(name) swap "
        "rings in place, and a compiled model does not recompile"
    ),
    "get_adapter_state_dict": "model.state_dict() (the rings and trained parameters) or model.save_pretrained(path)",
}


def mixin_replacement(name: str, base_model: Any) -> Callable[..., Any] | None:
    """A function raising a clear ``RPGStateError`` when ``name`` is a PeftAdapterMixin method
    of ``base_model`` that hf_rpg replaces; None otherwise."""
    if name not in MIXIN_REPLACEMENTS or not callable(getattr(type(base_model), name, None)):
        return None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RPGStateError(
            f"{name}() is transformers' PEFT method, which does not see hf_rpg's rings: on an RPGModel use "
            f"{MIXIN_REPLACEMENTS[name]}"
        )

    return refuse


__all__ = ["MIXIN_REPLACEMENTS", "NotAPeftConfigError", "mixin_replacement", "not_a_peft_config"]
