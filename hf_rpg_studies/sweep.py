"""DoF sweeps: the paper's studies as a tool (``hf-rpg sweep`` and ``run_sweep``).

A sweep trains one classifier per point — RPG at each DoF and seed, the dense
reference, narrow dense networks with as many parameters as an RPG point trains
(``equal_dof``), and the ablations — and writes into its output directory:

- ``runs.jsonl``: one JSON line per finished run, appended and flushed as each finishes.
  It is what makes a killed sweep resume: on restart every point already there is skipped
  (a line torn by the kill is dropped and that run done again);
- ``results.csv`` and ``results.json``: every run (the JSON also with its loss curve), the
  sweep's settings and the log-linear fit ``accuracy = a + b log10(ring DoF)``;
- ``sweep.png``: accuracy against ring DoF on a log axis (mean and standard deviation over
  seeds, the fit with its R² and slope per decade, the dense reference, the ablations) and,
  with ``equal_dof``, accuracy against trainable parameters (RPG vs narrow dense);
  ``convergence.png``: training loss against steps, RPG at each DoF and dense.

Ablations (study only: the library's ``rpg-v1`` is never changed; these replace the index
cache of a model through ``WeightEngine.set_index_override``):

- ``no_permutation``: position ``p`` reads ring entry ``p mod N`` (the ``rpg-v1`` signs kept);
- ``no_sign``: the ``rpg-v1`` permutation, every sign ``+1``;
- ``plain_tiling``: neither, ``W[p] = g θ[p mod N]`` (the ring tiled over the weights);
- ``local_rings``: ``rpg-v1`` with one ring per stage (ResNet: stem, stage 1, stage 2; ViT:
  patch embedding, layer 0, layer 1) sharing the same total DoF, against the global ring.

Models: ``"resnet"`` and ``"vit"`` are the example networks of ``hf_rpg_studies.demo`` (those of
``examples/train_image_classification.py``), trained from scratch in replace mode on
``digits`` or ``fashion_mnist``; ``"minilm"`` is the pretrained all-MiniLM-L6-v2 fine-tuned on
``rt_polarity`` in delta mode (as ``examples/finetune_text_classification.py``; the dense
reference is a full fine-tune at ``dense_lr``). ``"module:function"`` is your own factory,
called as ``function(num_labels=..., image_size=...)`` (``image_size`` is None for text; plus
``widths=`` for narrow dense networks), returning a model that takes the dataset's inputs
(``pixel_values``; or ``input_ids``, ``attention_mask``, ``token_type_ids``) and ``labels``
and returns ``.loss`` and ``.logits``, as transformers classifiers do.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.describe import is_int as _is_int
from hf_rpg.errors import RPGConfigError
from hf_rpg.spec.generator import build_signed_index, derive_key

from .demo import RESNET_WIDTHS, VIT_WIDTHS, build_digits_model

DATASETS = {"digits": 16, "fashion_mnist": 28, "rt_polarity": None}  # name -> image size (None: text)
BUILT_IN_MODELS = ("resnet", "vit", "minilm")
IMAGE_MODELS = ("resnet", "vit")
TEXT_MAX_LENGTH = 64  # tokens per sentence, as the text example (the longest has 78)
# (replace-mode lr, delta-mode lr, dense lr) when not given: the examples' recipes
DEFAULT_LR = {"image": (1e-2, 1e-2, 1e-2), "text": (5e-5, 5e-4, 5e-5)}
INDEX_ABLATIONS = ("no_permutation", "no_sign", "plain_tiling")
ABLATIONS = (*INDEX_ABLATIONS, "local_rings")
LOCAL_RINGS = {
    "resnet": {"stem": r"resnet\.embedder\..*", "stage1": r"resnet\.encoder\.stages\.0\..*"},  # default: stage 2
    "vit": {"layer0": r"vit\.layers\.0\..*", "layer1": r"vit\.layers\.1\..*"},  # default: the patch embedding
}
# Settings that change every result: a resumed sweep must have the same ones.
RESULT_SETTINGS = (
    "model", "dataset", "mode", "epochs", "lr", "dense_lr", "batch_size", "max_train_samples", "max_eval_samples",
)  # fmt: skip
RUNS_NAME = "runs.jsonl"
CSV_COLUMNS = (
    "key",
    "kind",
    "variant",
    "dof",
    "seed",
    "ring_dof",
    "trainable",
    "model_parameters",
    "widths",
    "accuracy",
    "final_loss",
    "steps",
    "train_seconds",
)


@dataclass
class SweepConfig:
    """What a sweep runs. Every field is checked by ``validate`` (``RPGConfigError``).

    Args:
        model: ``"resnet"``, ``"vit"`` or ``"module:function"`` (a factory, see the module doc).
        dataset: ``"digits"`` or ``"fashion_mnist"`` (``data_dir``: its IDX folder).
        dofs: RPG DoF values (``RPGConfig.dof``: an int ring size or a fraction in (0, 1]).
        seeds: One run per seed and point (model init, ring seed and data order).
        mode: RPG mode; None: ``"delta"`` for ``minilm``, ``"replace"`` otherwise.
        epochs, lr, batch_size: The recipe (AdamW, one-cycle schedule, no weight decay);
            ``lr`` None: 1e-2 for images, 5e-4 (delta) or 5e-5 (replace) for text.
        dense_lr: lr of the dense and narrow runs; None: ``lr`` for images, 5e-5 for text.
        max_train_samples, max_eval_samples: Use the first N of each split.
        dense: Train the dense reference (per seed).
        equal_dof: Train, per RPG point of the plain variant, a narrow dense network (widths
            scaled down) whose parameter count is closest to the RPG model's trainable count.
        ablations: Any of ``ABLATIONS``, run at every DoF and seed.
        log_every: Record the mean training loss every this many steps.
    """

    model: str = "resnet"
    dataset: str = "digits"
    dofs: Sequence[int | float] = (0.01, 0.1, 0.5)
    seeds: Sequence[int] = (0,)
    mode: str | None = None
    epochs: int = 2
    lr: float | None = None
    dense_lr: float | None = None
    batch_size: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dense: bool = True
    equal_dof: bool = False
    ablations: Sequence[str] = ()
    log_every: int = 10
    data_dir: str | None = None

    def validate(self) -> SweepConfig:
        """Check every field; return ``self``."""
        if self.model not in BUILT_IN_MODELS and ":" not in str(self.model):
            raise RPGConfigError(f"model must be 'resnet', 'vit' or 'module:function', got {self.model!r}")
        if self.dataset not in DATASETS:
            raise RPGConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        text = DATASETS[self.dataset] is None
        if (self.model == "minilm" and not text) or (self.model in IMAGE_MODELS and text):
            raise RPGConfigError(
                f"model {self.model!r} does not fit dataset {self.dataset!r}: minilm is for rt_polarity, "
                "resnet and vit for digits and fashion_mnist"
            )
        if self.mode not in (None, "replace", "delta"):
            raise RPGConfigError(f"mode must be 'replace', 'delta' or None, got {self.mode!r}")
        if self.mode == "delta" and self.model in IMAGE_MODELS:
            raise RPGConfigError(f"mode 'delta' needs a pretrained model; {self.model!r} is trained from scratch")
        if self.equal_dof and self.model not in IMAGE_MODELS:
            raise RPGConfigError("equal_dof knows the widths of the resnet and vit only")
        if not self.dofs and not self.dense:
            raise RPGConfigError("nothing to run: give dofs or dense=True")
        for dof in self.dofs:
            RPGConfig(dof=dof)  # the same checks and messages as the library's
        if len(set(self.dofs)) != len(self.dofs) or len(set(self.seeds)) != len(self.seeds):
            raise RPGConfigError(
                f"dofs and seeds must not repeat a value, got {list(self.dofs)} and {list(self.seeds)}"
            )
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise RPGConfigError(f"seeds must be non-negative ints, got {list(self.seeds)}")
        for name in ("epochs", "batch_size", "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise RPGConfigError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise RPGConfigError(f"{name} must be a positive int or None, got {value!r}")
        for name in ("lr", "dense_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise RPGConfigError(f"{name} must be a positive number or None, got {value!r}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise RPGConfigError(f"ablations must be among {', '.join(ABLATIONS)}, got {bad}")
        if "local_rings" in self.ablations and self.model not in LOCAL_RINGS:
            raise RPGConfigError("the local_rings ablation knows the rings of the built-in models only (resnet, vit)")
        if self.ablations and not self.dofs:
            raise RPGConfigError("ablations need dofs")
        return self

    def rpg_mode(self) -> str:
        """The RPG mode the runs use."""
        return self.mode or ("delta" if self.model == "minilm" else "replace")

    def learning_rate(self, kind: str) -> float:
        """The peak learning rate of a run of ``kind`` (``"rpg"``, ``"dense"``, ``"narrow"``)."""
        defaults = DEFAULT_LR["text" if DATASETS[self.dataset] is None else "image"]
        if kind == "rpg":
            return self.lr or defaults[0 if self.rpg_mode() == "replace" else 1]
        return self.dense_lr or (self.lr if DATASETS[self.dataset] is not None and self.lr else defaults[2])

    def settings(self) -> dict[str, Any]:
        """The fields as JSON values, with the mode and learning rates the runs use."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        data.update(mode=self.rpg_mode(), lr=self.learning_rate("rpg"), dense_lr=self.learning_rate("dense"))
        return data


