"""Fine-tuning quality at equal trainable-parameter budgets: hf_rpg (delta mode) and PEFT's peers.

Two tasks, one recipe for every method (see ``PROTOCOL``, which is also written into the report):

- ``text``: all-MiniLM-L6-v2 fine-tuned on rt-polarity (sentence polarity);
- ``vision``: a small ViT pretrained dense on Fashion-MNIST classes 0-4 (cached), then
  fine-tuned with a new 5-way head on classes 5-9.

Every finished run is appended as one JSON line to ``--results``; runs already there are
skipped, so the script can be killed and started again. ``--report-only`` rebuilds the
markdown report and its plots from that file alone.

    OMP_NUM_THREADS=1 python -m benchmarks quality --task all   # adds to results-quality.jsonl
    python -m benchmarks quality --report-only                   # rewrites quality.md

The default results file is the committed ``benchmarks/results/quality.jsonl``: a run with
another setting (methods, budgets, an hf_rpg under change) adds its rows to it, and finished
runs are skipped. The pretrained ViT is cached in ``benchmarks/quality-results/cache``.

hf_rpg variants come from ``RPG_VARIANTS`` (name -> ``RPGConfig`` keyword arguments besides
``mode="delta"``, ``dof=budget`` and ``seed``); add a line there to benchmark another one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import os
import time
from pathlib import Path

import torch

from .methods import plans
from .protocol import DEFAULT_BUDGETS, DEFAULT_CACHE, DEFAULT_REPORT, DEFAULT_RESULTS, METHODS
from .report import report
from .runner import Runner
from .tasks import load_text_task, load_vision_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["text", "vision", "all"], default="all")
    parser.add_argument("--methods", default="all", help=f"comma list of {', '.join(METHODS)}, or 'all'")
    parser.add_argument("--budgets", default=",".join(str(b) for b in DEFAULT_BUDGETS))
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from --results")
    parser.add_argument("--no-report", action="store_true", help="do not write the report after the runs")
    parser.add_argument("--smoke", action="store_true", help="tiny subsets, 1 lr, 1 seed (for tests)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    args.methods = methods
    args.budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        report(args.results, args.report)
        print(f"wrote {args.report}")
        return 0
    torch.set_num_threads(args.threads)
    runner = Runner(args.results, args.smoke)
    runner.log(
        f"results -> {args.results}; methods {args.methods}; budgets {args.budgets}; commit {runner.meta['commit']}"
    )
    tasks = ["text", "vision"] if args.task == "all" else [args.task]
    for name in tasks:
        start = time.perf_counter()
        if name == "text":
            task = load_text_task(args.smoke)
        else:
            task, info = load_vision_task(args.cache_dir, args.smoke, runner.log)
            runner.note({"kind": "pretrain", "task": "vision", **info, "smoke": args.smoke})
        runner.log(f"{name}: loaded in {time.perf_counter() - start:.1f}s ({task.settings})")
        for p in plans(task, args.methods, args.budgets, args.smoke):
            runner.protocol(task, p)
    if not args.no_report:
        report(args.results, args.report)
        runner.log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
