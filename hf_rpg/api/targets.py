"""Finding the tensors to generate: PEFT-style matching, heads, ties and parametrizations."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

from ..errors import RPGConfigError, RPGManifestMismatchError, RPGTargetError
from ..format.manifest import Layout
from ..runtime.quantized import (
    additive_layer_supported,
    is_distributed_tensor,
    logical_shape,
    quantization_of,
    weight_std,
)
from .config import DEFAULT_RING, RPGConfig
from .default_targets import ALL_LAYERS, ALL_LINEAR, default_delta_targets

_CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BUILTIN_TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding, *_CONV_TYPES)


def conv1d_type() -> type[nn.Module] | None:
    """transformers' GPT-2 style linear layer ``Conv1D`` (weight stored as ``[in, out]``), or None
    while transformers has not loaded it: a model holding one has imported it, and importing
    transformers here would add a second to ``import hf_rpg``."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def default_target_types() -> tuple[type[nn.Module], ...]:
    """The layer types targeted by default: linear, convolution and embedding layers, and
    transformers' ``Conv1D``."""
    conv1d = conv1d_type()
    return BUILTIN_TARGET_TYPES + ((conv1d,) if conv1d is not None else ())


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def matches(name: str, pattern: str | list[str] | None) -> bool:
    """PEFT's rule: a string is a regex over the full name, a list holds names or suffixes."""
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == item or name.endswith("." + item) for item in pattern)


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers, including the many custom ``*LayerNorm``/``*RMSNorm`` classes."""
    if isinstance(module, _NORM_TYPES):
        return True
    cls_name = type(module).__name__
    return "LayerNorm" in cls_name or "RMSNorm" in cls_name or cls_name.endswith("Norm")


@dataclass(frozen=True)
class Owner:
    """One place that holds a targeted Parameter: ``module._parameters[attr]``."""

    module_name: str
    module: nn.Module = field(compare=False, repr=False)
    attr: str

    @property
    def path(self) -> str:
        """The owner's name for the Parameter, e.g. ``"cls.predictions.decoder.weight"``."""
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr


@dataclass
class FoundTarget:
    """A Parameter to generate, with every owner that uses it (more than one when tied)."""

    name: str
    param: nn.Parameter = field(repr=False)
    owners: list[Owner]
    layer: nn.Module | None = field(default=None, repr=False)
    layer_name: str = ""
    kind: str = "parameter"
    quantization: str | None = None  # e.g. "bitsandbytes nf4 (torch.uint8)"; None for a dense weight

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor to generate (a quantized linear layer's dense shape)."""
        if self.quantization is not None and self.layer is not None and additive_layer_supported(self.layer):
            return logical_shape(self.layer)
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        """Number of generated elements."""
        return math.prod(self.shape)

    @property
    def match_names(self) -> list[str]:
        """Names a ring or exclude pattern may refer to: the layers and the parameter paths."""
        names = [self.layer_name] if self.layer is not None else []
        names += [o.module_name for o in self.owners] + [o.path for o in self.owners]
        return list(dict.fromkeys(names))


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Embedding):
        return "embedding"
    conv1d = conv1d_type()
    if conv1d is not None and isinstance(layer, conv1d):
        return "conv1d_transposed"
    if isinstance(layer, _CONV_TYPES):
        return "conv"
    if isinstance(layer, nn.Linear):
        return "linear"
    return "weight"


def head_modules(model: nn.Module) -> set[int]:
    """ids of the task-head modules: what lies outside ``model.base_model``, plus the
    output embeddings. Their weights stay ordinary parameters unless tied to the backbone."""
    ids: set[int] = set()
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        inside = {id(m) for m in base.modules()}
        ids = {id(m) for m in model.modules() if id(m) not in inside and m is not model}
    get_output = getattr(model, "get_output_embeddings", None)
    if callable(get_output):
        try:
            output = get_output()
        except (NotImplementedError, AttributeError):
            output = None
        if isinstance(output, nn.Module):
            ids.add(id(output))
    return ids


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    get_output = getattr(model, "get_output_embeddings", None)
    if not callable(get_output):
        return None
    try:
        output = get_output()
    except (NotImplementedError, AttributeError):
        return None
    return output if isinstance(output, nn.Module) else None


