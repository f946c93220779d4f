"""Real two-process training on CPU (torchrun, gloo), with DDP through Accelerate and with
FSDP2 (torch's fully_shard): identical rings on both ranks, equal to a one-process run over
the same batches, the frozen base sharded, and a checkpoint written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_rpg import RPGModel

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_train.py"


def _torchrun(processes: int, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*command, str(SCRIPT), "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_match_one_and_write_once(tmp_path):
    _torchrun(2, tmp_path / "two")
    _torchrun(1, tmp_path / "one")
    rank0 = load_file(tmp_path / "two" / "ring-rank0.safetensors")["ring"]
    rank1 = load_file(tmp_path / "two" / "ring-rank1.safetensors")["ring"]
    single = load_file(tmp_path / "one" / "ring-rank0.safetensors")["ring"]
    assert torch.equal(rank0, rank1)
    torch.testing.assert_close(rank0, single, rtol=1e-4, atol=1e-5)
    assert not torch.equal(rank0, torch.zeros_like(rank0))
    # only the main process wrote a checkpoint, and it holds the trained ring
    assert (tmp_path / "two" / "checkpoint-rank0" / "rpg_model.safetensors").is_file()
    assert not (tmp_path / "two" / "checkpoint-rank1").exists()
    loaded = RPGModel.from_pretrained(tmp_path / "two" / "checkpoint-rank0")
    assert torch.equal(loaded.rpg_rings["default"], rank0)


FSDP_SCRIPT = Path(__file__).resolve().parent / "scripts" / "fsdp2_train.py"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delta", "delta-lora", "replace"])
def test_fsdp2_trains_to_the_one_process_ring_with_the_base_sharded(tmp_path, mode):
    from architectures import build

    build("llama").save_pretrained(tmp_path / "base")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for processes in (2, 1):
        out = tmp_path / f"n{processes}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        args = [str(FSDP_SCRIPT), "--out", str(out), "--base", str(tmp_path / "base"), "--mode", mode]
        result = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rings = [load_file(tmp_path / "n2" / f"ring-rank{r}.safetensors")["ring"] for r in (0, 1)]
    single = load_file(tmp_path / "n1" / "ring-rank0.safetensors")["ring"]
    assert torch.equal(rings[0], rings[1])
    assert not torch.equal(single, torch.zeros_like(single))
    torch.testing.assert_close(rings[0], single, rtol=1e-5, atol=1e-7)
    shards = [json.loads((tmp_path / "n2" / f"shards-rank{r}.json").read_text()) for r in (0, 1)]
    if mode.startswith("delta"):  # the frozen base is sharded: each rank holds about half of it
        assert shards[0]["total"] > 0
        for shard in shards:
            assert abs(shard["held"] / shard["total"] - 0.5) < 0.05, shard
    # one compact checkpoint written under FSDP2, loaded without it
    loaded = RPGModel.from_pretrained(tmp_path / "n2" / "checkpoint")
    assert torch.equal(loaded.rpg_rings["default"], rings[0])
    if mode == "delta-lora":
        assert set(loaded.plan.servings()) == {"lora"}
