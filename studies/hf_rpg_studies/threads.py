"""How many CPU threads the demo and the examples give torch, chosen so a busy machine does not collapse.

torch's default is one thread per physical core. On a machine where other work runs, its
OpenMP threads then wait on each other at every operation: the tiny models of the demo train
50x slower on two cores with one other busy process (167 s instead of 3 s, issue 12). Small
models gain little from many threads anyway. The choice, in order:

1. the number asked for (``--threads``);
2. ``$OMP_NUM_THREADS`` when it is set (torch reads it too);
3. the physical cores this process may use that are not busy (by the 1-minute load
   average), shared among ``processes`` processes, at most ``MAX_AUTO_THREADS`` and at
   least 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Beyond this the tiny models of the demo and examples do not get faster, and a wide machine
# is rarely all ours.
MAX_AUTO_THREADS = 4


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why, as the demo and the examples print it."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"torch threads: {self.threads} ({self.reason})"


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask), else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share a core's arithmetic units."""
    logical = usable_cpus()
    try:
        import psutil  # an accelerate dependency

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    total = os.cpu_count() or logical
    if not cores:
        return logical
    # With an affinity mask, assume the mask keeps the machine's threads-per-core ratio.
    return max(1, min(cores, logical * cores // max(total, 1)))


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    return value


def choose_threads(requested: int | None = None, *, processes: int = 1, limit: int = MAX_AUTO_THREADS) -> ThreadChoice:
    """The thread count for a CPU run: ``requested``, else ``$OMP_NUM_THREADS``, else the idle
    physical cores shared among ``processes``, at most ``limit`` (see the module docstring).
    Does not apply it."""
    limit = _positive_int(limit, "limit")
    processes = _positive_int(processes, "processes")
    if requested is not None:
        return ThreadChoice(_positive_int(requested, "threads"), "asked for")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        first = env.split(",")[0].strip()  # OpenMP allows a list for nested levels
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive int, got {env!r}")
        return ThreadChoice(int(first), "OMP_NUM_THREADS")
    cores = physical_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = int(cores - load + 0.5)
    threads = max(1, min(limit, idle // processes))
    shared = f", {processes} processes" if processes > 1 else ""
    return ThreadChoice(
        threads, f"{cores} physical cores, load {load:.1f}{shared}; set OMP_NUM_THREADS or --threads to choose"
    )


def use_threads(requested: int | None = None, *, processes: int = 1, limit: int = MAX_AUTO_THREADS) -> ThreadChoice:
    """``choose_threads`` and apply it to torch (``torch.set_num_threads``); returns the choice."""
    choice = choose_threads(requested, processes=processes, limit=limit)
    torch.set_num_threads(choice.threads)
    return choice


__all__ = ["MAX_AUTO_THREADS", "ThreadChoice", "choose_threads", "physical_cores", "usable_cpus", "use_threads"]