def trainable_heads(model: nn.Module) -> set[int]:
    """ids of the new-task head modules that delta mode trains by default (PEFT's rule).

    A classification, token-classification or regression head (what lies outside
    ``model.base_model``: ``classifier``, ``score``, ``qa_outputs``...) is new and trains.
    The head of a causal, masked or seq2seq language model (the top-level child holding
    the output embeddings, tied or not, e.g. ``lm_head`` or BERT's ``cls``) does not.
    """
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module) or base is model:
        return set()
    inside = {id(m) for m in base.modules()}
    output = _output_embeddings(model)
    language_model_heads: set[int] = set()
    if output is not None:
        for _, child in model.named_children():
            if child is not base and any(m is output for m in child.modules()):
                language_model_heads |= {id(m) for m in child.modules()}
    return {
        id(m)
        for m in model.modules()
        if m is not model and id(m) not in inside and id(m) not in language_model_heads and m is not output
    }


def _weight_slots(module: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(owner module, attribute) of the raw tensor(s) behind ``module.weight``.

    A weight carrying a torch parametrization (weight_norm in Wav2Vec2, for instance) is
    computed from its originals; the originals with the weight's full size are generated
    and the parametrization keeps working on top of them.
    """
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.ModuleDict) and "weight" in parametrizations:
        plist = parametrizations["weight"]
        weight_numel = module.weight.numel()
        for attr, tensor in plist._parameters.items():
            if tensor is not None and tensor.numel() == weight_numel:
                yield plist, attr
        return
    if isinstance(module._parameters.get("weight"), nn.Parameter):
        yield module, "weight"


def _parameter_owners(model: nn.Module) -> dict[int, list[Owner]]:
    owners: dict[int, list[Owner]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append(Owner(module_name, module, attr))
    return owners


def resolved_target_modules(model: nn.Module, config: RPGConfig) -> str | list[str] | None:
    """``config.target_modules`` with its defaults filled in: ``None`` stands for every
    layer hf_rpg generates (``"all"``), ``"all-linear"`` stays a keyword; in delta mode
    ``None`` means the architecture's entry in ``DELTA_DEFAULT_TARGETS`` when it has one."""
    if config.target_modules is None and config.is_delta:
        return default_delta_targets(model)
    if config.target_modules == ALL_LAYERS:
        return None
    return config.target_modules


def _module_selected(name: str, module: nn.Module, pattern: str | list[str] | None, heads: set[int]) -> bool:
    if is_norm(module):
        return False
    if pattern is None:
        return isinstance(module, default_target_types()) and id(module) not in heads
    if pattern == ALL_LINEAR:
        conv1d = conv1d_type()
        linear = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
        return isinstance(module, linear) and id(module) not in heads
    return matches(name, pattern)


def find_targets(model: nn.Module, config: RPGConfig) -> list[FoundTarget]:
    """The Parameters ``config`` selects in ``model``, in ``named_parameters`` order.

    Raises ``RPGTargetError`` when nothing is selected.
    """
    canonical = {id(p): n for n, p in model.named_parameters()}
    owners = _parameter_owners(model)
    pattern = resolved_target_modules(model, config)
    heads = head_modules(model) if pattern is None or pattern == ALL_LINEAR else set()
    found: dict[int, FoundTarget] = {}

    for name, module in model.named_modules():
        if not _module_selected(name, module, pattern, heads):
            continue
        for owner_module, attr in _weight_slots(module):
            param = owner_module._parameters[attr]
            if id(param) in found:
                continue
            # quantized weights are found too: apply_rpg serves them in delta mode or says why not
            found[id(param)] = FoundTarget(
                name=canonical[id(param)],
                param=param,
                owners=owners[id(param)],
                layer=module,
                layer_name=name,
                kind=_kind(module),
                quantization=quantization_of(param),
            )

    if config.target_parameters is not None:
        for pname, param in model.named_parameters():
            if id(param) in found or not matches(pname, config.target_parameters):
                continue
            if not param.is_floating_point():
                raise RPGTargetError(f"target_parameters matched {pname!r}, which is not floating point")
            found[id(param)] = FoundTarget(name=pname, param=param, owners=owners[id(param)])

    targets = [t for t in found.values() if not _excluded(t, config)]
    if config.layers_to_transform is not None:
        targets = [t for t in targets if in_transformed_layer(t.layer_name or t.name, config)]
    if not targets:
        raise RPGTargetError(_nothing_matched_message(model, config))
    order = {n: i for i, n in enumerate(canonical.values())}
    return sorted(targets, key=lambda t: order[t.name])


def layer_index(name: str, layers_pattern: str | list[str] | None) -> int | None:
    """The layer number of a module name, by PEFT's rule: the first numbered segment
    (``encoder.layer.3.attention`` is 3), or the one after a ``layers_pattern`` name."""
    if layers_pattern is None:
        match = re.match(r".*?\.?[^.]*\.(?P<idx>\d+)(\.|$)", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)(\.|$)", name)
            if match is not None:
                break
    return None if match is None else int(match.group("idx"))


def in_transformed_layer(name: str, config: RPGConfig) -> bool:
    """Whether ``name`` sits in one of ``config.layers_to_transform``."""
    index = layer_index(name, config.layers_pattern)
    wanted = config.layers_to_transform
    return index is not None and (index == wanted if isinstance(wanted, int) else index in wanted)


def _excluded(target: FoundTarget, config: RPGConfig) -> bool:
    return any(matches(n, config.exclude_modules) for n in target.match_names)


def _nothing_matched_message(model: nn.Module, config: RPGConfig) -> str:
    examples = [n for n, m in model.named_modules() if isinstance(m, default_target_types())][:8]
    layers = (
        f", layers_to_transform={config.layers_to_transform!r}, layers_pattern={config.layers_pattern!r}"
        if config.layers_to_transform is not None
        else ""
    )
    return (
        "no module matched: target_modules="
        f"{config.target_modules!r}, target_parameters={config.target_parameters!r}, "
        f"exclude_modules={config.exclude_modules!r}{layers} select nothing in {type(model).__name__}. "
        f"Valid targets are nn.Linear, nn.Conv*, nn.Embedding and transformers Conv1D modules, "
        f"e.g. {examples}, or raw parameters named in target_parameters."
    )


def fans(target_shape: Iterable[int], kind: str) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight, with transformers' Conv1D stored as [in, out]."""
    shape = tuple(target_shape)
    if len(shape) < 2:
        size = shape[0] if shape else 1
        return size, size
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    if kind == "conv1d_transposed":
        fan_in, fan_out = fan_out, fan_in
    return fan_in, fan_out


def targets_from_manifest(model: nn.Module, layout: Layout) -> list[FoundTarget]:
    """Find each manifest target in ``model`` by name; raise on the first mismatch."""
    owners = _parameter_owners(model)
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


def assign_rings(targets: list[FoundTarget], config: RPGConfig) -> list[str]:
    """The ring of each target: the first ``config.rings`` pattern it matches, else default."""
    if config.rings is None:
        return [DEFAULT_RING] * len(targets)
    assigned = []
    for target in targets:
        ring = next(
            (name for name, pattern in config.rings.items() if any(matches(n, pattern) for n in target.match_names)),
            DEFAULT_RING,
        )
        assigned.append(ring)
    for name in config.rings:
        if name not in assigned:
            raise RPGConfigError(f"rings[{name!r}]={config.rings[name]!r} matches no targeted module or parameter")
    return assigned


def stored_parameter_ids(model: nn.Module, targets: list[FoundTarget], config: RPGConfig) -> set[int]:
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


def select(model: nn.Module, config: RPGConfig) -> tuple[list[FoundTarget], list[str], set[int], list[float]]:
    """Everything the config picks in ``model``: the targets (``find_targets``), the ring of
    each (``assign_rings``), the non-generated parameters that train and are stored
    (``stored_parameter_ids``) and the scale of each target (``gain``)."""
    found = find_targets(model, config)
    for target in found:
        check_servable(target, config)
    rings = assign_rings(found, config)
    stored = stored_parameter_ids(model, found, config)
    return found, rings, stored, [gain(target, config, model) for target in found]


def gain(target: FoundTarget, config: RPGConfig, model: nn.Module) -> float:
    """The scale of a generated tensor (see ``RPGConfig.gain``). In delta mode a float gain
    multiplies the ``"auto"`` scales (``build_layout`` applies it), so it is not used here."""
    initializer_range = getattr(getattr(model, "config", None), "initializer_range", None)
    rule = config.gain
    if isinstance(rule, float):
        if not config.is_delta:
            return rule
        rule = "auto"
    fan_in, fan_out = fans(target.shape, target.kind)
    if rule == "kaiming_fan_in":
        return math.sqrt(2.0 / fan_in)
    if rule == "kaiming_fan_out":
        return math.sqrt(2.0 / fan_out)
    std = weight_std(target.layer, target.param)
    if std > 0.0 and math.isfinite(std):
        return std
    if isinstance(initializer_range, (int, float)) and initializer_range > 0:
        return float(initializer_range)
    return 1.0 / math.sqrt(fan_in)


def check_servable(target: FoundTarget, config: RPGConfig) -> None:
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
    if not config.is_delta:
        raise RPGTargetError(
            f"{where} is quantized: mode='replace' cannot generate quantized weights; use mode='delta' (the update "
            "is added to the quantized layer's output) or exclude_modules"
        )
    if target.layer is None or not additive_layer_supported(target.layer) or len(target.owners) != 1:
        raise RPGTargetError(
            f"{where} is quantized and not a plain linear layer with one owner: hf_rpg adds delta updates to "
            "quantized nn.Linear layers only (bitsandbytes Linear4bit / Linear8bitLt, torchao); exclude it"
        )
