"""``apply_rpg`` and ``RPGModel``: a model whose targeted weights are generated from rings."""

from __future__ import annotations

import contextlib
import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import RPGConfig
from .engine import WeightEngine
from .errors import RPGConfigError, RPGManifestMismatchError, RPGStateError
from .generator import ring_normal_init
from .layout import Layout, assign_rings, build_layout
from .parametrize import GeneratedSource, attach, detach, is_generated, original_class
from .report import DoFReport
from .targets import FoundTarget, Owner, fans, find_targets, head_modules, tensor_std

if TYPE_CHECKING:
    from collections.abc import Iterator


def apply_rpg(model: nn.Module, config: RPGConfig) -> RPGModel:
    """Generate the weights ``config`` targets in ``model`` from a small trainable ring.

    ``model`` is changed in place (as PEFT does) and returned wrapped in an ``RPGModel``,
    which is called exactly like it. Works on any ``nn.Module``; for a transformers
    ``PreTrainedModel`` the task head(s) stay ordinary parameters by default.

    Example:
        >>> config = RPGConfig(dof=0.1, seed=0)
        >>> model = apply_rpg(base_model, config)
        >>> model.print_trainable_parameters()
    """
    if isinstance(model, RPGModel) or any(is_generated(m) for m in model.modules()):
        raise RPGStateError(
            "RPG is already applied to this model; apply_rpg takes a plain model "
            "(call merge_and_unload() first to start again from the generated weights)"
        )
    if not isinstance(config, RPGConfig):
        raise RPGConfigError(f"config must be an RPGConfig, got {type(config).__name__}")
    targets = find_targets(model, config)
    rings = assign_rings(targets, config)
    gains = [_gain(target, config, model) for target in targets]
    layout = build_layout(targets, rings, gains, config)
    ring_init = "zeros" if config.mode == "delta" else config.init
    return RPGModel._wrap(model, config, layout, targets, ring_init)


def _gain(target: FoundTarget, config: RPGConfig, model: nn.Module) -> float:
    """The scale of a generated tensor (see ``RPGConfig.gain``)."""
    if isinstance(config.gain, float):
        return config.gain
    fan_in, fan_out = fans(target.shape, target.kind)
    if config.gain == "kaiming_fan_in":
        return math.sqrt(2.0 / fan_in)
    if config.gain == "kaiming_fan_out":
        return math.sqrt(2.0 / fan_out)
    std = tensor_std(target.param)
    if std > 0.0 and math.isfinite(std):
        return std
    initializer_range = getattr(getattr(model, "config", None), "initializer_range", None)
    if isinstance(initializer_range, (int, float)) and initializer_range > 0:
        return float(initializer_range)
    return 1.0 / math.sqrt(fan_in)


def _rowwise(target: FoundTarget, config: RPGConfig) -> bool:
    """Untied plain embeddings can generate only the rows a batch looks up."""
    if not config.embedding_rows or len(target.owners) != 1:
        return False
    owner = target.owners[0]
    module = owner.module
    return (
        owner.attr == "weight"
        and isinstance(module, nn.Embedding)
        and module.max_norm is None
        and not module.sparse
        and not module.scale_grad_by_freq
    )


