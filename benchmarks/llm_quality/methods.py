"""The methods compared on SmolLM2, each sized to a budget of trainable numbers.

PEFT's peers target the attention's ``q_proj`` and ``v_proj`` (PEFT's LoRA default for
Llama); hf_rpg's variants are ``RPGConfig(mode="delta", dof=budget, seed=seed, **variant)``.
A method with a discrete size (LoRA's r, VeRA's r, VB-LoRA's vectors) omits a budget that its
nearest configuration misses by more than ``BUDGET_TOLERANCE``; ``Plan.omitted`` says why.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.llm_quality.candidates import CANDIDATES, apply_candidate
from benchmarks.peft_peers import peft_peer
from benchmarks.quality.methods import Plan  # one (method, budget) and its lr grid, as there
from benchmarks.rpg_update import with_update
from hf_rpg import RPGConfig, apply_rpg

QV = ["q_proj", "v_proj"]
BUDGET_TOLERANCE = 1.5
VERA_MAX_RANK = 1024  # the largest r of the VeRA paper's experiments
VBLORA_LOGITS_LR_FACTOR = 10.0  # VB-LoRA's scripts: vector bank 1e-3, logits 1e-2
VBLORA_VECTOR_LENGTH = 64  # divides SmolLM2's 576 (hidden) and 192 (key/value width)
FOURIERFT_SCALING = 150.0  # the docstring's value for RoBERTa on GLUE; the lr grid covers the rest

# hf_rpg variants: name -> RPGConfig keyword arguments besides mode="delta", dof, seed.
RPG_VARIANTS: dict[str, dict[str, Any]] = {
    "rpg": {},  # the library's defaults (query and value; rpg-lora-v1 up to 2,048 ring entries, full rank above)
    "rpg-full": {"update": "full"},  # query and value, full rank (the defaults' kind before rpg-lora-v1)
    "rpg-lowrank": {"rank": "auto"},  # rpg-lowrank-v1
    "rpg-all-linear": {"target_modules": "all-linear", "update": "full"},  # every linear layer but the LM head
}
PEERS = ("lora", "vera", "unilora", "tinylora", "fourierft", "vblora")
BASELINES = ("full",)
METHODS = (*BASELINES, *PEERS, *RPG_VARIANTS, *CANDIDATES)

# Learning-rate grids, log-spaced ~3x; the runner widens a grid until its pick is interior.
LR_GRIDS: dict[str, list[float]] = {
    "full": [1e-5, 3e-5, 1e-4],
    "lora": [1e-3, 3e-3, 1e-2],
    "vera": [3e-3, 1e-2, 3e-2],
    "unilora": [3e-3, 1e-2, 3e-2],
    "tinylora": [3e-3, 1e-2, 3e-2],
    "fourierft": [1e-2, 3e-2, 1e-1],
    "vblora": [1e-3, 3e-3, 1e-2],
    "rpg": [1e-3, 3e-3, 1e-2],
    "cand-rpg-lora": [1e-3, 3e-3, 1e-2],
}


def is_rpg(method: str) -> bool:
    return method in RPG_VARIANTS or method.startswith("rpg-")


def qv_targets(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(name, in_features, out_features)`` of every q_proj / v_proj."""
    return [
        (name, m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in QV
    ]


def _within(count: int, budget: int) -> bool:
    return 1 / BUDGET_TOLERANCE <= count / budget <= BUDGET_TOLERANCE


def plan(base: nn.Module, method: str, budget: int) -> Plan:
    """The configuration of ``method`` nearest to ``budget`` trainable numbers on ``base``."""
    targets = qv_targets(base)
    n = len(targets)
    io = sum(i + o for _, i, o in targets)
    if method == "lora":
        r = max(1, round(budget / io))
        cfg = {"r": r, "lora_alpha": 2 * r}  # alpha = 2r: the common practice PEFT's guides quote
        if not _within(r * io, budget):
            return Plan(method, budget, None, [], f"the nearest LoRA (r={r}) has {r * io:,} parameters")
        return Plan(method, budget, cfg, LR_GRIDS[method])
    if method == "vera":
        outs = sum(o for _, _, o in targets)
        rank = max(1, round((budget - outs) / n))
        rank = min(rank, VERA_MAX_RANK)
        count = n * rank + outs
        if not _within(count, budget):
            why = f"VeRA's nearest (r={rank}) has {count:,} parameters ({n} targets x (r + out))"
            return Plan(method, budget, None, [], why)
        return Plan(method, budget, {"r": rank, "d_initial": 0.1}, LR_GRIDS[method])
    if method == "unilora":
        r = 4
        while r * io < 1.5 * budget:
            r *= 2
        return Plan(method, budget, {"r": r, "theta_d_length": budget}, LR_GRIDS[method])
    if method == "tinylora":
        u = max(1, round(budget / n))  # one trainable vector of length u per target (no tying)
        return Plan(method, budget, {"r": 2, "u": u}, LR_GRIDS[method])
    if method == "fourierft":
        freq = max(1, round(budget / n))
        return Plan(method, budget, {"n_frequency": freq, "scaling": FOURIERFT_SCALING}, LR_GRIDS[method])
    if method == "vblora":
        length = VBLORA_VECTOR_LENGTH
        for r in (4, 2, 1):
            logits = sum(r * (i // length) + r * (o // length) for _, i, o in targets)  # per vector
            vectors = round(budget / (length + logits))
            if vectors >= 4:
                return Plan(
                    method,
                    budget,
                    {"r": r, "num_vectors": vectors, "vector_length": length, "topk": 2},
                    LR_GRIDS[method],
                )
        return Plan(method, budget, None, [], f"fewer than 4 vectors of length {length} fit at r=1")
    if method in RPG_VARIANTS:
        return Plan(method, budget, with_update({"dof": budget, **RPG_VARIANTS[method]}, budget), LR_GRIDS["rpg"])
    if method in CANDIDATES:
        return Plan(method, budget, {"dof": budget, **CANDIDATES[method]}, LR_GRIDS[method])
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def plans(base: nn.Module, methods: list[str], budgets: list[int]) -> list[Plan]:
    """Every (method, budget) to run; LoRA also at r=1 (the goals' reference) and full fine-tuning once."""
    out = []
    io = sum(i + o for _, i, o in qv_targets(base))
    for method in methods:
        if method == "full":
            out.append(Plan(method, "full", {}, LR_GRIDS["full"]))
            continue
        if method == "lora":
            out.append(Plan(method, io, {"r": 1, "lora_alpha": 2}, LR_GRIDS["lora"]))
        out += [plan(base, method, b) for b in budgets]
    return out


def build(base: nn.Module, p: Plan, seed: int) -> tuple[nn.Module, list[dict[str, Any]], int, dict[str, Any]]:
    """A fresh copy of ``base`` with the method applied: ``(model, parameter groups with a 'scale'
    of the method lr, trainable count, facts for the record)``."""
    import copy

    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    extra: dict[str, Any] = {}
    if p.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif p.method in PEERS:
        model = peft_peer(model, p.method, p.config or {}, seed, target_modules=QV, task_type="CAUSAL_LM")
    elif p.method in CANDIDATES:
        extra["generated_positions"] = apply_candidate(model, p.method, p.budget, seed, QV)
    else:
        model = apply_rpg(model, RPGConfig(mode="delta", seed=seed, **(p.config or {})))
        report = model.dof_report()
        extra["ring_dof"] = int(report.ring_dof)
        extra["rpg_generated_elements"] = int(report.generated_elements)
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    count = sum(q.numel() for _, q in named)
    if is_rpg(p.method) and count != extra["ring_dof"]:
        raise RuntimeError(f"{p.method}: trainable {count} != ring {extra['ring_dof']}")
    if p.method == "vblora":
        groups = [
            {"params": [q for n, q in named if "logits" not in n], "scale": 1.0},
            {"params": [q for n, q in named if "logits" in n], "scale": VBLORA_LOGITS_LR_FACTOR},
        ]
    else:
        groups = [{"params": [q for _, q in named], "scale": 1.0}]
    return model, groups, count, extra
