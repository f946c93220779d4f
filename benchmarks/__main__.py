"""One entry point for the benchmark suite: ``python -m benchmarks <name> [options]``.

Run from the checkout's root (``benchmarks`` and ``hf_rpg`` are imported from there). Each
name maps to a module whose ``main(argv)`` takes the rest of the command line; every result
is written under ``benchmarks/results/``. See ``benchmarks/README.md`` for what each
measures and how long it takes. These are measurements, not tests: nothing here asserts.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "suite": ("benchmarks.run", "step time, memory, generation, embeddings, loading, inference and PEFT peers"),
    "scale": ("benchmarks.scale", "a GPT-2-medium-sized step and memory: RPG against LoRA and the frozen base"),
    "index_kernels": ("benchmarks.index_kernels", "the numba index kernels against the int32 cache and tensor paths"),
    "ring_storage": ("benchmarks.ring_storage_study", "accuracy and size of the ring storage encodings"),
    "quality": ("benchmarks.quality.__main__", "fine-tuning quality at equal budgets: hf_rpg against PEFT's peers"),
    "llm_quality": ("benchmarks.llm_quality.__main__", "causal-LM fine-tuning quality on SmolLM2"),
    "sweep_tables": ("benchmarks.sweep_tables", "markdown tables of hf-rpg sweep results"),
}


def usage() -> str:
    """The list of benchmarks, one line each."""
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in BENCHMARKS.items()]
    return "usage: python -m benchmarks <name> [options]   (<name> --help for its options)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark ``argv[0]`` with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0].replace("-", "_"), argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise  # a dependency of the benchmark is missing: its own message says which
        print(f"benchmark {name!r} is not in this checkout ({module_name} is missing)", file=sys.stderr)
        return 2
    return module.main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