@dataclass(frozen=True)
class Point:
    """One run of a sweep: ``kind`` is ``"rpg"``, ``"dense"`` or ``"narrow"`` (equal-DoF dense)."""

    kind: str
    seed: int
    dof: int | float | None = None
    variant: str = "rpg-v1"

    @property
    def key(self) -> str:
        """A name unique within a sweep, the resume key."""
        if self.kind == "dense":
            return f"dense/seed{self.seed}"
        return f"{self.kind}/{self.variant}/dof={self.dof!r}/seed{self.seed}"


def sweep_points(config: SweepConfig) -> list[Point]:
    """Every run of ``config``, in the order they run (dense and small DoF first)."""
    points = []
    for seed in config.seeds:
        if config.dense:
            points.append(Point("dense", seed))
        for dof in config.dofs:
            points.append(Point("rpg", seed, dof))
            if config.equal_dof:
                points.append(Point("narrow", seed, dof))
            points += [Point("rpg", seed, dof, variant) for variant in config.ablations]
    return points


# ---------------------------------------------------------------------------- models


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

    from .data import minilm_path

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


# ---------------------------------------------------------------------------- training


@dataclass
class SweepData:
    """Train and test inputs (the model's keyword arguments: ``pixel_values`` N x 1 x H x W
    in [-1, 1], or token tensors N x L) and int64 labels."""

    train: dict[str, torch.Tensor]
    train_y: torch.Tensor
    test: dict[str, torch.Tensor]
    test_y: torch.Tensor
    num_labels: int
    image_size: int | None


