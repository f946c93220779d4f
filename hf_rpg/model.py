"""``apply_rpg`` and ``RPGModel``: a model whose targeted weights are generated from rings."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import itertools
import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import base_fingerprint, dtype_record
from .adapters import check_adapter_name, rename_default
from .base_model import build_base_model
from .base_reference import resolve_base_reference
from .checkpoint import (
    RING_PREFIX,
    check_model_binding,
    check_weights_file,
    load_tensors,
    read_metadata,
    save_checkpoint,
    stored_entries,
)
from .config import AUTO_INDEX_CACHE_ELEMENTS, AUTO_RANK, AUTO_RANK_ELEMENTS_PER_DOF, RPGConfig
from .engine import TargetSpec, WeightEngine
from .errors import RPGConfigError, RPGManifestMismatchError, RPGStateError, RPGTargetError
from .files import CONFIG_NAME, MODEL_CONFIG_NAME, WEIGHTS_NAME, resolve_checkpoint_files
from .generator import ring_normal_init
from .hub import push_to_hub
from .input_checks import check_device, check_every_target_entry_matches, check_not_peft
from .lowrank import LOWRANK_KINDS, features
from .manifest import Layout, TargetLayout, assign_rings, build_layout
from .metadata import binding_digest
from .parametrize import GeneratedSource, attach, detach, is_generated, original_class
from .peft_integration import mixin_replacement
from .quantized import additive_layer_supported, dequantize, is_distributed_tensor, quantization_of
from .report import DoFReport
from .targets import FoundTarget, Owner, fans, find_targets, matches, tensor_std, trainable_heads

if TYPE_CHECKING:
    from collections.abc import Iterator


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
    see ``hf_rpg.adapters``).

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
    on_meta = _has_meta_tensors(model)
    if on_meta:
        _check_meta_config(config, device)
    device = torch.device(device) if device is not None else None
    targets = find_targets(model, config)
    check_every_target_entry_matches(model, config)
    for target in targets:
        _check_servable(target, config)
    rings = assign_rings(targets, config)
    gains = [_gain(target, config, model) for target in targets]
    layout = build_layout(targets, rings, gains, config, _ranks(targets, config))
    ring_init = "zeros" if config.mode == "delta" else config.init
    fingerprint = _fingerprint(layout, targets) if config.mode == "delta" else None
    wrapped = RPGModel._wrap(model, config, layout, targets, ring_init, device=device)
    wrapped._base_fingerprint = fingerprint
    rename_default(wrapped, adapter_name)
    if on_meta:
        wrapped._materialize_meta(device)
    elif device is not None:
        wrapped.to(device)
    return wrapped


def _initialise(module: nn.Module, init: Any) -> None:
    if callable(init):
        init(module)
    elif callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def _check_meta_config(config: RPGConfig, device: Any) -> None:
    if device is None:
        raise RPGConfigError(
            "the model is on the meta device: pass device= (where the rings, the parameters that are not "
            "generated and the buffers are materialised), e.g. apply_rpg(model, config, device='cpu')"
        )
    if torch.device(device).type == "meta":
        raise RPGConfigError("device='meta' is not a place to materialise anything; pass e.g. device='cpu'")
    if config.mode != "replace":
        raise RPGConfigError(
            "mode='delta' needs the pretrained weights, and a model on the meta device has none; load it first, "
            "or use mode='replace'"
        )
    if config.init == "project":
        raise RPGConfigError("init='project' fits the model's weights, and a model on the meta device has none")


def _check_servable(target: FoundTarget, config: RPGConfig) -> None:
    """Raise ``RPGTargetError`` for a target hf_rpg cannot generate correctly."""
    if is_distributed_tensor(target.param):
        raise RPGTargetError(
            f"{target.name!r} is a distributed tensor ({type(target.param).__name__}): apply hf_rpg before "
            "fully_shard / tensor parallelism, not after"
        )
    if target.quantization is None:
        if not target.param.is_floating_point():
            raise RPGTargetError(f"{target.name!r} is {target.param.dtype}, not floating point; it cannot be generated")
        return
    where = f"{target.layer_name or target.name!r} ({type(target.layer).__name__}, {target.quantization})"
    if config.mode != "delta":
        raise RPGTargetError(
            f"{where} is quantized: mode='replace' cannot generate quantized weights; use mode='delta' (the update "
            "is added to the quantized layer's output) or exclude_modules"
        )
    if target.layer is None or not additive_layer_supported(target.layer) or len(target.owners) != 1:
        raise RPGTargetError(
            f"{where} is quantized and not a plain linear layer with one owner: hf_rpg adds delta updates to "
            "quantized nn.Linear layers only (bitsandbytes Linear4bit / Linear8bitLt, torchao); exclude it"
        )


def _gain(target: FoundTarget, config: RPGConfig, model: nn.Module) -> float:
    """The scale of a generated tensor (see ``RPGConfig.gain``). In delta mode a float gain
    multiplies the ``"auto"`` scales (``build_layout`` applies it), so it is not used here."""
    rule = config.gain
    if isinstance(rule, float):
        if config.mode != "delta":
            return rule
        rule = "auto"
    fan_in, fan_out = fans(target.shape, target.kind)
    if rule == "kaiming_fan_in":
        return math.sqrt(2.0 / fan_in)
    if rule == "kaiming_fan_out":
        return math.sqrt(2.0 / fan_out)
    values = target.param if target.quantization is None else dequantize(target.layer, target.param)
    std = tensor_std(values) if values.device.type != "meta" else 0.0
    if std > 0.0 and math.isfinite(std):
        return std
    initializer_range = getattr(getattr(model, "config", None), "initializer_range", None)
    if isinstance(initializer_range, (int, float)) and initializer_range > 0:
        return float(initializer_range)
    return 1.0 / math.sqrt(fan_in)


def _lowrank_eligible(target: FoundTarget) -> bool:
    """``config.rank`` applies to the ``weight`` of linear layers (dense or quantized, one owner)."""
    return (
        target.kind in LOWRANK_KINDS
        and len(target.owners) == 1
        and target.owners[0].attr == "weight"
        and len(target.shape) == 2
    )


def _ranks(targets: list[FoundTarget], config: RPGConfig) -> list[int | None]:
    """Each target's low-rank factor rank, or None for a full-rank update (``rank``, with
    ``rank_pattern`` overriding it for the layers its keys match)."""
    ranks = _uniform_ranks(targets, config)
    if not config.rank_pattern:
        return ranks
    for i, target in enumerate(targets):
        key = rank_pattern_key(config.rank_pattern, target.layer_name or target.name)
        if key is not None and _lowrank_eligible(target):
            ranks[i] = config.rank_pattern[key]
    return ranks


def rank_pattern_key(rank_pattern: dict[str, int], name: str) -> str | None:
    """The first ``rank_pattern`` key matching ``name`` or a suffix of it (PEFT's rule)."""
    for key in rank_pattern:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def _uniform_ranks(targets: list[FoundTarget], config: RPGConfig) -> list[int | None]:
    if config.rank is None or config.mode != "delta":  # replace mode generates whole weights
        return [None] * len(targets)
    eligible = [_lowrank_eligible(t) for t in targets]
    rank = config.rank
    if rank == "auto":
        outs = sum(features(t.shape, t.kind)[1] for t, ok in zip(targets, eligible, strict=True) if ok)
        rank = AUTO_RANK
        if isinstance(config.dof, int) and outs:
            rank = max(rank, math.ceil(AUTO_RANK_ELEMENTS_PER_DOF * config.dof / outs))
        return [min(rank, *features(t.shape, t.kind)) if ok else None for t, ok in zip(targets, eligible, strict=True)]
    return [rank if ok else None for ok in eligible]


def _rowwise(target: FoundTarget, config: RPGConfig) -> bool:
    """Untied plain embeddings can generate only the rows a batch looks up."""
    if not config.embedding_rows or len(target.owners) != 1:
        return False
    owner = target.owners[0]
    module = owner.module
    return (
        owner.attr == "weight"
        and isinstance(module, nn.Embedding)
        # only nn.Embedding's own forward: subclasses (scaled, learned positions) run theirs
        and type(module).forward is nn.Embedding.forward
        and target.quantization is None
        and module.max_norm is None
        and not module.sparse
        and not module.scale_grad_by_freq
    )


def _caches_indices(config: RPGConfig, layout: Layout) -> bool:
    if config.index_cache == "auto":
        # low-rank factors are small: their indices are computed on the fly, nothing is kept
        if all(t.rank is not None for t in layout.targets):
            return False
        return layout.generated_elements <= AUTO_INDEX_CACHE_ELEMENTS
    return config.index_cache == "int32"


def _regenerates(config: RPGConfig, layout: Layout) -> bool:
    if config.weights_in_backward == "auto":
        return layout.generated_elements > AUTO_INDEX_CACHE_ELEMENTS
    return config.weights_in_backward == "regenerate"


def _serving(target: FoundTarget, config: RPGConfig, entry: TargetLayout) -> str:
    """How a target is served (see ``hf_rpg.parametrize``)."""
    if config.mode != "delta":
        return "replace"
    if entry.rank is not None:
        return "lowrank"
    return "additive" if target.quantization is not None else "merged"


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
        param_owners = owners[id(param)]
        paths = {o.path for o in param_owners}
        missing_ties = [t for t in entry.tied if t not in paths]
        if missing_ties:
            raise RPGManifestMismatchError(
                f"manifest target {entry.name!r} is tied to {missing_ties[0]!r}, but in the model that is "
                f"not the same parameter (ties in the model: {sorted(paths - {entry.name})})"
            )
        owner_module = param_owners[0].module
        layer = owner_module if attr == "weight" else None
        target = FoundTarget(entry.name, param, param_owners, layer, module_name, entry.kind, quantization_of(param))
        if target.shape != entry.shape:
            raise RPGManifestMismatchError(
                f"manifest target {entry.name!r} has shape {list(entry.shape)} but the model's parameter has "
                f"shape {list(target.shape)}"
            )
        found.append(target)
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


def _check_keywords(method: str, kwargs: dict[str, Any], function: Any, skip: int) -> None:
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


def _replace_with_dense_linear(model: nn.Module, owner: Owner, delta: torch.Tensor) -> None:
    """Merge a quantized linear layer's update: a dense ``nn.Linear`` with the dequantized
    base plus ``ΔW`` takes its place."""
    layer = owner.module
    base = dequantize(layer, layer._parameters[owner.attr])
    dtype = delta.dtype if layer.bias is None else layer.bias.dtype
    dense = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=base.device, dtype=dtype
    )
    with torch.no_grad():
        dense.weight.copy_(base.to(dtype) + delta.to(device=base.device, dtype=dtype))
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    parent_name, _, child = owner.module_name.rpartition(".")
    model.get_submodule(parent_name).register_module(child, dense)


