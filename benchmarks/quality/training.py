"""One run: the schedule, the training loop and the evaluation."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from typing import Any

import torch
import transformers

from .loop import evaluate, schedule
from .methods import Plan, build
from .protocol import GRAD_CLIP, HEAD_LR, VBLORA_LOGITS_LR_FACTOR
from .record import peak_rss_mib, reset_peak_rss
from .tasks import Task

transformers.logging.set_verbosity_error()
with contextlib.suppress(AttributeError):  # the progress bars of from_pretrained
    transformers.utils.logging.disable_progress_bar()


def run_one(task: Task, p: Plan, lr: float, seed: int) -> dict[str, Any]:
    reset_peak_rss()
    model, groups, count, extra = build(task, p, seed)
    head_lr = HEAD_LR[task.name]
    for g in groups:
        role = g.pop("role")
        g["lr"] = head_lr if role == "head" else lr * (VBLORA_LOGITS_LR_FACTOR if role == "logits" else 1.0)
    params = [q for g in groups for q in g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    orders = [task.train_order(seed * 1000 + epoch) for epoch in range(task.epochs)]
    steps = sum(len(o) for o in orders)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(steps))
    torch.manual_seed(seed)  # dropout
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for order in orders:
        for idx in order:
            loss = model(**task.collate(task.train, idx)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    val_acc, val_loss = evaluate(model, task.val, task.collate, task.eval_order(task.val))
    test_acc, test_loss = evaluate(model, task.test, task.collate, task.eval_order(task.test))
    eval_seconds = time.perf_counter() - start
    tail = losses[-20:]
    return {
        "kind": "run",
        "task": task.name,
        "method": p.method,
        "budget": p.budget,
        "config": p.config,
        "lr": lr,
        "seed": seed,
        "trainable": count,
        "head_trainable": sum(q.numel() for q in groups[0]["params"]),
        "head_lr": head_lr,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "train_loss_last20": statistics.fmean(tail) if tail else None,
        "finite": all(math.isfinite(v) for v in losses),
        "steps": steps,
        "epochs": task.epochs,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / task.epochs,
        "eval_seconds": eval_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "load_average_1min": os.getloadavg()[0],  # other work on the machine slows the timings
        **extra,
    }


# ---------------------------------------------------------------------------- results
