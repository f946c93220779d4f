"""The class an ``RPGModel`` takes: one subclass per base class, with the base model's
``forward`` signature, its state-dict hooks, and the keyword checks of its methods."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from torch import nn

_MODEL_CLASSES: dict[type, type] = {}


def model_class_for(rpg_class: type, base_class: type) -> type:
    """``RPG<BaseClass>``: an RPGModel subclass whose ``forward`` has the base model's
    signature. transformers' Trainer reads the class's forward signature to find the label
    names and to drop batch columns the model does not take."""
    cls = _MODEL_CLASSES.get(base_class)
    if cls is not None:
        return cls

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return rpg_class.forward(self, *args, **kwargs)

    # a forward without a readable signature keeps *args/**kwargs
    with contextlib.suppress(TypeError, ValueError):
        forward.__signature__ = inspect.signature(base_class.forward)
    forward.__doc__ = rpg_class.forward.__doc__
    cls = type(
        f"RPG{base_class.__name__}",
        (rpg_class,),
        {"forward": forward, "__module__": rpg_class.__module__, "__doc__": rpg_class.__doc__},
    )
    _MODEL_CLASSES[base_class] = cls
    return cls


def drop_base_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the state of an RPG model is what its checkpoint stores."""
    for name in module.base_weight_names():
        state_dict.pop(prefix + name, None)


def allow_missing_base_weights(module: nn.Module, incompatible_keys: Any) -> None:
    """load_state_dict post-hook: frozen base weights are not expected in a state dict."""
    excluded = module.base_weight_names()
    missing = incompatible_keys.missing_keys
    # keys carry the prefix of wherever this model sits in the module being loaded (DDP's "module.")
    missing[:] = [key for key in missing if not any(key == n or key.endswith("." + n) for n in excluded)]


def check_keywords(method: str, kwargs: dict[str, Any], function: Any, skip: int) -> None:
    """Unknown keyword arguments are errors, naming the valid ones."""
    valid = list(inspect.signature(function).parameters)[skip:]
    for name, value in kwargs.items():
        if name not in valid:
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise TypeError(
                f"{method}() got an unexpected keyword argument {name!r} (= {shown}); valid keyword arguments: "
                f"{', '.join(valid)}"
            )