def _keeping_dtype(fn: Any) -> Any:
    """``fn`` of ``nn.Module._apply`` (``.to()``, ``.half()``...) without its dtype change:
    the device move (and anything else) only."""

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        probe = fn(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
        if probe.dtype == tensor.dtype:
            return fn(tensor)
        return tensor.to(device=probe.device)

    return apply


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
        device: torch.device | None = None,
    ) -> RPGModel:
        """Attach ``layout`` to ``model``. ``ring_init``: random, project, zeros or empty."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.base_model = model
        self.rpg_config = config
        self.layout = layout
        self._targets = [list(t.owners) for t in targets]
        self._unloaded = False
        delta = config.mode == "delta"
        rowwise = {i for i, t in enumerate(targets) if _rowwise(t, config) and layout.targets[i].rank is None}
        serving = [_serving(t, config, layout.targets[i]) for i, t in enumerate(targets)]
        specs = [
            TargetSpec(
                dtype=t.param.dtype if t.quantization is None else torch.float32,
                device=device if device is not None and t.param.is_meta else t.param.device,
                serving=serving[i],
                base_slot=(t.owners[0].module, t.owners[0].attr) if delta else None,
            )
            for i, t in enumerate(targets)
        ]
        engine = WeightEngine(
            self,
            layout,
            config.seed,
            specs=specs,
            rowwise=rowwise,
            cache_indices=_caches_indices(config, layout),
            regenerate=_regenerates(config, layout),
            inference_cache=config.inference_cache,
        )
        self._engine = engine  # index caches are built on first use
        ring_device = device if device is not None else targets[0].param.device
        self.rpg_rings = nn.ParameterDict(
            {name: nn.Parameter(self._initial_ring(name, ring_init, targets).to(ring_device)) for name in layout.rings}
        )
        stored = self._stored_parameter_ids(model, targets, config)
        # by name: wrappers such as FSDP replace the Parameter objects, never their names
        self._stored_names = {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in stored}
        for tid, target in enumerate(targets):
            target.param.requires_grad_(False)
            source = GeneratedSource(engine, tid, tid in rowwise, serving[tid])
            for owner in target.owners:
                attach(owner.module, owner.attr, source)
        self._set_trainability(config, stored)
        self.__class__ = _model_class_for(original_class(model))
        self.register_state_dict_post_hook(_drop_base_weights)
        self.register_load_state_dict_post_hook(_allow_missing_base_weights)
        return self

    @staticmethod
    def _stored_parameter_ids(model: nn.Module, targets: list[FoundTarget], config: RPGConfig) -> set[int]:
        """ids of the non-generated parameters that train and that checkpoints store.

        Replace mode stores every non-generated parameter. Delta mode stores what trains:
        everything but the frozen bases with ``other_parameters="train"``, else the task
        heads (``"head"``) or nothing (``"freeze"``), plus ``modules_to_save``.
        """
        bases = {id(t.param) for t in targets}
        policy = config.resolved_other_parameters
        chosen: set[int] = set()
        if config.modules_to_save is not None:
            for name, module in model.named_modules():
                if matches(name, config.modules_to_save):
                    chosen |= {id(p) for p in module.parameters()}
            if not chosen:
                raise RPGConfigError(
                    f"modules_to_save={config.modules_to_save!r} matches no module with parameters in "
                    f"{type(model).__name__}"
                )
        elif policy == "head":
            heads = trainable_heads(model)
            chosen = {id(p) for m in model.modules() if id(m) in heads for p in m.parameters(recurse=False)}
        if policy == "train":
            chosen |= {id(p) for p in model.parameters()}
        return chosen - bases

    def _set_trainability(self, config: RPGConfig, trained: set[int]) -> None:
        policy = config.resolved_other_parameters
        bases = self._delta_base_ids()
        for param in self.base_model.parameters():
            if id(param) in bases:
                continue
            if id(param) in trained:
                if policy != "train" or config.modules_to_save is not None:
                    param.requires_grad_(True)
            else:
                param.requires_grad_(False)

    def _materialize_meta(self, device: torch.device) -> None:
        """Give every parameter and buffer still on the meta device memory on ``device`` and
        initialise it by the model's own rules (transformers' ``_init_weights``, else the
        modules' ``reset_parameters``). Generated attributes read as meta placeholders
        meanwhile, so nothing dense is generated or allocated."""
        base = self.base_model
        touched = []
        made: dict[int, torch.Tensor] = {}  # a tensor shared by several modules (tied) stays shared
        for module in base.modules():
            fresh = False
            for slots, wrap in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in list(slots.items()):
                    if tensor is None or not tensor.is_meta:
                        continue
                    if id(tensor) not in made:
                        empty = torch.empty_like(tensor, device=device)
                        made[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if wrap else empty
                    slots[name] = made[id(tensor)]
                    fresh = True
            if fresh or is_generated(module):
                touched.append(module)
        init = getattr(base, "_init_weights", None)
        with torch.no_grad():
            for module in touched:
                try:
                    with self._engine.placeholders():
                        _initialise(module, init)
                except (RuntimeError, NotImplementedError):
                    # a computation mixing meta and real tensors (a weight_norm parametrization):
                    # this module's placeholders are real (and freed right after)
                    with self._engine.placeholders(device):
                        _initialise(module, init)

    def _initial_ring(self, ring_name: str, ring_init: str, targets: list[FoundTarget]) -> torch.Tensor:
        ring = self.layout.rings[ring_name]
        ids = self.layout.ring_targets(ring_name)
        dtype = self.rpg_config.torch_ring_dtype
        if ring_init == "empty":
            values = torch.empty(ring.size, dtype=dtype)
        elif ring_init == "zeros":
            values = torch.zeros(ring.size, dtype=dtype)
        elif ring_init == "random":
            values = ring_normal_init(ring.size, self._engine.keys[ring_name]) * ring.scale
        elif ring_init == "project":
            values = self._projected_ring(ring_name, ids, targets)
        else:  # pragma: no cover - internal
            raise ValueError(ring_init)
        return values.to(dtype=dtype)

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

    # ------------------------------------------------------------------ calling

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model with its generated weights (same inputs and outputs).

        ``adapter_names`` (delta mode, inference): one adapter name per sample, as PEFT's
        LoRA takes it (``"__base__"``: the base model alone); see ``hf_rpg.adapters``.
        """
        if adapter_names is not None:
            from .adapters import forward_mixed

            return forward_mixed(self, adapter_names, args, kwargs)
        return self._forward_active(*args, **kwargs)

    def _forward_active(self, *args: Any, **kwargs: Any) -> Any:
        self._check_usable()
        self._engine.begin_forward()
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "_modules", "_parameters", "_buffers"}:
                raise
            base = self.base_model
            # transformers' PEFT mixin methods do not see the rings: point to hf_rpg's verbs instead
            refuse = mixin_replacement(name, base)
            return refuse if refuse is not None else getattr(base, name)

    def _check_usable(self) -> None:
        if self._unloaded:
            raise RPGStateError("this RPGModel was unloaded; use the model merge_and_unload()/unload() returned")

    @contextlib.contextmanager
    def disable_rpg(self) -> Iterator[None]:
        """Delta mode: run the untouched base model inside this block (PEFT's
        ``disable_adapter``): a reference model for DPO-style training, or an A/B check.

        Example:
            >>> with model.disable_rpg():
            ...     reference_logits = model(**batch).logits
        """
        self._check_usable()
        if self.rpg_config.mode != "delta":
            raise RPGStateError("disable_rpg() needs mode='delta': in replace mode there is no base model to run")
        if self.merged:
            raise RPGStateError(
                "the update is merged into the base weights: call unmerge_adapter() before disable_rpg()"
            )
        engine = self._engine
        previous = engine.update_enabled
        engine.update_enabled = False
        engine._drop_inference_weights()
        try:
            yield
        finally:
            engine.update_enabled = previous
            engine._drop_inference_weights()

    disable_adapter = disable_rpg

    # ------------------------------------------------------------------ named adapters (hf_rpg.adapters)

    @property
    def active_adapter(self) -> str:
        """The name of the adapter the model runs (``"default"`` unless named otherwise)."""
        from .adapters import active_adapter

        return active_adapter(self)

    @property
    def active_adapters(self) -> list[str]:
        """``[active_adapter]``: one adapter runs at a time (mixed batches aside)."""
        return [self.active_adapter]

    @property
    def adapters(self) -> dict[str, RPGConfig]:
        """Adapter name -> its ``RPGConfig`` (PEFT's ``peft_config``)."""
        from .adapters import state

        return dict(state(self).configs)

    def add_adapter(self, adapter_name: str, config: RPGConfig) -> None:
        """Delta mode: a new adapter (PEFT's verb) on the same frozen base, its ring at zero,
        not activated. Its config must give the same layout as the model's (targets, DoF,
        seed...). See ``hf_rpg.adapters``."""
        from .adapters import add_adapter

        add_adapter(self, adapter_name, config)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` active: its ring values are copied into the model's ring
        Parameters in place (no new Parameters: a compiled model does not recompile)."""
        from .adapters import set_adapter

        set_adapter(self, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter (deleting the active one activates another)."""
        from .adapters import delete_adapter

        delete_adapter(self, adapter_name)

    def load_adapter(
        self, path_or_repo_id: str | Path, adapter_name: str, *, hotswap: bool = False, **hub_kwargs: Any
    ) -> None:
        """Load a delta checkpoint of this base as adapter ``adapter_name`` (PEFT's verb);
        ``hotswap=True`` replaces an existing adapter's values in place. ``hub_kwargs``:
        ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``."""
        from .adapters import load_adapter

        load_adapter(self, path_or_repo_id, adapter_name, hotswap=hotswap, **hub_kwargs)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter whose update is exactly ``Σ wᵢ ΔWᵢ`` of the given adapters (PEFT's
        ``combination_type="linear"``); its trained heads are those of ``adapters[0]``."""
        from .adapters import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name)

    @property
    def merged(self) -> bool:
        """Whether ``merge_adapter()`` wrote the update into the base weights (PEFT's ``merged``)."""
        return self.__dict__.get("_merged_rings") is not None

    def merge_adapter(self) -> None:
        """Delta mode: add the update into the frozen base weights in place, so that forwards
        cost what the base model's do (PEFT's ``merge_adapter``); ``unmerge_adapter()`` takes
        it out again. Unlike ``merge_and_unload`` the model stays an RPGModel. See
        ``hf_rpg.merging``."""
        from .merging import merge_adapter

        merge_adapter(self)

    def unmerge_adapter(self) -> None:
        """Undo ``merge_adapter()`` (the base weights come back up to floating-point rounding)."""
        from .merging import unmerge_adapter

        unmerge_adapter(self)

    def _apply(self, fn: Any, recurse: bool = True) -> RPGModel:
        # .to() / .half() / .cuda(): generated weights follow like the Parameters they replace;
        # the rings move but keep config.ring_dtype (float32 by default, whatever the model's
        # dtype, so that small optimizer updates are kept): RPGConfig(ring_dtype=...) sets it.
        rings = self._modules.get("rpg_rings")
        if rings is not None:
            self._modules["rpg_rings"] = None
            try:
                result = super()._apply(fn, recurse)
            finally:
                self._modules["rpg_rings"] = rings
            rings._apply(_keeping_dtype(fn), recurse)
        else:
            result = super()._apply(fn, recurse)
        engine = self.__dict__.get("_engine")
        if engine is not None:
            specs = []
            for spec in engine.specs:
                probe = fn(torch.empty(0, dtype=spec.dtype, device=spec.device))
                specs.append(dataclasses.replace(spec, dtype=probe.dtype, device=probe.device))
            engine.specs = specs
            engine._drop_inference_weights()
        return result

    def __reduce_ex__(self, protocol: int) -> Any:
        raise RPGStateError(
            "an RPGModel cannot be pickled (torch.save(model)): use model.save_pretrained(path) (compact, loads "
            "with RPGModel.from_pretrained), torch.save(model.state_dict()), or pickle the plain model that "
            "merge_and_unload() returns"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RPGModel:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def get_base_model(self) -> nn.Module:
        """The wrapped model (its targeted weights are generated while RPG is applied)."""
        return self.base_model

    def clear_cache(self) -> None:
        """Free the weights kept for inference (they are regenerated on next use)."""
        self._engine.clear_cache()

    def generated_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every generated weight, as the model currently sees it:
        the weight itself (replace mode, delta mode on a dense full-rank target), or the
        dense update ``ΔW`` added to the layer's output (quantized bases, low-rank
        targets; the low-rank update made dense here, in the layout of the layer's weight)."""
        for tid, entry in enumerate(self.layout.targets):
            tensor = self._engine.tensor(tid)
            # inside disable_rpg() the tensor is the base weight itself, not a low-rank factor
            if self._engine.specs[tid].serving == "lowrank" and self._engine.update_enabled:
                tensor = self._engine.lowrank_delta(tid, tensor)
            yield entry.name, tensor

    # ------------------------------------------------------------------ accounting

    def stored_parameter_ids(self) -> set[int]:
        """ids of the base model's parameters that checkpoints and ``state_dict()`` store
        (see ``is_stored``); looked up by name, so Parameters swapped by wrappers count."""
        params = self.base_model.named_parameters(remove_duplicate=False)
        if self.rpg_config.mode != "delta":
            return {id(p) for _, p in params}
        bases = self._delta_base_ids()
        return {id(p) for n, p in params if n in self._stored_names and id(p) not in bases}

    def _delta_base_ids(self) -> set[int]:
        if self.rpg_config.mode != "delta":
            return set()
        return {id(owners[0].module._parameters[owners[0].attr]) for owners in self._targets}

    def is_stored(self, param: nn.Parameter, stored_ids: set[int] | None = None) -> bool:
        """Whether a parameter of the base model belongs in checkpoints and ``state_dict()``:
        all of them in replace mode; in delta mode the ones chosen to train when RPG was
        applied (``other_parameters``, ``modules_to_save``): the frozen ones, pretrained
        weights under the update included, come from the base model. ``stored_ids``:
        ``stored_parameter_ids()``, computed once by callers that ask for many parameters."""
        if self.rpg_config.mode != "delta":
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
        chosen = {id(p) for n, p in self.base_model.named_parameters(remove_duplicate=False) if n in self._stored_names}
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
            mode=self.rpg_config.mode,
        )

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` as PEFT reports them (``DoFReport.all_parameters``: in delta
        mode the base plus the ring, in replace mode the dense model the ring stands for)."""
        report = self.dof_report()
        return report.trainable, report.all_parameters

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line (``trainable params: … || all params: … || trainable%: …``),
        then the ring's DoF and what a checkpoint stores."""
        print(self.dof_report())

    # ------------------------------------------------------------------ saving / loading

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write a compact checkpoint (ring(s), non-generated parameters, manifest, card).

        ``ring_storage``: ``None`` (the ring as is), ``"float32"``, ``"float16"``, ``"int8"``
        (per-block scales) or ``"sparse"`` (for pruned rings). See
        ``hf_rpg.checkpoint.save_checkpoint`` for the keyword arguments.
        """
        self._check_usable()
        _check_keywords("save_pretrained", kwargs, save_checkpoint, skip=2)
        adapters = self.__dict__.get("_adapter_state")
        if adapters is not None and len(adapters.configs) > 1:
            from .adapters import save_adapters

            # PEFT's layout: "default" at the root, the others in subfolders named after them
            save_adapters(self, save_directory, self._save_active, **kwargs)
            return
        self._save_active(save_directory, **kwargs)

    def _save_active(self, save_directory: str | Path, **kwargs: Any) -> None:
        if kwargs.get("state_dict") is None:
            gathered = self._gathered_for_saving()
            if gathered is not None:
                kwargs["state_dict"] = gathered
        save_checkpoint(self, save_directory, **kwargs)

    def _gathered_for_saving(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP2 (or any DTensor sharding) the full tensors to save, gathered on every
        rank (a collective: call ``save_pretrained`` on every rank; only the main one writes)."""
        live = {RING_PREFIX + name: ring for name, ring in self.rpg_rings.items()}
        live.update({"base_model." + name: tensor for name, tensor in stored_entries(self).items()})
        if not any(is_distributed_tensor(t) for t in live.values()):
            return None
        return {key: t.full_tensor() if is_distributed_tensor(t) else t for key, t in live.items()}

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, base_model: nn.Module | None = None, **kwargs: Any
    ) -> RPGModel:
        """Load a checkpoint written by ``save_pretrained``, from a directory or the Hub.

        Replace mode rebuilds the architecture from ``config.json`` and needs no base
        weights. Delta mode loads the base model the checkpoint records, or uses
        ``base_model``. See ``hf_rpg.model.load_checkpoint`` for the keyword arguments.
        """
        _check_keywords("from_pretrained", kwargs, load_checkpoint, skip=2)
        return load_checkpoint(path_or_repo_id, base_model=base_model, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the compact checkpoint and a generated model card to the Hub.

        See ``hf_rpg.hub.push_to_hub`` for the keyword arguments (``private``, ``token``,
        ``commit_message``, ``revision``, ``create_pr``, ``card_info``).
        """
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
        engine = self._engine
        if self.merged:  # the base weights already hold the update
            return self._unload({tid: engine._base(tid) for tid in range(len(self._targets))})
        with torch.no_grad():
            weights = engine.generate(list(range(len(self.layout.targets))))
            params: dict[int, nn.Parameter] = {}
            dense_layers: dict[int, tuple[Owner, torch.Tensor]] = {}  # quantized bases: become nn.Linear
            for tid, weight in weights.items():
                owner = self._targets[tid][0]
                serving = engine.specs[tid].serving
                if serving == "lowrank":
                    weight = engine.lowrank_delta(tid, weight)
                    base = engine._base(tid)
                    if quantization_of(base) is None:
                        params[tid] = nn.Parameter((base.to(weight.dtype) + weight).to(base.dtype))
                        continue
                    serving = "additive"
                if serving == "additive":
                    dense_layers[tid] = (owner, weight)
                    params[tid] = owner.module._parameters[owner.attr]
                else:
                    params[tid] = nn.Parameter(weight.detach().clone())
        model = self._unload(params)
        for owner, delta in dense_layers.values():
            _replace_with_dense_linear(model, owner, delta)
        return model

    def unload(self) -> nn.Module:
        """Delta mode: return the base model with its original (frozen) weights, dropping
        the update. Replace mode has no original weights: use ``merge_and_unload``."""
        self._check_usable()
        if self.rpg_config.mode != "delta":
            raise RPGStateError("unload() needs mode='delta'; in replace mode use merge_and_unload()")
        if self.merged:
            self.unmerge_adapter()
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


# ---------------------------------------------------------------------------- loading


def _fingerprint(layout: Layout, targets: list[FoundTarget]) -> dict[str, Any]:
    """``base_fingerprint`` of the targets' base weights, taken before wrapping (and before any
    sharding: saving under FSDP then needs no gather of the base)."""
    return base_fingerprint.fingerprint(
        (e.name, e.shape, t.param, t.layer) for e, t in zip(layout.targets, targets, strict=True)
    )


def _check_base(
    meta: dict[str, Any], layout: Layout, targets: list[FoundTarget], source: Path, check_base: bool
) -> None:
    """Delta mode: the base's weights must be the ones the update was trained on."""
    if not isinstance(check_base, bool):
        raise RPGConfigError(f"check_base must be True or False, got {check_base!r}")
    recorded = meta.get("base_fingerprint")
    if recorded is None:
        warnings.warn(
            f"{source} records no base_fingerprint (saved before hf_rpg bound delta checkpoints to their "
            "base): the base model's weights are not checked; make sure it is the one the update was "
            "trained on",
            UserWarning,
            stacklevel=4,
        )
        return
    if check_base:
        bases = [(e.name, e.shape, t.param, t.layer) for e, t in zip(layout.targets, targets, strict=True)]
        base_fingerprint.check_base(recorded, bases, str(source))


