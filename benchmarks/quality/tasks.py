"""The two tasks: all-MiniLM-L6-v2 on rt-polarity (text) and a small ViT pretrained on
Fashion-MNIST classes 0-4, fine-tuned on classes 5-9 (vision)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from hf_rpg_studies import data as example_data

from .loop import evaluate, schedule
from .protocol import GRAD_CLIP, TEXT_EPOCHS, TEXT_TRAIN, TEXT_VAL, VISION_EPOCHS

transformers.logging.set_verbosity_error()
with contextlib.suppress(AttributeError):  # the progress bars of from_pretrained
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Task:
    """One fine-tuning task: data, the base model (copied for every run) and its settings."""

    name: str
    epochs: int
    batch_size: int
    base: nn.Module
    train: Any
    val: Any
    test: Any
    collate: Callable[[Any, np.ndarray], dict[str, torch.Tensor]]
    train_order: Callable[[int], list[np.ndarray]]
    eval_order: Callable[[Any], list[np.ndarray]]
    task_type: str | None
    settings: dict[str, Any] = field(default_factory=dict)

    def fresh_model(self, seed: int) -> nn.Module:
        """A copy of the base model with a new head initialised from ``seed``."""
        model = copy.deepcopy(self.base)
        head = model.classifier
        std = getattr(model.config, "initializer_range", 0.02)
        generator = torch.Generator().manual_seed(10_000 + seed)
        with torch.no_grad():
            head.weight.normal_(0.0, std, generator=generator)
            head.bias.zero_()
        return model


def load_text_task(smoke: bool) -> Task:
    sizes = (48, 32, 32) if smoke else (TEXT_TRAIN, TEXT_VAL, None)
    data = example_data.load_rt_polarity()
    tokenizer = transformers.AutoTokenizer.from_pretrained(example_data.minilm_path())
    order = np.random.default_rng(0).permutation(len(data["train"]))
    n_train, n_val, n_test = sizes
    val_ids = order[:n_val]
    train_ids = order[n_val:] if n_train is None else order[n_val : n_val + n_train]
    test_ids = np.arange(len(data["test"]) if n_test is None else n_test)

    def encode(split: str, ids: np.ndarray) -> dict[str, Any]:
        rows = data[split].select(ids.tolist())
        enc = tokenizer(list(rows["text"]), truncation=True, max_length=48)
        return {"input_ids": enc["input_ids"], "labels": np.asarray(list(rows["label"]), dtype=np.int64)}

    pad = tokenizer.pad_token_id

    def collate(split: dict[str, Any], idx: np.ndarray) -> dict[str, torch.Tensor]:
        seqs = [split["input_ids"][i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(split["labels"][idx])}

    train = encode("train", train_ids)
    lengths = np.asarray([len(s) for s in train["input_ids"]])
    batch, bucket = 16, 16 * 20

    def train_order(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(lengths))
        batches = []
        for start in range(0, len(perm), bucket):
            chunk = perm[start : start + bucket]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def eval_order(split: dict[str, Any]) -> list[np.ndarray]:
        by_length = np.argsort([len(s) for s in split["input_ids"]], kind="stable")
        return [by_length[i : i + 32] for i in range(0, len(by_length), 32)]  # faster than 128 here

    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(example_data.minilm_path(), num_labels=2)
    return Task(
        name="text",
        epochs=1 if smoke else TEXT_EPOCHS,
        batch_size=batch,
        base=base,
        train=train,
        val=encode("train", val_ids),
        test=encode("test", test_ids),
        collate=collate,
        train_order=train_order,
        eval_order=eval_order,
        task_type="SEQ_CLS",
        settings={
            "model": "all-MiniLM-L6-v2",
            "data": "rt-polarity",
            "train": len(train_ids),
            "val": len(val_ids),
            "test": len(test_ids),
            "max_length": 48,
            "batch_size": batch,
            "epochs": 1 if smoke else TEXT_EPOCHS,
        },
    )


VIT_CONFIG = {
    "image_size": 28,
    "patch_size": 4,
    "num_channels": 1,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
PRETRAIN = {"epochs": 5, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "seed": 0}


def fashion_arrays() -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    folder = example_data.find_fashion_mnist()
    if folder is None:
        raise FileNotFoundError("Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
    out = {}
    for split, (images, labels) in example_data.FASHION_MNIST_FILES.items():
        x = example_data.read_idx(folder / images)
        y = example_data.read_idx(folder / labels).astype(np.int64)
        pixels = torch.from_numpy(x.astype(np.float32)).unsqueeze(1) * (2.0 / 255.0) - 1.0
        out[split] = (pixels, y)
    return out


def _image_collate(split: tuple[torch.Tensor, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    pixels, labels = split
    idx_t = torch.from_numpy(np.ascontiguousarray(idx))
    return {"pixel_values": pixels[idx_t], "labels": torch.from_numpy(labels[idx])}


def _eval_chunks(split: tuple[torch.Tensor, np.ndarray]) -> list[np.ndarray]:
    n = len(split[1])
    return [np.arange(i, min(i + 500, n)) for i in range(0, n, 500)]


def pretrain_vit(cache_dir: Path, arrays, smoke: bool, log: Callable[[str], None]) -> tuple[nn.Module, dict]:
    """The ViT pretrained dense on classes 0-4, from ``cache_dir`` or trained and saved there."""
    folder = cache_dir / ("vit-fmnist-0to4-smoke" if smoke else "vit-fmnist-0to4")
    info_path = folder / "pretrain.json"
    if info_path.is_file():
        model = transformers.ViTForImageClassification.from_pretrained(folder)
        return model, json.loads(info_path.read_text())
    x, y = arrays["train"]
    keep = np.flatnonzero(y < 5)
    tx, ty = arrays["test"]
    test_keep = np.flatnonzero(ty < 5)
    if smoke:
        keep, test_keep = keep[:256], test_keep[:128]
    train = (x[torch.from_numpy(keep)], y[keep])
    test = (tx[torch.from_numpy(test_keep)], ty[test_keep])
    epochs = 1 if smoke else PRETRAIN["epochs"]
    torch.manual_seed(PRETRAIN["seed"])
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT_CONFIG, num_labels=5))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=PRETRAIN["lr"], weight_decay=PRETRAIN["weight_decay"])
    rng = np.random.default_rng(PRETRAIN["seed"])
    bs = PRETRAIN["batch_size"]
    steps = epochs * math.ceil(len(keep) / bs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(steps))
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = rng.permutation(len(keep))
        for i in range(0, len(perm), bs):
            loss = model(**_image_collate(train, perm[i : i + bs])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        acc, _ = evaluate(model, test, _image_collate, _eval_chunks(test))
        log(f"  pretrain epoch {epoch + 1}/{epochs}: test acc (classes 0-4) {acc:.4f}")
    seconds = time.perf_counter() - start
    acc, _ = evaluate(model, test, _image_collate, _eval_chunks(test))
    info = {
        **PRETRAIN,
        "epochs": epochs,
        "train_images": len(keep),
        "test_images": len(test_keep),
        "test_acc": acc,
        "seconds": seconds,
        "schedule": "linear warmup 10% + linear decay, grad clip 1.0",
        "vit_config": VIT_CONFIG,
    }
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    info_path.write_text(json.dumps(info, indent=2))
    return model, info


def load_vision_task(cache_dir: Path, smoke: bool, log: Callable[[str], None]) -> tuple[Task, dict]:
    arrays = fashion_arrays()
    base, info = pretrain_vit(cache_dir, arrays, smoke, log)
    x, y = arrays["train"]
    pool = np.flatnonzero(y >= 5)
    pool = pool[np.random.default_rng(0).permutation(len(pool))]
    n_train, n_val, n_test = (128, 64, 64) if smoke else (5000, 1000, None)
    train_ids, val_ids = pool[:n_train], pool[n_train : n_train + n_val]
    tx, ty = arrays["test"]
    test_ids = np.flatnonzero(ty >= 5)
    if n_test is not None:
        test_ids = test_ids[:n_test]

    def split(images, labels, ids):
        return images[torch.from_numpy(ids)], labels[ids] - 5

    train = split(x, y, train_ids)
    batch = 64

    def train_order(seed: int) -> list[np.ndarray]:
        perm = np.random.default_rng(seed).permutation(len(train_ids))
        return [perm[i : i + batch] for i in range(0, len(perm), batch)]

    task = Task(
        name="vision",
        epochs=1 if smoke else VISION_EPOCHS,
        batch_size=batch,
        base=base,
        train=train,
        val=split(x, y, val_ids),
        test=split(tx, ty, test_ids),
        collate=_image_collate,
        train_order=train_order,
        eval_order=_eval_chunks,
        task_type=None,
        settings={
            "model": "ViT 4x128 (patch 4, 28 px), pretrained on Fashion-MNIST 0-4",
            "data": "Fashion-MNIST classes 5-9",
            "train": len(train_ids),
            "val": len(val_ids),
            "test": len(test_ids),
            "batch_size": batch,
            "epochs": 1 if smoke else VISION_EPOCHS,
        },
    )
    return task, info


# ---------------------------------------------------------------------------- methods
