"""Real two-process training on CPU (torchrun, gloo): identical rings on both ranks, equal
to a one-process run over the same global batches, and a checkpoint written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