def load_sweep_data(config: SweepConfig) -> SweepData:
    """The dataset of ``config``, cut to ``max_train_samples`` / ``max_eval_samples``."""
    # only when a sweep runs
    from .data import image_tensors, load_image_dataset, load_rt_polarity, minilm_path

    size = DATASETS[config.dataset]
    data = load_rt_polarity() if size is None else load_image_dataset(config.dataset, config.data_dir)
    tokenizer = None
    if size is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    parts = []
    for split, limit in (("train", config.max_train_samples), ("test", config.max_eval_samples)):
        part = data[split]
        if limit is not None:
            part = part.select(range(min(limit, len(part))))
        if tokenizer is None:
            images, labels = image_tensors(part, size)
            parts += [{"pixel_values": images}, labels]
        else:
            tokens = tokenizer(list(part["text"]), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                               return_tensors="pt")  # fmt: skip
            parts += [dict(tokens), torch.tensor(list(part["label"]), dtype=torch.int64)]
    return SweepData(*parts, num_labels=len(data["train"].features["label"].names), image_size=size)


def _progress(total: int, desc: str, position: int, leave: bool):
    from tqdm.auto import tqdm

    # disable=None: drawn on a terminal only, so a redirected log gets no bars
    return tqdm(total=total, desc=desc, position=position, leave=leave, disable=None, dynamic_ncols=True)


