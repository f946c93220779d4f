"""Run one benchmark measurement in this fresh process and print it as JSON.

python -m benchmarks.worker step resnet18 7
python -m benchmarks.worker peers all 7
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks import peers, sections


def main() -> None:
    section, case, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    if section == "step":
        result = sections.step_case(case, repeats)
    elif section == "inference":
        result = sections.inference_case(repeats)
    elif section == "peers":
        result = peers.peers_once(repeats)
    else:
        raise SystemExit(f"unknown section {section!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
