"""Running a sweep: data, training and evaluation of each point, resuming, and the ``hf-rpg sweep`` options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.errors import RPGConfigError

from .config import ABLATIONS, DATASETS, RESULT_SETTINGS, RUNS_NAME, TEXT_MAX_LENGTH, SweepConfig, sweep_points
from .models import _build, build_point_model, model_factory
from .results import _append_run, plot_results, read_runs, write_results

# ---------------------------------------------------------------------------- models


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
    from ..data import image_tensors, load_image_dataset, load_rt_polarity, minilm_path

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
