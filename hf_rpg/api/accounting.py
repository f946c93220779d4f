"""What an ``RPGModel`` trains and stores, counted: which base parameters checkpoints keep, and
the DoF report (ring DoF, trainable count as PEFT counts it, dense size, compression). A mixin
of ``RPGModel``, kept apart so that the model class stays about serving and saving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from ..format.report import DoFReport

if TYPE_CHECKING:
    from ..runtime.plan import Plan


class AccountingMethods:
    """``stored_parameter_ids``, ``is_stored``, ``base_weight_names``, ``dof_report``."""

    base_model: nn.Module
    rpg_rings: nn.ParameterDict
    plan: Plan

    def stored_parameter_ids(self) -> set[int]:
        """ids of the base model's parameters that checkpoints and ``state_dict()`` store
        (see ``is_stored``); looked up by name, so Parameters swapped by wrappers count."""
        params = self.base_model.named_parameters(remove_duplicate=False)
        if not self.plan.delta:
            return {id(p) for _, p in params}
        bases = self._delta_base_ids()
        return {id(p) for n, p in params if n in self.plan.stored_names and id(p) not in bases}

    def _delta_base_ids(self) -> set[int]:
        if not self.plan.delta:
            return set()
        return {id(owners[0].module._parameters[owners[0].attr]) for owners in self._targets}

    def is_stored(self, param: nn.Parameter, stored_ids: set[int] | None = None) -> bool:
        """Whether a parameter of the base model belongs in checkpoints and ``state_dict()``:
        all of them in replace mode; in delta mode the ones chosen to train when RPG was
        applied (``other_parameters``, ``modules_to_save``): the frozen ones, pretrained
        weights under the update included, come from the base model. ``stored_ids``:
        ``stored_parameter_ids()``, computed once by callers that ask for many parameters."""
        if not self.plan.delta:
            return True
        return id(param) in (self.stored_parameter_ids() if stored_ids is None else stored_ids)

    def base_weight_names(self) -> set[str]:
        """Names (``base_model.``-prefixed) of the base model's parameters that are not
        stored (see ``is_stored``): ``state_dict()`` and checkpoints leave them out."""
        stored = self.stored_parameter_ids()
        return {
            "base_model." + name
            for name, param in self.base_model.named_parameters(remove_duplicate=False)
            if not self.is_stored(param, stored)
        }

    def dof_report(self, configured: bool = False) -> DoFReport:
        """Ring DoF, trainable parameters, dense model size and compression ratio.

        ``configured=True`` counts as trainable what the config trains (the rings and the
        parameters chosen when RPG was applied) whatever ``requires_grad`` says now, e.g. on
        a model loaded frozen for inference; checkpoints and their cards record that count.
        """
        bases = self._delta_base_ids()
        names = self.plan.stored_names
        chosen = {id(p) for n, p in self.base_model.named_parameters(remove_duplicate=False) if n in names}
        stored = self.stored_parameter_ids()
        other_trainable = frozen = others = saved = 0
        for param in self.base_model.parameters():
            n = param.numel()
            if id(param) in bases:
                frozen += n
                continue
            others += n
            if (id(param) in chosen) if configured else param.requires_grad:
                other_trainable += n
            else:
                frozen += n
            if self.is_stored(param, stored):
                saved += n
        rings = {name: ring.numel() for name, ring in self.rpg_rings.items()}
        ring_dof = sum(rings.values())
        trainable_rings = sum(r.numel() for r in self.rpg_rings.values() if configured or r.requires_grad)
        return DoFReport(
            ring_dof=ring_dof,
            rings=rings,
            generated_elements=self.layout.generated_elements,
            other_trainable=other_trainable,
            trainable=trainable_rings + other_trainable,
            frozen=frozen,
            # the targets' own sizes: a low-rank target generates fewer elements than it has
            model_parameters=sum(math.prod(t.shape) for t in self.layout.targets) + others,
            stored_parameters=ring_dof + saved,
            mode="delta" if self.plan.delta else "replace",
        )
