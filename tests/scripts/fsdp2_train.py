"""Train a tiny RPG Llama under FSDP2 (torch's ``fully_shard``) for the distributed test.

Launched with ``torchrun --nproc_per_node N`` (gloo on CPU). With N > 1 every decoder layer
and the root are sharded; with N = 1 it trains without FSDP, the reference. Every rank sees
the same batches, so the averaged gradients equal one process's. Writes, per rank,
``OUT/ring-rank{r}.safetensors`` (the full ring) and ``OUT/shards-rank{r}.json`` (how many
elements of the frozen base this rank holds), and ``save_pretrained(OUT/checkpoint)`` from
every rank (only the main process writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: tiny model factories

from architectures import ARCHITECTURES
from transformers import AutoModelForCausalLM

from hf_rpg import RPGConfig, apply_rpg


def _local_numel(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--mode", choices=["replace", "delta", "delta-lora"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    base = AutoModelForCausalLM.from_pretrained(args.base)
    if args.mode == "delta-lora":  # the default kind at small budgets: rpg-lora-v1
        config = RPGConfig(mode="delta", dof=500, seed=5)
    else:
        config = RPGConfig(mode=args.mode, dof=0.3, seed=5)
    model = apply_rpg(base, config)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.base_model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the ring lives in the root group, used by every layer

    frozen = [p for p in model.base_model.model.layers.parameters() if not p.requires_grad]
    shards = {"held": sum(_local_numel(p) for p in frozen), "total": sum(p.numel() for p in frozen)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(args.steps):
        batch = ARCHITECTURES["llama"].batch(step)  # the same on every rank
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    ring = model.rpg_rings["default"]
    full = ring.full_tensor() if hasattr(ring, "full_tensor") else ring
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"ring": full.detach().contiguous()}, args.out / f"ring-rank{rank}.safetensors")
    (args.out / f"shards-rank{rank}.json").write_text(json.dumps({**shards, "losses": losses}))
    model.save_pretrained(args.out / "checkpoint")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
