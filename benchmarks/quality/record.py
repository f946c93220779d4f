"""What a run records about where it ran: commits, source hash, machine, peak memory; number formats."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cpu_name

from .protocol import REPO


def git_commit(folder: Path = REPO) -> str:
    """The short commit of the checkout holding ``folder``, "-dirty" when tracked files changed."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_hash(folder: Path) -> str:
    """A short hash of the ``.py`` files under ``folder`` (names and contents): which code ran,
    also for a checkout with uncommitted changes."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def machine() -> dict[str, Any]:
    cpu = cpu_name()
    versions = {}
    for package in ("torch", "transformers", "peft", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": versions,
    }


def reset_peak_rss() -> None:
    gc.collect()  # the previous run's model, then give freed heap back so that RSS starts low
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_rss_mib() -> float:
    """Peak resident memory since the last ``reset_peak_rss`` (VmHWM), else the process's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt_lr(lr: float) -> str:
    """``1e-3``, ``1.5e-2``, ``1.7e-1``: two significant digits at most."""
    return f"{lr:.1e}".replace(".0e", "e").replace("e-0", "e-").replace("e+0", "e")


def _key_lr(lr: float) -> str:
    """The lr as results keys spell it (one significant digit: distinct within every grid and its
    edge extensions; kept so that existing results files stay resumable)."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def fmt_count(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------- tasks
