"""``apply_rpg``: a plain model made an ``RPGModel`` (its targeted weights generated from rings)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import RPGConfigError, RPGStateError
from ..runtime import base_fingerprint
from ..runtime.parametrize import is_generated
from .adapters import check_adapter_name, rename_default
from .config import RPGConfig
from .initialization import has_meta_tensors, materialize_meta
from .input_checks import check_device, check_every_target_entry_matches, check_not_peft
from .model import RPGModel
from .plan import base_weights, make_plan


def apply_rpg(
    model: nn.Module, config: RPGConfig, *, device: torch.device | str | None = None, adapter_name: str = "default"
) -> RPGModel:
    """Generate the weights ``config`` targets in ``model`` from a small trainable ring.

    ``model`` is changed in place (as PEFT does) and returned wrapped in an ``RPGModel``,
    which is called exactly like it. Works on any ``nn.Module``; for a transformers
    ``PreTrainedModel`` the task head(s) stay ordinary parameters by default.

    A model built on the meta device (``with torch.device("meta"): ...``) works in replace
    mode: its dense weights are never allocated. ``device`` then says where the rings, the
    parameters that are not generated and the buffers are materialised (and initialised
    by the model's own rules); ``gain="auto"`` uses the model's ``initializer_range`` (or
    ``1/sqrt(fan_in)``) there, since there are no values to measure.

    ``adapter_name`` names this first adapter (delta mode: ``add_adapter`` adds others,
    see ``hf_rpg.api.adapters``).

    Example:
        >>> config = RPGConfig(dof=0.1, seed=0)
        >>> model = apply_rpg(base_model, config)
        >>> model.print_trainable_parameters()
    """
    check_not_peft(model)
    check_adapter_name(adapter_name)
    if isinstance(model, RPGModel) or any(is_generated(m) for m in model.modules()):
        raise RPGStateError(
            "RPG is already applied to this model; apply_rpg takes a plain model "
            "(call merge_and_unload() first to start again from the generated weights)"
        )
    if not isinstance(config, RPGConfig):
        raise RPGConfigError(f"config must be an RPGConfig, got {type(config).__name__}")
    # The model keeps its own copy: changing the caller's config afterwards changes nothing.
    config = copy.deepcopy(config)
    config.validate()
    device = check_device(device)
    on_meta = has_meta_tensors(model)
    targets, plan = make_plan(model, config, torch.device(device) if device is not None else None, on_meta)
    check_every_target_entry_matches(model, config)
    device = torch.device(device) if device is not None else None
    fingerprint = base_fingerprint.fingerprint(base_weights(plan, targets)) if plan.delta else None
    wrapped = RPGModel._wrap(model, config, plan, targets, device=device)
    wrapped._base_fingerprint = fingerprint
    rename_default(wrapped, adapter_name)
    if on_meta:
        materialize_meta(wrapped.base_model, wrapped._engine, device)
    elif device is not None:
        wrapped.to(device)
    return wrapped