def targets_from_manifest(model: nn.Module, layout: Layout) -> list[FoundTarget]:
    """Find each manifest target in ``model`` by name; raise on the first mismatch."""
    owners: dict[int, list[Owner]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append(Owner(module_name, module, attr))
    found = []
    for entry in layout.targets:
        module_name, _, attr = entry.name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise RPGManifestMismatchError(
                f"the model ({type(model).__name__}) has no module {module_name!r} for manifest target {entry.name!r}"
            ) from None
        param = module._parameters.get(attr)
        if not isinstance(param, nn.Parameter):
            raise RPGManifestMismatchError(
                f"the model ({type(model).__name__}) has no parameter {entry.name!r} named in the manifest"
            )
        if tuple(param.shape) != entry.shape:
            raise RPGManifestMismatchError(
                f"manifest target {entry.name!r} has shape {list(entry.shape)} but the model's parameter has "
                f"shape {list(param.shape)}"
            )
        param_owners = owners[id(param)]
        paths = {o.path for o in param_owners}
        missing_ties = [t for t in entry.tied if t not in paths]
        if missing_ties:
            raise RPGManifestMismatchError(
                f"manifest target {entry.name!r} is tied to {missing_ties[0]!r}, but in the model that is "
                f"not the same parameter (ties in the model: {sorted(paths - {entry.name})})"
            )
        owner_module = param_owners[0].module
        kind = entry.kind
        layer = owner_module if attr == "weight" else None
        found.append(FoundTarget(entry.name, param, param_owners, layer, module_name, kind))
    return found


_MODEL_CLASSES: dict[type, type] = {}


def _model_class_for(base_class: type) -> type:
    """``RPG<BaseClass>``: an RPGModel subclass whose ``forward`` has the base model's
    signature. transformers' Trainer reads the class's forward signature to find the label
    names and to drop batch columns the model does not take."""
    cls = _MODEL_CLASSES.get(base_class)
    if cls is not None:
        return cls

    def forward(self: RPGModel, *args: Any, **kwargs: Any) -> Any:
        return RPGModel.forward(self, *args, **kwargs)

    # a forward without a readable signature keeps *args/**kwargs
    with contextlib.suppress(TypeError, ValueError):
        forward.__signature__ = inspect.signature(base_class.forward)
    forward.__doc__ = RPGModel.forward.__doc__
    cls = type(
        f"RPG{base_class.__name__}",
        (RPGModel,),
        {"forward": forward, "__module__": RPGModel.__module__, "__doc__": RPGModel.__doc__},
    )
    _MODEL_CLASSES[base_class] = cls
    return cls


def _drop_base_weights(module: RPGModel, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the state of an RPG model is what its checkpoint stores."""
    for name in module.base_weight_names():
        state_dict.pop(prefix + name, None)


def _allow_missing_base_weights(module: RPGModel, incompatible_keys: Any) -> None:
    """load_state_dict post-hook: frozen base weights are not expected in a state dict."""
    excluded = module.base_weight_names()
    missing = incompatible_keys.missing_keys
    # keys carry the prefix of wherever this model sits in the module being loaded (DDP's "module.")
    missing[:] = [key for key in missing if not any(key == n or key.endswith("." + n) for n in excluded)]


class RPGModel(nn.Module):
    """A model whose targeted weights are generated from trainable ring(s).

    Call it exactly like the wrapped model. Attributes it does not define are looked up on
    the wrapped model (``config``, ``generate``, ``gradient_checkpointing_enable`` ...).

    ``state_dict()`` holds what a checkpoint stores: the rings, the non-generated
    parameters (in delta mode only the trainable ones) and the buffers. The frozen base
    weights of delta mode are left out (they come from the base model), which keeps the
    checkpoints of training frameworks (Trainer, ``accelerator.save_state``) compact.

    Attributes:
        base_model: The wrapped model, changed in place.
        rpg_config: The ``RPGConfig`` used.
        rpg_rings: One trainable Parameter per ring, registered here and nowhere else.
        layout: The layout manifest (targets, offsets, gains, rings).
    """

    base_model: nn.Module
    rpg_rings: nn.ParameterDict

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create an RPGModel with apply_rpg(model, config) or RPGModel.from_pretrained(path)")

    @classmethod
    def _wrap(
        cls,
        model: nn.Module,
        config: RPGConfig,
        layout: Layout,
        targets: list[FoundTarget],
        ring_init: str,
    ) -> RPGModel:
        """Attach ``layout`` to ``model``. ``ring_init``: random, project, zeros or empty."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.base_model = model
        self.rpg_config = config
        self.layout = layout
        self._targets = [list(t.owners) for t in targets]
        self._unloaded = False
        rowwise = {i for i, t in enumerate(targets) if _rowwise(t, config)}
        delta_bases = {i: (t.owners[0].module, t.owners[0].attr) for i, t in enumerate(targets)}
        engine = WeightEngine(
            self,
            layout,
            config.seed,
            delta_bases=delta_bases if config.mode == "delta" else None,
            rowwise=rowwise,
            cache_indices=config.index_cache == "int32",
            inference_cache=config.inference_cache,
        )
        self._engine = engine
        engine.build_index_caches(targets[0].param.device)
        self.rpg_rings = nn.ParameterDict(
            {name: nn.Parameter(self._initial_ring(name, ring_init, targets)) for name in layout.rings}
        )
        for tid, target in enumerate(targets):
            target.param.requires_grad_(False)
            source = GeneratedSource(engine, tid, tid in rowwise)
            for owner in target.owners:
                attach(owner.module, owner.attr, source, keep_parameter=config.mode == "delta")
        self._set_other_trainability(config.resolved_other_parameters)
        self.__class__ = _model_class_for(original_class(model))
        self.register_state_dict_post_hook(_drop_base_weights)
        self.register_load_state_dict_post_hook(_allow_missing_base_weights)
        return self

    def _initial_ring(self, ring_name: str, ring_init: str, targets: list[FoundTarget]) -> torch.Tensor:
        ring = self.layout.rings[ring_name]
        ids = self.layout.ring_targets(ring_name)
        reference = targets[ids[0]].param
        if ring_init == "empty":
            values = torch.empty(ring.size, dtype=reference.dtype)
        elif ring_init == "zeros":
            values = torch.zeros(ring.size, dtype=reference.dtype)
        elif ring_init == "random":
            values = ring_normal_init(ring.size, self._engine.keys[ring_name]) * ring.scale
        elif ring_init == "project":
            values = self._projected_ring(ring_name, ids, targets)
        else:  # pragma: no cover - internal
            raise ValueError(ring_init)
        return values.to(device=reference.device, dtype=reference.dtype)

    def _projected_ring(self, ring_name: str, ids: list[int], targets: list[FoundTarget]) -> torch.Tensor:
        """Least-squares ring: each entry is the gain-weighted mean of the weights it feeds,
        ``theta_i = sum(g * s * W) / sum(g**2)`` over its uses."""
        n = self.layout.rings[ring_name].size
        numerator = torch.zeros(n, dtype=torch.float64)
        denominator = torch.zeros(n, dtype=torch.float64)
        for tid in ids:
            entry = self.layout.targets[tid]
            index = self._engine.indices(ring_name, entry, targets[tid].param.device).cpu().to(torch.int64)
            negative = index >= n
            entry_index = index - n * negative
            sign = 1.0 - 2.0 * negative.to(torch.float64)
            values = targets[tid].param.detach().cpu().to(torch.float64).flatten()
            numerator.index_add_(0, entry_index, sign * values, alpha=entry.gain)
            denominator.index_add_(0, entry_index, torch.full_like(values, entry.gain**2))
        return numerator / denominator

    def _set_other_trainability(self, policy: str) -> None:
        if policy == "train":
            return
        heads = head_modules(self.base_model) if policy == "head" else set()
        head_params = {id(p) for m in self.base_model.modules() if id(m) in heads for p in m.parameters(recurse=False)}
        bases = self._delta_base_ids()
        for param in self.base_model.parameters():
            if id(param) not in bases:
                param.requires_grad_(id(param) in head_params)

    # ------------------------------------------------------------------ calling

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model with its generated weights (same inputs and outputs)."""
        self._check_usable()
        with self._engine.forward_pass():
            return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "_modules", "_parameters", "_buffers"}:
                raise
            return getattr(self.base_model, name)

    def _check_usable(self) -> None:
        if self._unloaded:
            raise RPGStateError("this RPGModel was unloaded; use the model merge_and_unload()/unload() returned")

    def get_base_model(self) -> nn.Module:
        """The wrapped model (its targeted weights are generated while RPG is applied)."""
        return self.base_model

    def clear_cache(self) -> None:
        """Free the weights kept for inference (they are regenerated on next use)."""
        self._engine.clear_cache()

    def generated_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every generated weight, as the model currently sees it."""
        for tid, entry in enumerate(self.layout.targets):
            yield entry.name, self._engine.tensor(tid)

    # ------------------------------------------------------------------ accounting

    def _delta_base_ids(self) -> set[int]:
        if self.rpg_config.mode != "delta":
            return set()
        return {id(owners[0].module._parameters[owners[0].attr]) for owners in self._targets}

    def is_stored(self, param: nn.Parameter, delta_bases: set[int] | None = None) -> bool:
        """Whether a parameter of the base model belongs in checkpoints and ``state_dict()``:
        all of them in replace mode; in delta mode the trainable ones only (the frozen ones,
        pretrained weights under the update included, come from the base model)."""
        if self.rpg_config.mode != "delta":
            return True
        bases = self._delta_base_ids() if delta_bases is None else delta_bases
        return param.requires_grad and id(param) not in bases

    def base_weight_names(self) -> set[str]:
        """Names (``base_model.``-prefixed) of the base model's parameters that are not
        stored (see ``is_stored``): ``state_dict()`` and checkpoints leave them out."""
        bases = self._delta_base_ids()
        return {
            "base_model." + name
            for name, param in self.base_model.named_parameters(remove_duplicate=False)
            if not self.is_stored(param, bases)
        }

    def dof_report(self) -> DoFReport:
        """Ring DoF, trainable parameters, dense model size and compression ratio."""
        bases = self._delta_base_ids()
        other_trainable = frozen = others = saved = 0
        for param in self.base_model.parameters():
            n = param.numel()
            if id(param) in bases:
                frozen += n
                continue
            others += n
            if param.requires_grad:
                other_trainable += n
            else:
                frozen += n
            if self.is_stored(param, bases):
                saved += n
        rings = {name: ring.numel() for name, ring in self.rpg_rings.items()}
        ring_dof = sum(rings.values())
        trainable_rings = sum(r.numel() for r in self.rpg_rings.values() if r.requires_grad)
        return DoFReport(
            ring_dof=ring_dof,
            rings=rings,
            generated_elements=self.layout.generated_elements,
            other_trainable=other_trainable,
            trainable=trainable_rings + other_trainable,
            frozen=frozen,
            model_parameters=self.layout.generated_elements + others,
            stored_parameters=ring_dof + saved,
        )

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` as PEFT reports them; "all" is the dense-equivalent size."""
        report = self.dof_report()
        return report.trainable, report.model_parameters

    def print_trainable_parameters(self) -> None:
        """Print ring DoF, trainable parameters and the compression ratio."""
        print(self.dof_report())

    # ------------------------------------------------------------------ saving / loading

    def save_pretrained(self, save_directory: str | Path, *, ring_storage: str | None = None, **kwargs: Any) -> None:
        """Write a compact checkpoint (ring(s), non-generated parameters, manifest, card).

        ``ring_storage``: ``None`` (the ring as is), ``"float32"``, ``"float16"``, ``"int8"``
        (per-block scales) or ``"sparse"`` (for pruned rings). See
        ``hf_rpg.checkpoint.save_checkpoint`` for the other keyword arguments.
        """
        from .checkpoint import save_checkpoint

        self._check_usable()
        save_checkpoint(self, save_directory, ring_storage=ring_storage, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, base_model: nn.Module | None = None, **kwargs: Any
    ) -> RPGModel:
        """Load a checkpoint written by ``save_pretrained``, from a directory or the Hub.

        Replace mode rebuilds the architecture from ``config.json`` and needs no base
        weights. Delta mode loads the base model the checkpoint records, or uses
        ``base_model``. See ``hf_rpg.checkpoint.load_checkpoint`` for the keyword arguments.
        """
        from .checkpoint import load_checkpoint

        return load_checkpoint(path_or_repo_id, base_model=base_model, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the compact checkpoint and a generated model card to the Hub.

        See ``hf_rpg.hub.push_to_hub`` for the keyword arguments (``private``, ``token``,
        ``commit_message``, ``revision``, ``create_pr``, ``card_info``).
        """
        from .hub import push_to_hub

        self._check_usable()
        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ export

    def merge_and_unload(self) -> nn.Module:
        """Return the wrapped model with the generated weights as ordinary Parameters.

        The result is the base model's own class (a plain ``PreTrainedModel`` for
        transformers models); tied weights stay one shared Parameter. This RPGModel
        is unusable afterwards.
        """
        self._check_usable()
        with torch.no_grad():
            weights = self._engine.generate(list(range(len(self.layout.targets))))
        return self._unload({tid: nn.Parameter(w.detach().clone()) for tid, w in weights.items()})

    def unload(self) -> nn.Module:
        """Delta mode: return the base model with its original (frozen) weights, dropping
        the update. Replace mode has no original weights: use ``merge_and_unload``."""
        self._check_usable()
        if self.rpg_config.mode != "delta":
            raise RPGStateError("unload() needs mode='delta'; in replace mode use merge_and_unload()")
        bases = {tid: owners[0].module._parameters[owners[0].attr] for tid, owners in enumerate(self._targets)}
        return self._unload(bases)

    def _unload(self, params: dict[int, nn.Parameter]) -> nn.Module:
        for tid, owners in enumerate(self._targets):
            for owner in owners:
                detach(owner.module, owner.attr, params[tid])
        self._engine.enabled = False
        self._engine.clear_cache()
        self._unloaded = True
        return self.base_model

    def extra_repr(self) -> str:
        """Mode, ring sizes and generated elements, shown by ``print(model)``."""
        report = self.dof_report()
        return f"mode={self.rpg_config.mode!r}, rings={report.rings}, generated={report.generated_elements:,}"
