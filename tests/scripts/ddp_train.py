"""Train a tiny RPG BERT with Accelerate for the multi-process test.

Launched with ``torchrun --nproc_per_node N``; every run sees the same global batches
(``--global-batch`` samples per step, split evenly across processes). Each rank writes its
ring to ``OUT/ring-rank{r}.safetensors`` and calls ``save_pretrained`` into its own
``OUT/checkpoint-rank{r}`` with ``is_main_process``, so the test can see who wrote what.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: tiny model factories

from accelerate import Accelerator
from conftest import make_bert_cls
from torch.utils.data import DataLoader, TensorDataset

from hf_rpg import RPGConfig, apply_rpg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    args = parser.parse_args(argv)

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=400, seed=0))
    g = torch.Generator().manual_seed(1)
    n = args.steps * args.global_batch
    ids = torch.randint(0, 99, (n, 10), generator=g)
    labels = ids[:, 0] % 3
    per_process = args.global_batch // accelerator.num_processes
    loader = DataLoader(TensorDataset(ids, labels), batch_size=per_process, shuffle=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    steps = 0
    for batch_ids, batch_labels in loader:
        loss = model(input_ids=batch_ids, labels=batch_labels).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    assert steps == args.steps, steps

    rank = accelerator.process_index
    unwrapped = accelerator.unwrap_model(model)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"ring": unwrapped.rpg_rings["default"].detach().contiguous()}, args.out / f"ring-rank{rank}.safetensors")
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(args.out / f"checkpoint-rank{rank}", is_main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
