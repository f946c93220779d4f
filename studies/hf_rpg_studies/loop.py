"""The training and evaluation loop the example scripts share (with Accelerate: one process,
DDP or FSDP2 alike)."""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import evaluate
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

# (optimizer, optimizer steps of this run) -> the learning-rate scheduler. The prepared scheduler
# steps once per process per optimizer step: scale the steps by accelerator.num_processes.
Schedule = Callable[[torch.optim.Optimizer, int], Any]


def train(
    accelerator: Accelerator,
    model: nn.Module,
    loader: DataLoader,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    max_steps: int | None,
    schedule: Schedule,
    desc: str,
) -> tuple[nn.Module, float]:
    """AdamW on the trainable parameters under ``schedule``, for ``max_steps`` optimizer steps
    (else ``epochs`` passes over ``loader``); returns the prepared model and the seconds it took."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    steps_per_epoch = math.ceil(len(loader) / accelerator.gradient_accumulation_steps)
    total = max_steps or epochs * steps_per_epoch
    scheduler = accelerator.prepare(schedule(optimizer, total))
    # disable=None: tqdm draws only on a terminal, so a redirected log gets no bar
    progress = tqdm(total=total, desc=desc, disable=None if accelerator.is_local_main_process else True)
    start, step = time.perf_counter(), 0
    model.train()
    while step < total:
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
                if step >= total:
                    break
    progress.close()
    return model, time.perf_counter() - start


@torch.no_grad()
def evaluate_model(accelerator: Accelerator, model: nn.Module, loader: DataLoader, metric_path: str) -> float:
    """Accuracy on ``loader``, gathered over all processes (padding duplicates dropped)."""
    metric = evaluate.load(metric_path, keep_in_memory=True)  # in memory: processes share no cache file
    model.eval()
    for batch in loader:
        labels = batch.pop("labels")
        predictions = model(**batch).logits.argmax(-1)
        predictions, references = accelerator.gather_for_metrics((predictions, labels))
        metric.add_batch(predictions=predictions.cpu(), references=references.cpu())
    return float(metric.compute()["accuracy"])


def use_cpu(requested: bool) -> bool:
    """``Accelerator(cpu=...)``: Accelerate starts a multi-process CPU (gloo) run only with
    cpu=True; without it ``torchrun`` on a machine with no GPU gives independent processes."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return requested or (distributed and not torch.accelerator.is_available())


def add_run_arguments(parser: argparse.ArgumentParser, *, output_dir: Path, metric: Path) -> None:
    """The options every Accelerate example takes the same way: devices, precision, data caps,
    the metric, outputs, seed and threads."""
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None, help="default: accelerate's")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--metric", default=str(metric), help="evaluate module path (default: the local accuracy)")
    parser.add_argument("--output-dir", type=Path, default=output_dir)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: chosen)")
