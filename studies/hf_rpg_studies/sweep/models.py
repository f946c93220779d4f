"""The model of each sweep point: the built-in and user factories, narrow dense networks of
equal DoF, RPG applied, index ablations."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.errors import RPGConfigError
from hf_rpg.spec.generator import build_signed_index, derive_key

from ..demo import RESNET_WIDTHS, VIT_WIDTHS, build_digits_model
from .config import IMAGE_MODELS, INDEX_ABLATIONS, LOCAL_RINGS, Point, SweepConfig


def model_factory(spec: str) -> Callable[..., nn.Module]:
    """The factory of ``spec``: a built-in name or ``"module:function"``."""
    if spec in IMAGE_MODELS:
        return lambda num_labels, image_size, widths=None: build_digits_model(spec, image_size, num_labels, widths)
    if spec == "minilm":
        return _minilm
    module_name, _, function = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise RPGConfigError(f"model {spec!r}: cannot import {function!r} from {module_name!r} ({err})") from None
    if not callable(factory):
        raise RPGConfigError(f"model {spec!r}: {function!r} is not callable")
    return factory


def _minilm(num_labels: int, image_size: None = None) -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    from ..data import minilm_path

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not the load report of the new classification head, once per run
    try:
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels)
    finally:
        logging.set_verbosity(verbosity)


def _build(factory: Callable[..., nn.Module], num_labels: int, image_size: int | None, widths: Sequence[int] | None):
    kwargs = {"widths": tuple(widths)} if widths is not None else {}
    return factory(num_labels=num_labels, image_size=image_size, **kwargs)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of a model (each shared tensor once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def default_widths(spec: str) -> tuple[int, ...]:
    """The full widths of a built-in model (a factory's narrow networks need its own ``widths``)."""
    if spec == "resnet":
        return RESNET_WIDTHS
    if spec == "vit":
        return VIT_WIDTHS
    raise RPGConfigError(f"equal_dof needs the widths of the model; only the built-in models have them, not {spec!r}")


def narrow_widths(
    factory: Callable[..., nn.Module], full: Sequence[int], budget: int, num_labels: int, image_size: int, step: int
) -> tuple[tuple[int, ...], int]:
    """Widths ``round(s * full)`` (multiples of ``step`` for the first) whose network's
    parameter count is closest to ``budget``, and that count; ``s`` found by bisection."""

    def widths_at(scale: float) -> tuple[int, ...]:
        first = max(step, step * round(full[0] * scale / step))
        return (first, *(max(1, round(w * scale)) for w in full[1:]))

    def count(widths: tuple[int, ...]) -> int:
        return parameter_count(_build(factory, num_labels, image_size, widths))

    low, high, seen = 0.0, 1.0, {}
    for _ in range(24):
        middle = (low + high) / 2
        widths = widths_at(middle)
        seen[widths] = seen.get(widths) or count(widths)
        low, high = (middle, high) if seen[widths] < budget else (low, middle)
    best = min(seen, key=lambda w: (abs(seen[w] - budget), w))
    return best, seen[best]


def _signed_override(model: RPGModel, variant: str) -> None:
    """Replace each ring's ``rpg-v1`` indices by the ablation's (see the module doc)."""
    for name, ring in model.layout.rings.items():
        index = build_signed_index(ring.elements, ring.size, derive_key(model.rpg_config.seed, name)).to(torch.int64)
        negative = index >= ring.size
        tiled = torch.arange(ring.elements, dtype=torch.int64) % ring.size
        if variant == "no_permutation":
            index = tiled + ring.size * negative
        elif variant == "no_sign":
            index = index - ring.size * negative
        else:  # plain_tiling
            index = tiled
        model.set_index_override(name, index.to(torch.int32))


def build_point_model(
    point: Point, config: SweepConfig, factory: Callable[..., nn.Module], num_labels: int, image_size: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The freshly initialised model of ``point`` (seeded) and what describes it."""
    torch.manual_seed(point.seed)
    info: dict[str, Any] = {}
    if point.kind == "dense":
        model = _build(factory, num_labels, image_size, None)
    elif point.kind == "narrow":
        budget = _rpg_trainable(point, config, factory, num_labels, image_size)
        step = 4 if config.model == "vit" else 1  # the ViT's hidden size: a multiple of its 4 heads
        widths, _ = narrow_widths(factory, default_widths(config.model), budget, num_labels, image_size, step)
        torch.manual_seed(point.seed)
        model = _build(factory, num_labels, image_size, widths)
        info.update(widths=list(widths), budget=budget)
    else:
        rings = LOCAL_RINGS[config.model] if point.variant == "local_rings" else None
        base = _build(factory, num_labels, image_size, None)
        model = apply_rpg(base, RPGConfig(dof=point.dof, seed=point.seed, rings=rings, mode=config.rpg_mode()))
        if point.variant in INDEX_ABLATIONS:
            _signed_override(model, point.variant)
        report = model.dof_report()
        info.update(ring_dof=report.ring_dof, model_parameters=report.model_parameters)
    info["trainable"] = parameter_count(model)
    info.setdefault("model_parameters", info["trainable"])
    return model, info


def _rpg_trainable(point: Point, config: SweepConfig, factory, num_labels: int, image_size: int | None) -> int:
    torch.manual_seed(point.seed)
    base = _build(factory, num_labels, image_size, None)
    return parameter_count(apply_rpg(base, RPGConfig(dof=point.dof, seed=point.seed, mode=config.rpg_mode())))