def load_checkpoint(
    path_or_repo_id: str | Path,
    base_model: nn.Module | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    device: torch.device | str | None = None,
    check_base: bool = True,
    is_trainable: bool = False,
    adapter_name: str = "default",
) -> RPGModel:
    """Load an hf_rpg checkpoint from a local directory or a Hub repo id.

    Args:
        path_or_repo_id: A directory written by ``save_pretrained``, or ``"user/repo"``.
        base_model: The model to apply the checkpoint to. Needed when the architecture
            cannot be rebuilt from ``config.json`` (a custom ``nn.Module``), or to reuse
            an already loaded base in delta mode.
        revision, cache_dir, token, local_files_only, force_download: Hub options, as in
            ``huggingface_hub.snapshot_download``.
        device: Where a replace-mode model rebuilt from ``config.json`` is materialised
            (``"cpu"`` by default). It is built on the meta device and only what the
            checkpoint stores (rings, parameters that are not generated, buffers) is
            allocated: the dense generated weights never are.
        check_base: Delta mode: refuse a base whose weights differ from the ones the update
            was trained on (``base_fingerprint``, ``RPGBaseMismatchError``). ``False`` loads
            the update onto this base anyway (a base quantized differently, say).
        is_trainable: As in PEFT: ``False`` (the default) loads for inference, every
            parameter frozen (rings included); ``True`` makes the ring(s) and the parameters
            the config trains trainable again, to resume training.
        adapter_name: The name of the loaded adapter (delta mode: ``load_adapter`` adds
            others; ``hf_rpg.adapters``).

    Returns:
        An ``RPGModel`` in eval mode. Its outputs are bit-identical to the saved model's.
    """
    if not isinstance(is_trainable, bool):
        raise RPGConfigError(f"is_trainable must be True or False, got {is_trainable!r}")
    check_adapter_name(adapter_name)
    if base_model is not None and (
        isinstance(base_model, RPGModel) or any(is_generated(m) for m in base_model.modules())
    ):
        raise RPGStateError(
            "RPG is already applied to base_model; from_pretrained takes a plain model "
            "(call merge_and_unload() on it first, or pass a freshly loaded base model)"
        )
    device = check_device(device)
    hub_kwargs = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
    files = resolve_checkpoint_files(path_or_repo_id, revision=revision, force_download=force_download, **hub_kwargs)
    meta = read_metadata(files[CONFIG_NAME])
    try:
        config = RPGConfig.from_dict(meta["config"])
    except RPGConfigError as err:
        raise RPGConfigError(f"{files[CONFIG_NAME]}: 'config': {err}") from None
    layout = Layout.from_dict(meta["manifest"])
    check_weights_file(files[WEIGHTS_NAME], meta)
    check_model_binding(files[WEIGHTS_NAME], meta, files.get(MODEL_CONFIG_NAME) if base_model is None else None)
    if base_model is None:
        base = meta.get("base_model")
        if isinstance(base, dict):  # a path recorded relative to the checkpoint directory
            base["name_or_path"] = resolve_base_reference(base.get("name_or_path"), files[CONFIG_NAME].parent)
        base_model = build_base_model(meta, config, files.get(MODEL_CONFIG_NAME), hub_kwargs)
        if meta.get("dtypes") is not None:  # whatever built the model that was saved
            dtype_record.restore(base_model, meta["dtypes"])
    targets = targets_from_manifest(base_model, layout)
    if config.mode == "delta":
        _check_base(meta, layout, targets, files[CONFIG_NAME], check_base)
    trainable = [(p, p.requires_grad) for p in base_model.parameters()]
    on_meta = _has_meta_tensors(base_model)
    target_device = torch.device(device if device is not None else "cpu") if on_meta else None
    fingerprint = _fingerprint(layout, targets) if config.mode == "delta" else None
    model = RPGModel._wrap(base_model, config, layout, targets, "empty", device=target_device)
    model._base_fingerprint = fingerprint
    try:
        if on_meta:
            model._materialize_meta(target_device)
        load_tensors(model, files[WEIGHTS_NAME], binding=binding_digest(meta), ring_storage=meta.get("ring_storage"))
    except BaseException:
        # A base_model the caller passed is theirs: give it back as it was, not half-wrapped.
        model._unload({tid: target.param for tid, target in enumerate(targets)})
        for param, flag in trainable:
            param.requires_grad_(flag)
        raise
    if device is not None and not on_meta:
        model.to(device)
    rename_default(model, adapter_name)
    if not is_trainable:
        # PEFT's inference load: nothing trains until the caller asks for it
        for param in model.parameters():
            param.requires_grad_(False)
    model.eval()
    return model
