"""Run the hf_rpg benchmark suite and write benchmarks/results/suite.md and results.json.

    python -m benchmarks suite                 # everything, one thread (about 15 minutes here)
    python -m benchmarks suite --quick         # fewer repeats and sizes
    python -m benchmarks suite --only step,generation --threads 2

Every ratio is measured in one process, side by side (interleaved runs), as a median of at
least five runs after warm-up. These are measurements, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks import peers, sections
from benchmarks.common import RESULTS, machine_info
from benchmarks.report import render

SECTIONS = {
    "step": sections.step_time,
    "memory": sections.memory,
    "generation": sections.generation,
    "embeddings": sections.embeddings,
    "load": sections.load,
    "inference": sections.inference,
    "peers": peers.peers,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the step, inference and peers sections run the models (cpu, cuda); "
        "the other sections measure CPU code",
    )
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "suite.md")
    parser.add_argument("--json", type=Path, default=RESULTS / "suite.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["HF_RPG_BENCH_DEVICE"] = args.device  # read here and by the worker processes
    chosen = list(SECTIONS) if args.only is None else [s.strip() for s in args.only.split(",")]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    previous = json.loads(args.json.read_text()) if args.json.exists() and args.only else {}
    results = {**previous, "machine": machine_info(args.threads, args.device), "quick": args.quick}
    for name in chosen:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        results[name] = SECTIONS[name](args.quick)
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.out.write_text(render(results))
    print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
