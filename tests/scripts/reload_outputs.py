"""Load hf_rpg checkpoints in a fresh process and compare their outputs with the saved ones.

Usage: reload_outputs.py CHECKPOINT_DIR... Each CHECKPOINT_DIR has a sibling
``CHECKPOINT_DIR.io.safetensors`` holding the batch and the ``expected`` logits. Prints one
JSON line: checkpoint -> whether the logits are bit-identical (torch.equal).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from safetensors.torch import load_file

from hf_rpg import RPGModel


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(12345)  # nothing may depend on the global RNG
    report = {}
    for path in paths:
        io = load_file(f"{path}.io.safetensors")
        expected = io.pop("expected")
        model = RPGModel.from_pretrained(path)
        with torch.no_grad():
            report[path] = bool(torch.equal(model(**io).logits, expected))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
