"""Shared pieces of the benchmark suite: machine description, timing, model builders."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from hf_rpg_studies import data as example_data

# The checkout (benchmarks run from it: python -m benchmarks <name>) and where every result goes.
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

transformers.logging.set_verbosity_error()


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_info(threads: int, device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    cpu = cpu_name()
    versions = {}
    for package in ("torch", "transformers", "accelerate", "safetensors", "peft", "hf_rpg"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(package)  # imported from the checkout, not installed
            versions[package] = getattr(module, "__version__", "not installed")

    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def bench_device() -> torch.device:
    """Where the timed models run: ``python -m benchmarks suite --device cuda`` sets it for
    its own and the worker processes (step, inference and peers sections)."""
    return torch.device(os.environ.get("HF_RPG_BENCH_DEVICE", "cpu"))


def synchronize() -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if bench_device().type == "cuda":
        torch.cuda.synchronize(bench_device())


def to_device(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """The model and batch on ``bench_device()``."""
    device = bench_device()
    return model.to(device), {k: v.to(device) for k, v in batch.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 7) -> dict:
    """Median seconds of each function, measured in alternation so that load on the
    machine hits all of them alike. Returns {name: {"median": s, "min": s, "runs": [...]}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(r), "min": min(r), "runs": r} for name, r in runs.items()}


def train_step_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-4) -> Callable[[], None]:
    """Forward, backward and an AdamW step on the trainable parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------ models


@dataclass
class Workload:
    """A model, a batch and how it is described in the results."""

    name: str
    description: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[], dict[str, torch.Tensor]]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image_batch(batch_size: int) -> dict[str, torch.Tensor]:
    """32 x 32 RGB images and labels of 10 classes (the ViT and ResNet workloads)."""
    g = _generator()
    return {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=g),
        "labels": torch.randint(0, 10, (batch_size,), generator=g),
    }


def vit_workload(batch_size: int = 64) -> Workload:
    def build():
        config = transformers.ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=192,
            num_hidden_layers=12,
            num_attention_heads=3,
            intermediate_size=768,
            num_labels=10,
        )
        return transformers.ViTForImageClassification(config)

    def batch():
        return _image_batch(batch_size)

    return Workload("vit", f"ViT 12x192, 32 px, patch 4, batch {batch_size}", build, batch)


def resnet18_workload(batch_size: int = 64) -> Workload:
    def build():
        config = transformers.ResNetConfig(
            num_channels=3,
            embedding_size=64,
            hidden_sizes=[64, 128, 256, 512],
            depths=[2, 2, 2, 2],
            layer_type="basic",
            num_labels=10,
        )
        return transformers.ResNetForImageClassification(config)

    def batch():
        return _image_batch(batch_size)

    return Workload("resnet18", f"ResNet-18 widths, 32 px, batch {batch_size}", build, batch)


def bert_mini_workload(batch_size: int = 32, seq: int = 128) -> Workload:
    def build():
        config = transformers.BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=2
        )
        return transformers.BertForSequenceClassification(config)

    def batch():
        g = _generator()
        return {
            "input_ids": torch.randint(0, 30522, (batch_size, seq), generator=g),
            "labels": torch.randint(0, 2, (batch_size,), generator=g),
        }

    return Workload("bert-mini", f"BERT-mini 4x256, seq {seq}, batch {batch_size}", build, batch)


def minilm_path() -> str | None:
    """``hf_rpg_studies.data.minilm_path()`` (the pretrained all-MiniLM-L6-v2), or None when that
    is the Hub name and the Hub is off (offline without the package)."""
    path = example_data.minilm_path()
    return None if path == example_data.MINILM_HUB and os.environ.get("HF_HUB_OFFLINE") == "1" else path


def minilm_workload(batch_size: int = 16, seq: int = 64) -> Workload:
    path = minilm_path()

    def build():
        if path is None:  # same architecture, random weights: the timings do not depend on them
            config = transformers.BertConfig(
                hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2
            )
            return transformers.BertForSequenceClassification(config)
        return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def batch():
        g = _generator()
        return {
            "input_ids": torch.randint(1000, 30000, (batch_size, seq), generator=g),
            "attention_mask": torch.ones(batch_size, seq, dtype=torch.int64),
            "labels": torch.randint(0, 2, (batch_size,), generator=g),
        }

    weights = "pretrained" if path is not None else "random init, same architecture"
    return Workload("minilm", f"all-MiniLM-L6-v2 ({weights}), seq {seq}, batch {batch_size}", build, batch)


def fresh_pair(workload: Workload, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two identical copies of a workload's model (same initialisation)."""
    torch.manual_seed(seed)
    model = workload.build()
    return model, copy.deepcopy(model)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
