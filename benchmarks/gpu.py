"""GPU benchmark: a 1B-class Llama in bf16, hf_rpg against dense and against PEFT LoRA, plus kernel costs.

    python -m benchmarks.gpu                          # on the GPU (under 5 minutes on one H100/H200)
    python -m benchmarks.gpu --device cpu --smoke     # a tiny config on CPU: checks that it runs end to end

Writes ``benchmarks/results/gpu.json`` and ``gpu.md`` (``--out-dir`` elsewhere). Measured,
never asserted. All cases run in this one process, one after another, on the same batch:

- **replace**: full fine-tuning of the dense model (AdamW on every parameter) against hf_rpg
  replace mode (``dof=0.1``: the targeted weights generated from a ring of a tenth of their size);
- **delta**: PEFT LoRA r=8 against hf_rpg delta mode with a ring of LoRA's trainable size
  (full-rank update, and low-rank with ``rank="auto"``), on query/value and on all linear layers, with the
  frozen base alone as the floor.

Each case: the step time (forward, backward, AdamW; median of ``--steps`` after ``--warmup``
steps, the device synchronised around each) and, on CUDA, the peak memory allocated during
those steps and what was allocated before them (weights, optimizer state). Then the kernels
alone, in ns per generated element: the fused gather and scatter (Triton on CUDA, numba on
CPU), the int32 index cache's gather and scatter-add, building that cache, and the
generator's tensor path (what CUDA rings without a cache used before the Triton kernels).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.spec import index_kernels
from hf_rpg.spec.generator import build_signed_index, derive_key

transformers.logging.set_verbosity_error()

RESULTS = Path(__file__).resolve().parent / "results"
ATTENTION_QV = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 8

# Llama-3.2-1B's shape (1.24B parameters with tied embeddings), random init.
FULL = {
    "model": dict(vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "batch": 4, "seq": 512, "ring": 1 << 22, "positions": 1 << 28, "tensor_path_positions": 1 << 22,
}  # fmt: skip
SMOKE = {
    "model": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "batch": 2, "seq": 16, "ring": 1 << 10, "positions": 1 << 16, "tensor_path_positions": 1 << 14,
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _llama(settings: dict, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**settings["model"], max_position_embeddings=max(2048, settings["seq"]))
    with torch.device(device):
        return transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)


def _lora_size(model: torch.nn.Module, targets: list[str]) -> int:
    """Trainable parameters of LoRA r=8 on ``targets`` (``r * (in + out)`` per layer)."""
    return sum(
        LORA_RANK * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def _case(name: str, settings: dict, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of one case and what it is."""
    model = _llama(settings, device)
    info: dict = {"case": name}
    if name == "dense":
        pass
    elif name == "frozen base":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    elif name == "rpg replace":
        model = apply_rpg(model, RPGConfig(dof=0.1, seed=0, target_modules=ALL_LINEAR))
    elif name.startswith("lora"):
        import peft  # the bench extra

        targets = ATTENTION_QV if name.endswith("q/v") else ALL_LINEAR
        model = peft.get_peft_model(model, peft.LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules=targets))
    else:  # "rpg delta q/v", "rpg delta all-linear", "rpg low-rank ..."
        targets = ATTENTION_QV if name.endswith("q/v") else ALL_LINEAR
        rank = "auto" if "low-rank" in name else None
        size = _lora_size(model, targets)
        model = apply_rpg(model, RPGConfig(mode="delta", dof=size, rank=rank, seed=0, target_modules=targets))
    if isinstance(model, RPGModel):  # the public plan says how the weights are generated
        ring = next(iter(model.rpg_rings.values()))
        info["generated"] = model.layout.generated_elements
        info["index_cache"] = model.plan.cache_indices
        info["kernels"] = _path(model.plan.cache_indices, ring.device)
    info["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, info


def _path(cache_indices: bool, device: torch.device) -> str:
    """How the engine generates on ``device`` (ring_autograd's choice)."""
    if cache_indices:
        return "int32 index cache"
    if index_kernels.triton_serves(device):
        return "Triton"
    return "numba" if index_kernels.available(device) else "tensor path"


def _step_case(name: str, settings: dict, device: torch.device, steps: int, warmup: int) -> dict:
    model, info = _case(name, settings, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, settings["model"]["vocab_size"], (settings["batch"], settings["seq"]), generator=g)
    batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5) if trainable else None  # the frozen base has none
    model.train()

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        info["allocated_before_steps_gib"] = torch.cuda.memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    info["step_ms"] = 1e3 * statistics.median(times)
    info["step_ms_range"] = [1e3 * min(times), 1e3 * max(times)]
    if device.type == "cuda":
        info["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"  {name}: {info}", flush=True)
    return info


def _release(device: torch.device) -> None:
    """Free the last case's model before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _kernels(settings: dict, device: torch.device, repeats: int) -> list[dict]:
    """ns per generated element of each way of generating (and scattering into) a ring."""
    n, total = settings["ring"], settings["positions"]
    key = derive_key(0, "default")
    ring = torch.randn(n, device=device)
    gain = 0.02
    rows = []

    def row(what: str, count: int, fn: Callable[[], object]) -> None:
        seconds = _timed(fn, device, repeats)
        rows.append({"kernel": what, "elements": count, "ns_per_element": 1e9 * seconds / count})
        print(f"  {what}: {rows[-1]['ns_per_element']:.4f} ns/element", flush=True)

    fused = "Triton" if index_kernels.triton_serves(device) else "numba" if index_kernels.available(device) else None
    out = torch.empty(total, device=device)
    grad = torch.randn(total, device=device)
    grad_ring = torch.zeros(n, device=device)
    if fused is not None:
        row(f"{fused} gather (span)", total,
            lambda: index_kernels.generate_span(ring, key, total, 0, total, gain, out=out))  # fmt: skip
        row(f"{fused} scatter-add (span)", total,
            lambda: index_kernels.accumulate_span_grad(grad_ring, key, total, 0, grad, gain))  # fmt: skip
        positions = torch.randint(0, total, (total // 16,), device=device)
        row(f"{fused} gather (positions)", positions.numel(),
            lambda: index_kernels.generate_at(ring, key, total, positions, gain))  # fmt: skip
    kernels = index_kernels.triton_for(device)
    index = torch.empty(total, dtype=torch.int32, device=device)
    if kernels is not None:
        row("Triton: build the int32 index cache", total,
            lambda: kernels.signed_indices(key, total, n, 0, None, index))  # fmt: skip
    else:
        row("build the int32 index cache (generator)", total,
            lambda: index.copy_(build_signed_index(total, n, key, device=device)))  # fmt: skip
    table = torch.cat((ring, -ring))

    def cached_gather() -> None:
        torch.index_select(table, 0, index, out=out)
        out.mul_(gain)

    row("index cache gather (index_select, * gain)", total, cached_gather)
    signed_grad = torch.zeros(2 * n, device=device)
    row("index cache scatter-add (index_add_)", total, lambda: signed_grad.index_add_(0, index, grad, alpha=gain))
    small = settings["tensor_path_positions"]
    row("generator tensor path, indices only (chunks of 2**18)", small,
        lambda: build_signed_index(total, n, key, start=0, stop=small, device=device))  # fmt: skip
    return rows


def _machine(device: torch.device) -> dict:
    from benchmarks.common import cpu_name

    versions = {}
    for package in ("torch", "transformers", "peft", "triton", "numba"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": versions,
    }


CASES = ["dense", "rpg replace", "frozen base", "lora q/v", "rpg delta q/v", "rpg low-rank q/v", "lora all-linear",
         "rpg delta all-linear", "rpg low-rank all-linear"]  # fmt: skip


# (hf_rpg case, the case it is compared with)
COMPARED = [("rpg replace", "dense"), ("rpg delta q/v", "lora q/v"), ("rpg low-rank q/v", "lora q/v"),
            ("rpg delta all-linear", "lora all-linear"), ("rpg low-rank all-linear", "lora all-linear")]  # fmt: skip


def _ratio(rows: dict[str, dict], a: str, b: str, field: str) -> str:
    if field not in rows[a] or field not in rows[b]:
        return "-"
    return f"{rows[a][field] / rows[b][field]:.2f}"


def _markdown(result: dict) -> str:
    m = result["machine"]
    on_gpu = m["device"].startswith("cuda")
    lines = ["# GPU benchmark (`python -m benchmarks.gpu`)", ""]
    if not on_gpu:
        lines += [
            "**This benchmark has not run on a GPU yet.** This file was written by a CPU run "
            f"(`--device {m['device']}{' --smoke' if result['smoke'] else ''}`), which only shows that the "
            "benchmark runs end to end: its numbers are a tiny model on a CPU and say nothing about GPUs. "
            "Run `python -m benchmarks.gpu` on one GPU (under 5 minutes) to replace it.",
            "",
        ]
    model = result["settings"]["model"]
    lines += [
        f"Measured {m['date']} on {m['gpu'] or m['cpu']} ({m['device']}; {m['logical_cores']} logical cores, "
        f"torch threads {m['torch_threads']}, one-minute load {m['load_average_1min_start']:.1f} at start), "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Model: Llama, hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, intermediate "
        f"{model['intermediate_size']}, vocabulary {model['vocab_size']}, tied embeddings, random init, bf16 "
        f"weights (hf_rpg rings float32); batch {result['settings']['batch']} x {result['settings']['seq']} "
        f"tokens; AdamW; median of {result['steps']} steps after {result['warmup']} warm-up steps. Peak: "
        "memory allocated during the timed steps; before: allocated before them (weights, optimizer state).",
        "",
        "| case | generation | trainable | step ms (range) | peak GiB | before GiB |",
        "|---|---|---|---|---|---|",
    ]
    rows = {r["case"]: r for r in result["cases"]}
    for r in result["cases"]:
        low, high = r["step_ms_range"]
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        before = f"{r['allocated_before_steps_gib']:.2f}" if "allocated_before_steps_gib" in r else "-"
        lines.append(
            f"| {r['case']} | {r.get('kernels', '-')} | {r['trainable']:,} | {r['step_ms']:.1f} "
            f"({low:.1f}-{high:.1f}) | {peak} | {before} |"
        )
    lines += ["", "Ratios (step time; peak memory where measured):", ""]
    for a, b in COMPARED:
        if a in rows and b in rows:
            lines.append(
                f"- {a} / {b}: step {_ratio(rows, a, b, 'step_ms')}, peak memory {_ratio(rows, a, b, 'peak_gib')}"
            )
    lines += [
        "",
        f"Kernels: a ring of {result['settings']['ring']:,} float32 entries, {result['settings']['positions']:,} "
        "positions (the tensor path on fewer), median of the repeats after one warm-up.",
        "",
        "| kernel | elements | ns per element |",
        "|---|---|---|",
    ]
    lines += [f"| {k['kernel']} | {k['elements']:,} | {k['ns_per_element']:.4f} |" for k in result["kernels"]]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and kernel sizes (seconds, any device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per case (default 3; smoke 1)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu.json and gpu.md go")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu --smoke for a CPU run", file=sys.stderr)
        return 2
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown --cases {unknown}; valid: {', '.join(CASES)}")
    settings = SMOKE if args.smoke else FULL
    steps = args.steps or (2 if args.smoke else 10)
    warmup = args.warmup or (1 if args.smoke else 3)
    started = time.perf_counter()
    result = {"machine": _machine(device), "smoke": args.smoke, "settings": settings, "steps": steps,
              "warmup": warmup, "cases": [], "kernels": []}  # fmt: skip
    print(f"steps on {device}:", flush=True)
    for name in cases:
        result["cases"].append(_step_case(name, settings, device, steps, warmup))
        _release(device)
    print("kernels:", flush=True)
    result["kernels"] = _kernels(settings, device, repeats=steps)
    result["wall_s"] = time.perf_counter() - started
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out_dir / "gpu.md").write_text(_markdown(result))
    print(f"wrote {args.out_dir / 'gpu.md'} and gpu.json in {result['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
