"""What runs: the plan of learning rates per method and budget, and each method's model
(PEFT's peers built with their own library, hf_rpg's variants with apply_rpg)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from benchmarks.peft_peers import peft_peer
from benchmarks.rpg_update import with_update
from hf_rpg import RPGConfig, apply_rpg

from .protocol import (
    BUDGET_TOLERANCE,
    HEAD_LR,
    LORA_ALPHA_PER_RANK,
    LR_GRIDS,
    PEERS,
    RPG_VARIANTS,
    VERA_MAX_RANK,
    _is_head,
    qv_names,
    qv_targets,
)
from .tasks import Task

transformers.logging.set_verbosity_error()
with contextlib.suppress(AttributeError):  # the progress bars of from_pretrained
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Plan:
    """One (method, budget) of a task: its configuration, or why the budget is omitted."""

    method: str
    budget: int | str
    config: dict[str, Any] | None
    lrs: list[float]
    omitted: str | None = None


def _nearest(candidates: list[tuple[int, dict]], budget: int) -> tuple[int, dict]:
    return min(candidates, key=lambda c: (abs(math.log(c[0] / budget)), c[0]))


def plan(task: Task, method: str, budget: int) -> Plan:
    """The configuration of ``method`` closest to ``budget`` trainable numbers on ``task``."""
    targets = qv_targets(task.base)
    n = len(targets)
    hidden = task.base.config.hidden_size
    io = sum(i + o for _, i, o in targets)
    if method == "lora":
        ranks = range(1, min(i for _, i, _ in targets) + 1)
        cands = [(r * io, {"r": r, "lora_alpha": LORA_ALPHA_PER_RANK * r}) for r in ranks]
        count, cfg = _nearest(cands, budget)
        if not 1 / BUDGET_TOLERANCE <= count / budget <= BUDGET_TOLERANCE:
            return Plan(method, budget, None, [], f"the nearest LoRA (r={cfg['r']}) has {count:,} parameters")
        return Plan(method, budget, cfg, LR_GRIDS[method])
    if method == "vera":
        outs = sum(o for _, _, o in targets)
        rank = max(1, round((budget - outs) / n))
        count = n * rank + outs
        reason = None
        if rank > VERA_MAX_RANK:
            reason = f"needs r={rank:,} (> {VERA_MAX_RANK}, the VeRA paper's largest; hidden {hidden})"
        elif not 1 / BUDGET_TOLERANCE <= count / budget <= BUDGET_TOLERANCE:
            reason = f"the smallest VeRA (r=1) has {count:,} parameters ({n} targets x (r + {outs // n}))"
        if reason:
            return Plan(method, budget, None, [], reason)
        return Plan(method, budget, {"r": rank, "d_initial": 0.1}, LR_GRIDS[method])
    if method == "unilora":
        r = 4
        while r * io < 1.5 * budget and r < hidden:
            r *= 2
        return Plan(method, budget, {"r": r, "theta_d_length": budget}, LR_GRIDS[method])
    if method == "fourierft":
        scaling = 150.0 if task.name == "text" else 300.0
        freq = max(1, round(budget / n))
        # init_weights=True (a zero start, benchmarks/peft_peers.py) is in the config so that runs made
        # with PEFT's random start are neither skipped nor mixed into this row
        config = {"n_frequency": freq, "scaling": scaling, "init_weights": True}
        return Plan(method, budget, config, LR_GRIDS[method])
    if method == "vblora":
        length = 128 if task.name == "text" else 64
        r = 4
        while True:
            logits = sum(r * (i // length) + (o // length) * r for _, i, o in targets)  # per vector
            vectors = round(budget / (length + logits))
            if vectors >= 4 or r == 1:
                break
            r //= 2
        if vectors < 4:
            return Plan(method, budget, None, [], f"fewer than 4 vectors of length {length} fit")
        cfg = {"r": r, "num_vectors": vectors, "vector_length": length, "topk": 2}
        return Plan(method, budget, cfg, LR_GRIDS[method])
    if method in RPG_VARIANTS:
        desc = {k: (repr(v) if callable(v) else v) for k, v in RPG_VARIANTS[method].items()}
        return Plan(method, budget, with_update({"dof": budget, **desc}, budget), LR_GRIDS["rpg"])
    raise ValueError(f"unknown method {method!r}")


def plans(task: Task, methods: list[str], budgets: list[int], smoke: bool) -> list[Plan]:
    out = []
    for method in methods:
        if method == "head":
            out.append(Plan(method, 0, {}, [HEAD_LR[task.name]]))
        elif method == "full":
            out.append(Plan(method, "full", {}, LR_GRIDS["full"]))
        else:
            out += [plan(task, method, b) for b in budgets]
    if smoke:
        for p in out:
            p.lrs = p.lrs[len(p.lrs) // 2 : len(p.lrs) // 2 + 1]
    return out


def build(task: Task, p: Plan, seed: int) -> tuple[nn.Module, list[dict], int, dict]:
    """The model of one run, its parameter groups (without lrs), the method's trainable count
    and extra facts for the record."""
    torch.manual_seed(seed)
    model = task.fresh_model(seed)
    extra: dict[str, Any] = {}
    if p.method in ("head", "full"):
        for name, param in model.named_parameters():
            param.requires_grad_(p.method == "full" or _is_head(name))
    elif p.method in PEERS:
        common = {"target_modules": qv_names(model), "modules_to_save": ["classifier"]}
        if task.task_type:
            common["task_type"] = task.task_type
        model = peft_peer(model, p.method, p.config, seed, **common)
    else:
        kwargs = {k: (v(model) if callable(v) else v) for k, v in RPG_VARIANTS[p.method].items()}
        kwargs["update"] = p.config["update"]  # the kind the plan resolved and records
        if "target_modules" in kwargs and isinstance(kwargs["target_modules"], list):
            extra["rpg_targets"] = len(kwargs["target_modules"])
        model = apply_rpg(model, RPGConfig(mode="delta", dof=p.budget, seed=seed, **kwargs))
        report = model.dof_report()
        extra["ring_dof"] = int(report.ring_dof)
        extra["rpg_generated_elements"] = int(report.generated_elements)
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    head = [q for n, q in named if _is_head(n)]
    own = [(n, q) for n, q in named if not _is_head(n)]
    if p.method in RPG_VARIANTS:
        rings = {id(q) for q in model.rpg_rings.parameters()}
        stray = [n for n, q in own if id(q) not in rings]
        if stray:
            raise RuntimeError(f"{p.method}: trainable parameters other than the ring and head: {stray[:5]}")
    if not head:
        raise RuntimeError(f"{p.method}: the head does not train")
    count = sum(q.numel() for _, q in own)
    if p.method in PEERS:
        total = model.get_nb_trainable_parameters()[0]
        assert total - sum(q.numel() for q in head) == count, (total, count)
    if p.method in RPG_VARIANTS:
        assert extra["ring_dof"] == count, (extra["ring_dof"], count)
    groups = [{"params": head, "role": "head"}]
    if p.method == "vblora":
        groups.append({"params": [q for n, q in own if "logits" not in n], "role": "method"})
        groups.append({"params": [q for n, q in own if "logits" in n], "role": "logits"})
    elif own:
        groups.append({"params": [q for _, q in own], "role": "method"})
    return model, groups, count, extra


# ---------------------------------------------------------------------------- training
