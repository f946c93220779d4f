"""Named adapters (delta mode): several rings on one frozen base, with PEFT's verbs.

Every adapter of one ``RPGModel`` shares its layout: the same targets, ring sizes, gains,
ranks and seed (the config fields that decide them must be equal); adapters differ in
their ring values and in the parameters they train besides the rings (task heads,
``modules_to_save``). That is what makes the verbs cheap and exact:

- the active adapter's values live in the model's own Parameters (``rpg_rings`` and the
  trained parameters); the others are kept as plain tensors beside them;
- ``set_adapter`` copies values in place: the Parameter objects never change, so an
  optimizer, FSDP or a ``torch.compile``'d model keeps working without recompiling
  (hot-swapping);
- the update is linear in the ring (``ΔW = gain · G(ring)``, and ``F P`` with ``F``
  linear in the ring for ``rpg-lowrank-v1`` targets), so a weighted combination of adapters is
  the adapter whose ring is the weighted sum of their rings: exactly ``Σ wᵢ ΔWᵢ``
  (``rpg-lora-v1``'s ``F (P + A)`` is not linear in the ring: refused there);
- a mixed batch (``adapter_names=`` per sample) runs each adapter's samples as one
  sub-batch and puts the outputs back in order.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import RPGBaseMismatchError, RPGConfigError, RPGManifestMismatchError, RPGStateError
from .config import RING_NAME_PATTERN, RPGConfig
from .merging import require_delta

if TYPE_CHECKING:  # the reader's result type; reading files is checkpoint_reading's job
    from .checkpoint_reading import AdapterCheckpoint

# Functions here take an RPGModel (hf_rpg.api.model imports this module, so it is not imported back).
RPGModel = nn.Module

DEFAULT_ADAPTER = "default"
# adapter_names entry meaning "no ring update" in a mixed batch (PEFT's keyword). The trained
# heads are those of the active adapter: hf_rpg keeps no copy of a head's values before training.
BASE_ONLY = "__base__"
# Config fields that only change how weights are computed, never which: adapters may differ there.
_RUNTIME_FIELDS = frozenset(
    {"base_model_name_or_path", "revision", "index_cache", "weights_in_backward", "inference_cache"}
)


@dataclasses.dataclass
class AdapterState:
    """The named adapters of one model: configs, the active name, the inactive values."""

    configs: dict[str, RPGConfig]
    active: str
    inactive: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)


def state(model: RPGModel) -> AdapterState:
    """The model's adapter bookkeeping (one adapter, ``"default"``, until others are added)."""
    found = model.__dict__.get("_adapter_state")
    if found is None:
        found = AdapterState(configs={DEFAULT_ADAPTER: model.rpg_config}, active=DEFAULT_ADAPTER)
        model.__dict__["_adapter_state"] = found
    return found


def check_adapter_name(name: Any, parameter: str = "adapter_name") -> str:
    """``name`` when it can name an adapter (and its checkpoint subfolder); else ``RPGConfigError``."""
    if not isinstance(name, str) or not RING_NAME_PATTERN.fullmatch(name):
        raise RPGConfigError(
            f"{parameter} must be 1-64 characters of letters, digits, '_' or '-' (it names a checkpoint subfolder), "
            f"got {name!r}"
        )
    return name


def rename_default(model: RPGModel, adapter_name: str) -> None:
    """``apply_rpg(..., adapter_name=...)`` / ``from_pretrained(..., adapter_name=...)``."""
    check_adapter_name(adapter_name)
    if adapter_name != DEFAULT_ADAPTER:
        model.__dict__["_adapter_state"] = AdapterState(configs={adapter_name: model.rpg_config}, active=adapter_name)


def _live(model: RPGModel) -> dict[str, torch.Tensor]:
    """Name -> live tensor of what an adapter owns: the rings and the stored parameters."""
    from .checkpoint import RING_PREFIX, stored_entries

    live = {RING_PREFIX + name: ring for name, ring in model.rpg_rings.items()}
    live.update({"base_model." + name: tensor for name, tensor in stored_entries(model).items()})
    return live


