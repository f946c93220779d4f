"""Section 7 of the suite: step time and adapter size of hf_rpg against PEFT's adapters on MiniLM."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import (
    bench_device,
    interleaved_medians,
    minilm_workload,
    tensor_bytes,
    train_step_fn,
)
from benchmarks.sections import LORA_R1_MINILM, LORA_R8_MINILM, run_worker, summarise
from hf_rpg import RPGConfig, apply_rpg


def _peft_models():
    import peft

    task = peft.TaskType.SEQ_CLS
    qv = ["query", "value"]
    configs = {
        "LoRA r=8": ("LoraConfig", {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}),
        "LoRA r=1": ("LoraConfig", {"r": 1, "lora_alpha": 2, "lora_dropout": 0.0}),
        "VeRA r=256": ("VeraConfig", {"r": 256, "vera_dropout": 0.0}),
        "VB-LoRA": ("VBLoRAConfig", {"r": 4, "num_vectors": 256, "vector_length": 128, "vblora_dropout": 0.0}),
        "UniLoRA": ("UniLoraConfig", {"r": 8, "theta_d_length": LORA_R8_MINILM}),
        "FourierFT n=1000": ("FourierFTConfig", {"n_frequency": 1000}),
    }
    # an older PEFT may lack a method: it is left out of the table rather than failing it
    return {
        name: getattr(peft, cls)(task_type=task, target_modules=qv, **options)
        for name, (cls, options) in configs.items()
        if hasattr(peft, cls)
    }


def _frozen_base(model: torch.nn.Module) -> torch.nn.Module:
    """The base with every weight frozen but the classifier, and gradients flowing back
    through all layers (as any adapter needs): the baseline the peers are measured against."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("classifier"))
    model.enable_input_require_grads()
    return model


def _adapter_bytes(save) -> int:
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def peers(quick: bool) -> list[dict]:
    """MiniLM fine-tuning: hf_rpg delta vs PEFT methods, step time relative to the frozen
    base; each method's median over ``processes`` fresh processes, with the range."""
    try:
        import peft  # noqa: F401
    except ModuleNotFoundError:
        return [{"method": "PEFT not installed (pip install -e .[bench])"}]
    processes, repeats = (1, 5) if quick else (3, 7)
    runs = [run_worker("peers", "all", repeats) for _ in range(processes)]
    return [summarise([run[i] for run in runs]) for i in range(len(runs[0]))]


def peers_once(repeats: int) -> list[dict]:
    """One process's measurement of every peer (run by ``worker.py``)."""
    import peft

    w = minilm_workload()
    device = bench_device()
    batch = {k: v.to(device) for k, v in w.batch().items()}
    torch.manual_seed(0)
    frozen = _frozen_base(w.build())
    base_buffers = tensor_bytes(frozen.buffers())
    info = {"frozen base": {"trainable": sum(p.numel() for p in frozen.parameters() if p.requires_grad)}}
    steps = {"frozen base": train_step_fn(frozen.to(device), batch)}
    for name, config in _peft_models().items():
        torch.manual_seed(0)
        model = peft.get_peft_model(w.build(), config).to(device)
        steps[name] = train_step_fn(model, batch)
        info[name] = {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "adapter_bytes": _adapter_bytes(model.save_pretrained),
            "buffer_bytes": tensor_bytes(model.buffers()) - base_buffers,
        }
    # the defaults are query and value, full rank; rank="auto" is the low-rank option
    rpg_rows = {
        "hf_rpg delta, defaults": {},
        "hf_rpg delta, defaults, ring of LoRA r=1's size": {"dof": LORA_R1_MINILM},
        "hf_rpg delta, rank='auto'": {"rank": "auto"},
        "hf_rpg delta, rank='auto', ring of LoRA r=1's size": {"rank": "auto", "dof": LORA_R1_MINILM},
        "hf_rpg delta (every layer), full rank": {"target_modules": "all", "rank": None},
    }
    for name, options in rpg_rows.items():
        torch.manual_seed(0)
        model = apply_rpg(w.build(), RPGConfig(mode="delta", **({"dof": LORA_R8_MINILM} | options)))
        model.to(device)
        steps[name] = train_step_fn(model, batch)
        steps[name]()  # builds the reusable buffer, counted below
        stats = model.runtime_stats()
        info[name] = {
            "trainable": model.dof_report().trainable,
            "adapter_bytes": _adapter_bytes(model.save_pretrained),
            "buffer_bytes": stats.index_cache_bytes + stats.pooled_bytes,
        }
    times = interleaved_medians(steps, repeats=repeats)
    base = times["frozen base"]["median"]
    rows = []
    for name, data in info.items():
        rows.append(
            {"method": name, "step_ms": 1e3 * times[name]["median"], "ratio": times[name]["median"] / base} | data
        )
    return rows
