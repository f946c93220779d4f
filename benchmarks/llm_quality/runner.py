"""Training one run, and the protocol over runs: learning rates picked on validation, seeds.

Every finished run is one JSON line appended to the results file (flushed and fsynced); a run
already there is skipped, so a killed benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.library_identity import kind_digests, library_identity, probe_digest
from benchmarks.llm_quality import methods, tasks
from benchmarks.lr_selection import MAX_WIDENINGS, pick_lr, widen
from benchmarks.quality.loop import schedule
from benchmarks.quality.record import git_commit, machine, peak_rss_mib, reset_peak_rss, source_hash
from benchmarks.quality.results import append_result, read_results

SEEDS = (0, 1, 2)
GRAD_CLIP = 1.0
EPOCHS = 1


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def run_one(base: nn.Module, task: tasks.LLMTask, p: methods.Plan, lr: float, seed: int) -> dict[str, Any]:
    """Train ``p`` at ``lr`` from ``seed`` on ``task`` and grade it; the record of the run."""
    device = next(base.parameters()).device
    reset_peak_rss()
    model, groups, count, extra = methods.build(base, p, seed)
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "lr": lr * g["scale"]} for g in groups if g["params"]], weight_decay=0.0
    )
    params = [q for g in groups for q in g["params"]]
    orders = [task.train_batches(seed * 1000 + epoch) for epoch in range(EPOCHS)]
    steps = sum(len(o) for o in orders)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(steps))
    torch.manual_seed(seed)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for order in orders:
        for idx in order:
            batch = _to(tasks.collate([task.train[i] for i in idx], task.pad_id), device)
            loss = tasks.answer_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    val_acc, val_loss = tasks.exact_match(model, task.val, task.pad_id, device=device)
    test_acc, test_loss = tasks.exact_match(model, task.test, task.pad_id, device=device)
    eval_seconds = time.perf_counter() - start
    tail = losses[-16:]
    return {
        "kind": "run",
        "task": task.name,
        "method": p.method,
        "budget": p.budget,
        "config": p.config,
        "lr": lr,
        "seed": seed,
        "trainable": count,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "train_loss_last16": statistics.fmean(tail) if tail else None,
        "finite": all(math.isfinite(v) for v in losses),
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "device": str(device),
        "load_average_1min": os.getloadavg()[0],
        **extra,
    }


def lr_key(lr: float) -> str:
    return f"{lr:.2g}"


def run_key(rec: dict[str, Any]) -> str:
    """A run's identity; hf_rpg variants also by the numbers their hf_rpg computes
    (``benchmarks.library_identity``), so that a refactor keeps its runs and a change of numerics does not."""
    fields = [rec["task"], rec["method"], rec["budget"], rec["config"], lr_key(rec["lr"]), rec["seed"]]
    if methods.is_rpg(rec["method"]):
        fields.append(library_identity(rec))
    return json.dumps(fields, sort_keys=True)


class Runner:
    """Runs plans under the protocol, skipping what the results file already holds."""

    def __init__(self, results: Path, device: str, log: Callable[[str], None] = print):
        import hf_rpg

        self.results = results
        self.log = log
        self.done = {run_key(r): r for r in read_results(results) if r.get("kind") == "run"}
        library = Path(hf_rpg.__file__).resolve().parent
        self.meta = {
            "commit": git_commit(library),
            "hf_rpg_source": source_hash(library),
            "hf_rpg_numerics": probe_digest(),
            **kind_digests(),
            "machine": machine(),
            "device_requested": device,
        }

    def run(self, base: nn.Module, task: tasks.LLMTask, p: methods.Plan, lr: float, seed: int) -> dict[str, Any]:
        probe = {"task": task.name, "method": p.method, "budget": p.budget, "config": p.config, "lr": lr, "seed": seed}
        probe.update({k: v for k, v in self.meta.items() if k.startswith("hf_rpg_numerics")})
        key = run_key(probe)
        if key in self.done:
            return self.done[key]
        rec = run_one(base, task, p, lr, seed)
        rec.update(self.meta, settings=task.settings, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        append_result(self.results, rec)
        self.done[key] = rec
        self.log(
            f"{task.name} {p.method} {p.budget} lr={lr:g} seed={seed}: val {rec['val_acc']:.4f} "
            f"test {rec['test_acc']:.4f} ({rec['train_seconds']:.0f}+{rec['eval_seconds']:.0f} s)"
        )
        return rec

    def protocol(self, base: nn.Module, task: tasks.LLMTask, p: methods.Plan, seeds: tuple[int, ...]) -> None:
        """Seed 0 over the grid, widened until the pick is interior, then the other seeds at the pick."""
        if p.omitted:
            return
        lrs = list(p.lrs)
        runs = [self.run(base, task, p, lr, 0) for lr in lrs]
        for _ in range(MAX_WIDENINGS):
            extra = widen(lrs, pick_lr(runs))
            if extra is None:
                break
            lrs.append(extra)
            runs.append(self.run(base, task, p, extra, 0))
        picked = pick_lr(runs)
        if picked is None:
            return
        for seed in seeds[1:]:
            self.run(base, task, p, picked, seed)