def train_point(
    model: nn.Module, data: SweepData, config: SweepConfig, seed: int, desc: str, lr: float
) -> dict[str, Any]:
    """Train with AdamW and a one-cycle schedule peaking at ``lr``; test accuracy, loss curve, seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps_per_epoch = -(-len(data.train_y) // config.batch_size)
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total)
    shuffle = torch.Generator().manual_seed(seed + 1)
    curve, window, step = [], [], 0
    bar = _progress(total, desc, position=1, leave=False)
    start = time.perf_counter()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(data.train_y), generator=shuffle)
        for first in range(0, len(order), config.batch_size):
            batch = order[first : first + config.batch_size]
            loss = model(**{k: v[batch] for k, v in data.train.items()}, labels=data.train_y[batch]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            window.append(loss.item())
            if len(window) == config.log_every or step == total:
                curve.append([step, sum(window) / len(window)])
                window = []
            bar.update(1)
    seconds = time.perf_counter() - start
    bar.close()
    if not math.isfinite(curve[-1][1]):
        raise RPGConfigError(f"{desc}: the training loss became {curve[-1][1]}; lower lr (now {lr})")
    return {"accuracy": evaluate(model, data), "loss_curve": curve, "final_loss": curve[-1][1], "steps": step,
            "train_seconds": seconds}  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, data: SweepData, batch_size: int = 250) -> float:
    """Test accuracy, in eval mode."""
    model.eval()
    correct = 0
    for first in range(0, len(data.test_y), batch_size):
        logits = model(**{k: v[first : first + batch_size] for k, v in data.test.items()}).logits
        correct += int((logits.argmax(-1) == data.test_y[first : first + batch_size]).sum())
    return correct / len(data.test_y)


# ---------------------------------------------------------------------------- results


def read_runs(directory: Path) -> list[dict[str, Any]]:
    """The finished runs recorded in ``directory/runs.jsonl``; a torn last line (a kill
    while writing) is dropped from the file."""
    path = directory / RUNS_NAME
    if not path.exists():
        return []
    runs, good = [], 0
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not line.endswith("\n") or not isinstance(record, dict) or "key" not in record:
            break
        runs.append(record)
        good += len(line)
    if good != len(text):
        path.write_text(text[:good], encoding="utf-8")
    return runs


def _append_run(directory: Path, record: dict[str, Any]) -> None:
    with open(directory / RUNS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def log_linear_fit(dofs: Sequence[float], accuracies: Sequence[float]) -> dict[str, float] | None:
    """Least squares ``accuracy = intercept + slope * log10(dof)``, with R²; None for < 2 DoFs."""
    xs = [math.log10(d) for d in dofs]
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(accuracies) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, accuracies, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in accuracies)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, accuracies, strict=True))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"intercept": intercept, "slope_per_decade": slope, "r2": r2, "points": n}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of accuracy per (kind, variant, dof) and the fit of the
    ``rpg-v1`` means against ring DoF."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["variant"], run["dof"]), []).append(run)
    rows = []
    for (kind, variant, dof), members in groups.items():
        accuracy = [m["accuracy"] for m in members]
        mean = sum(accuracy) / len(accuracy)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracy) / (len(accuracy) - 1)) if len(accuracy) > 1 else 0.0
        rows.append({"kind": kind, "variant": variant, "dof": dof, "seeds": len(members), "accuracy_mean": mean,
                     "accuracy_std": std, "ring_dof": members[0].get("ring_dof"),
                     "trainable": members[0]["trainable"]})  # fmt: skip
    rpg = sorted((r for r in rows if r["kind"] == "rpg" and r["variant"] == "rpg-v1"), key=lambda r: r["ring_dof"])
    fit = log_linear_fit([r["ring_dof"] for r in rpg], [r["accuracy_mean"] for r in rpg])
    return {"groups": rows, "fit": fit}


def write_results(directory: Path, config: SweepConfig, runs: list[dict[str, Any]], machine: str) -> dict[str, Any]:
    """``results.csv`` and ``results.json`` from the finished runs; returns the summary."""
    summary = summarize(runs)
    with open(directory / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            writer.writerow({**run, "widths": " ".join(map(str, run.get("widths") or []))})
    document = {"settings": config.settings(), "machine": machine, "summary": summary, "runs": runs}
    (directory / "results.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return summary


def plot_results(directory: Path, config: SweepConfig, runs: list[dict[str, Any]]) -> list[Path]:
    """``sweep.png`` and ``convergence.png`` (matplotlib, Agg backend)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(runs)
    groups = summary["groups"]
    narrow = [g for g in groups if g["kind"] == "narrow"]
    fig, axes = plt.subplots(1, 2 if narrow else 1, figsize=(12 if narrow else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    markers = dict(zip(("rpg-v1", *ABLATIONS), "os^vD", strict=True))

    def series(variant: str, order: str) -> list[dict[str, Any]]:
        return sorted((g for g in groups if g["kind"] == "rpg" and g["variant"] == variant), key=lambda g: g[order])

    def bars(axis, rows: list[dict[str, Any]], x: str, **style: Any) -> None:
        xs, ys = [r[x] for r in rows], [100 * r["accuracy_mean"] for r in rows]
        axis.errorbar(xs, ys, yerr=[100 * r["accuracy_std"] for r in rows], capsize=3, **style)

    for variant in [v for v in ("rpg-v1", *ABLATIONS) if series(v, "ring_dof")]:
        label = "RPG (rpg-v1, global ring)" if variant == "rpg-v1" else variant.replace("_", " ")
        style = {"marker": markers[variant], "linestyle": "-" if variant == "rpg-v1" else ":", "label": label}
        bars(ax, series(variant, "ring_dof"), "ring_dof", **style)
    fit = summary["fit"]
    if fit is not None:
        xs = [g["ring_dof"] for g in series("rpg-v1", "ring_dof")]
        ys = [100 * (fit["intercept"] + fit["slope_per_decade"] * math.log10(x)) for x in xs]
        label = f"fit: {100 * fit['slope_per_decade']:.2f} points/decade, R² {fit['r2']:.3f}"
        ax.plot(xs, ys, "k--", linewidth=1, label=label)
    dense = [g for g in groups if g["kind"] == "dense"]
    for g in dense:
        ax.axhline(100 * g["accuracy_mean"], color="grey", label=f"dense ({g['trainable']:,} params)")
        if g["accuracy_std"]:
            low, high = 100 * (g["accuracy_mean"] - g["accuracy_std"]), 100 * (g["accuracy_mean"] + g["accuracy_std"])
            ax.axhspan(low, high, color="grey", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("ring DoF (log scale)")
    ax.set_ylabel("test accuracy (%)")
    seeds = len(config.seeds)
    ax.set_title(f"{config.model} on {config.dataset}, {config.epochs} epoch(s), {seeds} seed(s): mean ± std")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if narrow:
        ax = axes[0][1]
        bars(ax, series("rpg-v1", "trainable"), "trainable", marker="o", label="RPG, full width (trainable)")
        bars(ax, sorted(narrow, key=lambda g: g["trainable"]), "trainable", marker="s", label="narrow dense")
        for g in dense:
            bars(ax, [g], "trainable", marker="*", markersize=10, color="grey", linestyle="none", label="dense")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("equal DoF: RPG vs narrower dense networks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [directory / "sweep.png", directory / "convergence.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.8))
    curves: dict[str, list[list[list[float]]]] = {}
    for run in runs:
        if run["kind"] == "dense" or (run["kind"] == "rpg" and run["variant"] == "rpg-v1"):
            label = "dense" if run["kind"] == "dense" else f"RPG ring DoF {run['ring_dof']:,}"
            curves.setdefault(label, []).append(run["loss_curve"])
    for label, members in sorted(curves.items(), key=lambda kv: (kv[0] != "dense", len(kv[0]), kv[0])):
        length = min(len(c) for c in members)
        steps = [members[0][i][0] for i in range(length)]
        mean = [sum(c[i][1] for c in members) / len(members) for i in range(length)]
        ax.plot(steps, mean, label=label, color="black" if label == "dense" else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss (mean of {config.log_every} steps, over seeds)")
    ax.set_yscale("log")
    ax.set_title(f"convergence: {config.model} on {config.dataset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What ``run_sweep`` did: every finished run, the summary, the files, what ran now."""

    runs: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def machine_description() -> str:
    """CPU count, torch threads and versions, for results files."""
    import platform

    return (
        f"{platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s), {platform.system()} {platform.release()}"
    )


def _check_resumable(directory: Path, config: SweepConfig) -> None:
    path = directory / "sweep.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differ = [k for k in RESULT_SETTINGS if k in saved and saved[k] != config.settings()[k]]
        if differ:
            pairs = ", ".join(f"{k}={saved.get(k)!r} there, {config.settings()[k]!r} now" for k in differ)
            raise RPGConfigError(
                f"output_dir {str(directory)!r} holds a sweep with other settings ({pairs}); "
                "resume it with the same settings or use another output_dir"
            )
    path.write_text(json.dumps(config.settings(), indent=1) + "\n", encoding="utf-8")


def run_sweep(config: SweepConfig, output_dir: str | Path, *, log: Callable[[str], None] | None = None) -> SweepResult:
    """Run every point of ``config`` not yet in ``output_dir``; write results and plots.

    ``log`` receives one line per finished or skipped run (default: printed to stdout, above
    the progress bars). Interrupt it at any time: calling it again with the same settings
    runs only the points that had not finished (more ``dofs``, ``seeds`` or ``ablations`` may
    be added; settings that change results may not).
    """
    config.validate()
    from tqdm.auto import tqdm

    say = log or tqdm.write
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _check_resumable(directory, config)
    factory = model_factory(config.model)
    data = load_sweep_data(config)
    _check_dofs(config, factory, data)
    machine = machine_description()
    done = {run["key"]: run for run in read_runs(directory)}
    points = sweep_points(config)
    result = SweepResult([], {}, [], skipped=[p.key for p in points if p.key in done])
    if result.skipped:
        say(f"resuming {directory}: {len(result.skipped)} of {len(points)} runs already finished, skipped")
    overall = _progress(len(points), "sweep", position=0, leave=True)
    overall.update(len(result.skipped))
    for number, point in enumerate(points, 1):
        if point.key in done:
            continue
        model, info = build_point_model(point, config, factory, data.num_labels, data.image_size)
        outcome = train_point(model, data, config, point.seed, point.key, config.learning_rate(point.kind))
        record = {"key": point.key, "kind": point.kind, "variant": point.variant if point.kind == "rpg" else point.kind,
                  "dof": point.dof, "seed": point.seed, **info, **outcome}  # fmt: skip
        _append_run(directory, record)
        done[point.key] = record
        result.ran.append(point.key)
        overall.update(1)
        say(f"[{number}/{len(points)}] {point.key}: accuracy {outcome['accuracy']:.4f}, trainable {info['trainable']:,}"
            f", {outcome['train_seconds']:.1f} s")  # fmt: skip
    overall.close()
    wanted = {p.key for p in points}
    result.runs = [run for key, run in done.items() if key in wanted]
    result.summary = write_results(directory, config, result.runs, machine)
    result.files = [directory / RUNS_NAME, directory / "results.csv", directory / "results.json"]
    result.files += plot_results(directory, config, result.runs)
    fit = result.summary["fit"]
    if fit is not None:
        say(f"fit over {fit['points']} DoFs: {100 * fit['slope_per_decade']:.2f} points per decade, R² {fit['r2']:.3f}")
    return result


def _check_dofs(config: SweepConfig, factory: Callable[..., nn.Module], data: SweepData) -> None:
    """An int DoF larger than the model's generated elements fails before anything runs."""
    if not any(isinstance(d, int) for d in config.dofs):
        return
    base = _build(factory, data.num_labels, data.image_size, None)
    model = apply_rpg(base, RPGConfig(dof=0.5, mode=config.rpg_mode()))
    elements = model.dof_report().generated_elements
    too_big = [d for d in config.dofs if isinstance(d, int) and d > elements]
    if too_big:
        raise RPGConfigError(f"dofs {too_big} exceed the {elements:,} generated elements of {config.model!r}")


# ---------------------------------------------------------------------------- command line


def add_sweep_arguments(parser: argparse.ArgumentParser, parse_dof: Callable[[str], int | float]) -> None:
    """The options of ``hf-rpg sweep``."""
    parser.add_argument("--model", default="resnet", help="resnet, vit, minilm (text), or module:function (yours)")
    parser.add_argument("--mode", choices=("replace", "delta"), default=None, help="default: delta for minilm")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="digits")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: see hf_rpg_studies.data)")
    parser.add_argument("--dof", dest="dofs", type=parse_dof, nargs="+", default=[0.01, 0.1, 0.5],
                        help="RPG DoF values: ring sizes (18116), fractions (0.25) or percentages (25%%)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None, help="peak lr of the RPG runs (one-cycle AdamW)")
    parser.add_argument("--dense-lr", type=float, default=None, help="peak lr of the dense and narrow runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--no-dense", dest="dense", action="store_false", help="skip the dense reference")
    parser.add_argument(
        "--equal-dof", action="store_true", help="also narrow dense networks of the same trainable count"
    )
    parser.add_argument("--ablations", nargs="+", default=[], choices=ABLATIONS, metavar="ABLATION",
                        help=f"any of {', '.join(ABLATIONS)}")  # fmt: skip
    parser.add_argument("--log-every", type=int, default=10, help="loss curve: mean loss every N steps")
    parser.add_argument("--output-dir", type=Path, default=Path("sweep"), help="results; a sweep there is resumed")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The ``SweepConfig`` of parsed ``hf-rpg sweep`` arguments."""
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    return SweepConfig(**{k: v for k, v in vars(args).items() if k in names}).validate()


def print_summary(result: SweepResult, out: Any = None) -> None:
    """The per-point table ``hf-rpg sweep`` prints at the end (to ``out``, default stdout)."""
    out = out or sys.stdout
    print(f"{'kind':<7} {'variant':<15} {'dof':>9} {'ring DoF':>9} {'trainable':>10} {'seeds':>5} "
          f"{'accuracy':>9} {'std':>7}", file=out)  # fmt: skip
    for g in sorted(result.summary["groups"], key=lambda g: (g["kind"] != "dense", g["variant"], g["trainable"])):
        ring = f"{g['ring_dof']:,}" if g["ring_dof"] is not None else "-"
        print(f"{g['kind']:<7} {g['variant']:<15} {g['dof']!s:>9} {ring:>9} {g['trainable']:>10,} {g['seeds']:>5} "
              f"{g['accuracy_mean']:>9.4f} {g['accuracy_std']:>7.4f}", file=out)  # fmt: skip
    print("files: " + ", ".join(str(p) for p in result.files), file=out)


__all__ = [
    "ABLATIONS",
    "Point",
    "SweepConfig",
    "SweepResult",
    "log_linear_fit",
    "run_sweep",
    "sweep_points",
]
