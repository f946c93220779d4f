"""``python -m benchmarks.llm_quality``: SmolLM2-135M-Instruct fine-tuned at equal trainable budgets.

    OMP_NUM_THREADS=1 python -m benchmarks.llm_quality                    # the whole plan, resumable
    python -m benchmarks.llm_quality --tasks sentiment --methods rpg lora  # a part of it
    python -m benchmarks.llm_quality --device cuda                         # the same plan on a GPU
    python -m benchmarks.llm_quality --report-only                         # rewrite the report

Runs go in priority order (the ≤10k budgets of the cheapest methods first), one plan at a time:
its lr grid with seed 0, widened until the pick is interior, then seeds 1 and 2 at the pick.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import contextlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_RESULTS = RESULTS_DIR / "llm-quality.jsonl"
DEFAULT_REPORT = RESULTS_DIR / "llm-quality.md"
DEFAULT_CACHE = RESULTS_DIR / "cache"
DEFAULT_BUDGETS = (1000, 10000, 100000)
# Priority: the tiny budgets, where the goals are, before the large ones; hf_rpg's defaults and
# the strongest peers at tiny budgets first. Plans the CLI names run in this order too.
PRIORITY = (
    "rpg",
    "unilora",
    "tinylora",
    "lora",
    "fourierft",
    "vblora",
    "vera",
    "rpg-lowrank",
    "rpg-all-linear",
    "cand-rpg-lora",
    "full",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.llm_quality import methods, tasks

    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(tasks.TASKS), choices=list(tasks.TASKS))
    parser.add_argument("--methods", nargs="+", default=list(PRIORITY), choices=list(methods.METHODS))
    parser.add_argument("--budgets", nargs="+", type=int, default=list(DEFAULT_BUDGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dequantised SmolLM2 copy")
    parser.add_argument("--model", default=None, help="SmolLM2 folder, GGUF file or Hub name (default: see smollm2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--smoke", action="store_true", help="tiny splits and one lr: checks the pipeline")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def _priority(p, order: list[str]) -> tuple:
    """Where the goals are first: hf_rpg's defaults and the peers at ~1k, then at ~10k, then LoRA
    r=1 (the 10k goal's reference), then hf_rpg's variants, then ~100k and full fine-tuning."""
    from benchmarks.llm_quality import methods

    budget = p.budget if isinstance(p.budget, int) else 10**12
    if budget > 60_000:
        tier = 4
    elif (methods.is_rpg(p.method) and p.method != "rpg") or p.method in methods.CANDIDATES:
        tier = 3
    elif p.method == "lora":
        tier = 2
    else:
        tier = 0 if budget <= 1_000 else 1
    return (tier, budget, order.index(p.method))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.llm_quality import report

    if args.report_only:
        report.write(args.results, args.report)
        print(f"wrote {args.report}")
        return 0

    import torch
    import transformers

    from benchmarks.llm_quality import methods, runner, tasks
    from hf_rpg_studies.smollm2 import load_smollm2

    transformers.logging.set_verbosity_error()
    with contextlib.suppress(AttributeError):
        transformers.utils.logging.disable_progress_bar()
    device = torch.device(args.device)
    base, tokenizer = load_smollm2(args.model, cache_dir=args.cache_dir)
    base.requires_grad_(False)
    base.to(device)
    log_file = args.results.with_suffix(".log")

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        if not args.smoke:
            with log_file.open("a") as handle:
                handle.write(line + "\n")

    run = runner.Runner(args.results, args.device, log)
    order = [m for m in PRIORITY if m in args.methods]
    for name in args.tasks:
        task = tasks.TASKS[name](tokenizer, smoke=args.smoke)
        plans = methods.plans(base, order, args.budgets)
        plans.sort(key=lambda p: _priority(p, order))
        for p in plans:
            if p.omitted:
                log(f"{name} {p.method} {p.budget}: omitted ({p.omitted})")
                continue
            if args.smoke:
                p.lrs = p.lrs[1:2]
            run.protocol(base, task, p, tuple(args.seeds))
    report.write(args.results, args.report)
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