def _check_delta(model: RPGModel, verb: str) -> None:
    why = ": named adapters are updates of one frozen base, and in replace mode the ring is the whole model"
    require_delta(model, verb, why)


def _check_known(model: RPGModel, name: str, verb: str) -> None:
    names = list(state(model).configs)
    if name not in names:
        raise RPGConfigError(f"{verb}(): no adapter named {name!r}; this model's adapters: {names}")


def _check_same_layout(model: RPGModel, name: str, config: RPGConfig) -> None:
    reference = model.rpg_config
    for field in dataclasses.fields(RPGConfig):
        if field.name.startswith("_") or field.name in _RUNTIME_FIELDS:
            continue
        mine, theirs = getattr(config, field.name), getattr(reference, field.name)
        if mine != theirs:
            raise RPGConfigError(
                f"adapter {name!r} has {field.name}={mine!r}, this model's adapters {field.name}={theirs!r}: the "
                "adapters of one RPG model share one layout (targets, ring sizes, gains, ranks, seed) and differ "
                "in their ring values and trained heads only; apply RPG with this config to another copy of the base"
            )


def active_adapter(model: RPGModel) -> str:
    """The name of the adapter ``model`` runs."""
    return state(model).active


def set_adapter(model: RPGModel, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter: its values are copied into the live Parameters."""
    _check_delta(model, "set_adapter")
    _check_known(model, adapter_name, "set_adapter")
    adapters = state(model)
    if adapter_name == adapters.active:
        return
    if model.merged:
        raise RPGStateError(
            "set_adapter(): the active adapter is merged into the base weights; unmerge_adapter() first"
        )
    live = _live(model)
    incoming = adapters.inactive.pop(adapter_name)
    with torch.no_grad():
        adapters.inactive[adapters.active] = {key: tensor.detach().clone() for key, tensor in live.items()}
        for key, tensor in live.items():
            tensor.copy_(incoming[key])
    adapters.active = adapter_name
    model.rpg_config = adapters.configs[adapter_name]
    model._engine.drop_inference_weights()


def add_adapter(model: RPGModel, adapter_name: str, config: RPGConfig) -> None:
    """A new adapter with ``config`` (same layout as the others), its ring at zero (its
    update starts at zero) and its trained parameters copied from the active adapter.
    As in PEFT it is not made active."""
    _check_delta(model, "add_adapter")
    check_adapter_name(adapter_name)
    adapters = state(model)
    if adapter_name in adapters.configs:
        raise RPGConfigError(f"add_adapter(): an adapter named {adapter_name!r} exists; delete_adapter() it first")
    if not isinstance(config, RPGConfig):
        raise RPGConfigError(f"config must be an RPGConfig, got {type(config).__name__}")
    config = copy.deepcopy(config)
    config.validate()
    _check_same_layout(model, adapter_name, config)
    from .checkpoint import RING_PREFIX

    with torch.no_grad():
        values = {
            key: torch.zeros_like(tensor) if key.startswith(RING_PREFIX) else tensor.detach().clone()
            for key, tensor in _live(model).items()
        }
    adapters.configs[adapter_name] = config
    adapters.inactive[adapter_name] = values


def delete_adapter(model: RPGModel, adapter_name: str) -> None:
    """Remove an adapter; deleting the active one activates the first remaining one."""
    _check_delta(model, "delete_adapter")
    _check_known(model, adapter_name, "delete_adapter")
    adapters = state(model)
    if len(adapters.configs) == 1:
        raise RPGStateError(
            f"delete_adapter(): {adapter_name!r} is this model's only adapter; unload() gives the base model back"
        )
    if adapter_name == adapters.active:
        set_adapter(model, next(name for name in adapters.configs if name != adapter_name))
    del adapters.configs[adapter_name]
    del adapters.inactive[adapter_name]


def add_weighted_adapter(model: RPGModel, adapters: Sequence[str], weights: Sequence[float], adapter_name: str) -> None:
    """A new adapter whose update is ``Σ wᵢ ΔWᵢ`` exactly: its ring is the weighted sum of the
    rings (the update is linear in the ring). Its trained parameters (heads) are those of
    ``adapters[0]``. Refused for ``rpg-lora-v1`` targets, whose update is not linear in the ring."""
    _check_delta(model, "add_weighted_adapter")
    if any(target.serving.both_factors for target in model.plan.targets):
        raise RPGConfigError(
            "add_weighted_adapter(): this model's rpg-lora-v1 updates (update='lora', the default up to 2,048 ring "
            "entries) are products of two factors read from the ring, ΔW = F (P + A): a weighted sum of rings is "
            "not the weighted sum of their updates. Combine adapters built with update='full' or 'lowrank' "
            "(linear in the ring)"
        )
    names, weights = list(adapters), list(weights)
    if not names or len(names) != len(weights):
        raise RPGConfigError(
            f"add_weighted_adapter(): adapters and weights must be non-empty and of the same length, got "
            f"{len(names)} adapter(s) and {len(weights)} weight(s)"
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
            raise RPGConfigError(f"add_weighted_adapter(): weights must be real numbers, got {weight!r}")
    for name in names:
        _check_known(model, name, "add_weighted_adapter")
    from .checkpoint import RING_PREFIX

    values = {name: adapter_values(model, name) for name in names}
    add_adapter(model, adapter_name, state(model).configs[names[0]])
    with torch.no_grad():
        combined = state(model).inactive[adapter_name]
        for key in combined:
            if key.startswith(RING_PREFIX):
                total = torch.zeros_like(combined[key], dtype=torch.float64)
                for name, weight in zip(names, weights, strict=True):
                    total += float(weight) * values[name][key].to(torch.float64)
                combined[key] = total.to(combined[key].dtype)
            else:
                combined[key] = values[names[0]][key].clone()


def adapter_values(model: RPGModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """The rings and trained parameters of one adapter (live tensors for the active one)."""
    _check_known(model, adapter_name, "adapter_values")
    adapters = state(model)
    if adapter_name == adapters.active:
        return {key: tensor.detach() for key, tensor in _live(model).items()}
    return adapters.inactive[adapter_name]


def load_adapter(
    model: RPGModel, read: Callable[[], AdapterCheckpoint], adapter_name: str, *, hotswap: bool = False
) -> None:
    """Load a delta checkpoint saved from this base as adapter ``adapter_name`` (a new one, or
    with ``hotswap=True`` replacing the values of an existing one in place). ``read`` reads the
    checkpoint (``checkpoint_reading.read_adapter_checkpoint``): this module holds the adapters
    in memory and does no file I/O."""
    _check_delta(model, "load_adapter")
    check_adapter_name(adapter_name)
    checkpoint = read()
    config, source = checkpoint.config, checkpoint.source
    _check_same_layout(model, adapter_name, config)
    if checkpoint.meta["manifest"] != model.layout.to_dict():
        raise RPGManifestMismatchError(
            f"{source}: its manifest (targets, offsets, gains, rings) differs from this model's: it was "
            "saved from another base or layout and cannot be an adapter of this model"
        )
    checkpoint.check_weights()
    recorded = checkpoint.meta.get("base_fingerprint")
    if recorded is not None and model._base_fingerprint is not None and recorded != model._base_fingerprint:
        raise RPGBaseMismatchError(
            f"{source} was trained on another base model (base_fingerprint); load it onto its own base"
        )
    adapters = state(model)
    if hotswap:
        _check_known(model, adapter_name, "load_adapter(hotswap=True)")
    else:
        add_adapter(model, adapter_name, config)
    previous = adapters.active
    try:
        set_adapter(model, adapter_name)
        checkpoint.load_into(model)
    except BaseException:
        set_adapter(model, previous)
        if not hotswap:
            delete_adapter(model, adapter_name)
        raise
    adapters.configs[adapter_name] = config
    set_adapter(model, previous)
    if adapter_name == previous:
        model.rpg_config = config


def save_adapters(model: RPGModel, save_directory: str | Path, save: Any, **kwargs: Any) -> None:
    """PEFT's layout: the ``"default"`` adapter at the root of ``save_directory``, every other
    one in a subfolder named after it. ``save(directory, **kwargs)`` saves the active adapter."""
    adapters = state(model)
    previous = adapters.active
    root = Path(save_directory)
    order = sorted(adapters.configs, key=lambda name: name != DEFAULT_ADAPTER)  # the root first
    try:
        for name in order:
            set_adapter(model, name)
            save(root if name == DEFAULT_ADAPTER else root / name, **kwargs)
    finally:
        set_adapter(model, previous)


# ---------------------------------------------------------------------------- mixed batches


def _batch_size(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise RPGStateError("adapter_names needs a batched tensor input (input_ids, pixel_values...)")


def _take(value: Any, index: torch.Tensor, size: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
        return value.index_select(0, index.to(value.device))
    return value


def _put(parts: list[tuple[torch.Tensor, Any]], size: int, where: str) -> Any:
    first = parts[0][1]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            raise RPGStateError(
                f"adapter_names: the output {where} is a scalar (a loss?): it cannot be split per sample"
            )
        out = first.new_empty((size, *first.shape[1:]))
        for index, value in parts:
            out.index_copy_(0, index.to(out.device), value)
        return out
    if first is None:
        return None
    if isinstance(first, dict):  # transformers' ModelOutput is a dict
        merged = {key: _put([(i, v[key]) for i, v in parts], size, f"{where}.{key}") for key in first}
        return type(first)(**merged) if type(first) is not dict else merged
    if isinstance(first, (tuple, list)):
        return type(first)(_put([(i, v[k]) for i, v in parts], size, f"{where}[{k}]") for k in range(len(first)))
    raise RPGStateError(
        f"adapter_names: the output {where} is a {type(first).__name__}, which cannot be put back per sample "
        "(for a cache, pass use_cache=False)"
    )


def forward_mixed(model: RPGModel, adapter_names: Sequence[str], args: tuple, kwargs: dict) -> Any:
    """Inference on a batch whose samples use different adapters (``BASE_ONLY``: the base alone)."""
    _check_delta(model, "forward(adapter_names=...)")
    if torch.is_grad_enabled() and model.training:
        raise RPGStateError("adapter_names= is for inference: call it in eval mode or under torch.no_grad()")
    if "labels" in kwargs:
        raise RPGStateError("adapter_names= cannot compute one loss over adapters: leave out labels")
    size = _batch_size(args, kwargs)
    names = list(adapter_names)
    if len(names) != size:
        raise RPGConfigError(f"adapter_names has {len(names)} entries for a batch of {size} samples")
    groups: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        if name != BASE_ONLY:
            _check_known(model, name, "forward(adapter_names=...)")
        groups.setdefault(name, []).append(position)
    previous = state(model).active
    parts = []
    try:
        for name, positions in groups.items():
            index = torch.tensor(positions, dtype=torch.int64)
            sub_args = tuple(_take(a, index, size) for a in args)
            sub_kwargs = {k: _take(v, index, size) for k, v in kwargs.items()}
            if name == BASE_ONLY:  # no ring update; the heads are the caller's active adapter's
                set_adapter(model, previous)
                with model.disable_rpg():
                    parts.append((index, model._forward_active(*sub_args, **sub_kwargs)))
            else:
                set_adapter(model, name)
                parts.append((index, model._forward_active(*sub_args, **sub_kwargs)))
    finally:
        set_adapter(model, previous)
    return _put(parts, size, "output")
