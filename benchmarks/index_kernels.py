"""ns per generated element of the three ways to generate rpg-v1 weights, forward and backward.

    python -m benchmarks index_kernels                      # 1 and 2 threads, writes results.md's section
    python -m benchmarks index_kernels --threads 1 --repeats 3 --no-write

- **int32 cache** (today's default): the engine's autograd function with the int32 index
  built once beforehand (not timed); gather / scatter-add in the layout the engine picks.
- **on the fly (tensor)**: the same engine with ``cache_indices=False``: the index is
  rebuilt from the seed (NumPy uint32) in the forward and again in the backward.
- **fused kernels** (``hf_rpg.spec.index_kernels``): indices and signs computed inside the
  gather and the scatter; nothing per element is kept.

Each row: eight targets of P/8 elements on one ring (as section 3 of results.md), the
forward into a reused buffer, the backward into a fresh ring gradient. Timings alternate
between the paths (the machine is shared) and are repeated; the table shows the minimum and
the median. First-call (JIT) times of the kernels are printed too. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import hf_rpg.runtime.ring_autograd
from benchmarks.common import RESULTS, ROOT, interleaved_medians, machine_info
from benchmarks.sections import ring_indices
from hf_rpg.runtime.buffer_pool import BufferPool
from hf_rpg.runtime.ring_autograd import _GenerateFromRing, _Request
from hf_rpg.spec import index_kernels

BEGIN, END = "<!-- index-kernels:begin -->", "<!-- index-kernels:end -->"


def _engine_fns(total: int, size: int, cache: bool) -> dict:
    """Forward and backward of today's engine (cache or tensor on-the-fly path), timed apart."""
    engine, root, layout = ring_indices(total, size, cache)
    ring = root.rpg_rings["default"]
    requests = [_Request(t, None) for t in layout.targets]
    grads = [torch.randn(t.shape) for t in layout.targets]
    state = {}

    out = BufferPool(total).take(sum(r.target.numel for r in requests), ring.dtype, ring.device)
    # the engine's on-the-fly path goes through the fused kernels now: time the tensor path here
    uses_kernels = hf_rpg.runtime.ring_autograd._kernels_apply

    def forward():
        hf_rpg.runtime.ring_autograd._kernels_apply = lambda engine, ring: False
        try:
            state["weights"] = _GenerateFromRing.apply(ring, engine, "default", requests, out)
        finally:
            hf_rpg.runtime.ring_autograd._kernels_apply = uses_kernels

    def backward():
        hf_rpg.runtime.ring_autograd._kernels_apply = lambda engine, ring: False
        try:
            torch.autograd.backward(state.pop("weights"), grads)
        finally:
            hf_rpg.runtime.ring_autograd._kernels_apply = uses_kernels
        ring.grad = None

    return {"forward": forward, "backward": backward, "keep": (engine, root)}


def _kernel_fns(total: int, size: int) -> dict:
    """Forward and backward through hf_rpg.spec.index_kernels, same targets and gains."""
    engine, root, layout = ring_indices(total, size, cache=False)
    ring = root.rpg_rings["default"].detach()
    key = engine.keys["default"]
    targets = layout.targets
    out = torch.empty(sum(t.numel for t in targets))
    grads = [torch.randn(t.numel) for t in targets]

    def forward():
        position = 0
        for target in targets:
            piece = out[position : position + target.numel]
            index_kernels.generate_span(ring, key, total, target.offset, target.numel, target.gain, out=piece)
            position += target.numel

    def backward():
        grad_ring = torch.zeros(size)
        for target, grad in zip(targets, grads, strict=True):
            index_kernels.accumulate_span_grad(grad_ring, key, total, target.offset, grad, target.gain)

    return {"forward": forward, "backward": backward, "keep": (engine, root)}


def jit_seconds() -> dict:
    """First-call seconds of the kernels in a fresh process: with the on-disk cache as it is
    (warm after any earlier run) and, for the cold number, with NUMBA_CACHE_DIR pointed at an
    empty directory (numba then compiles and writes its cache there)."""
    code = (
        "import time, torch\n"
        "t0 = time.perf_counter()\n"
        "from hf_rpg.spec import index_kernels as K\n"
        "from hf_rpg.spec.generator import derive_key\n"
        "k = derive_key(0, 'default')\n"
        "K.available('cpu'); t1 = time.perf_counter()\n"
        "K.generate_span(torch.randn(100), k, 1000, 0, 10, 1.0); t2 = time.perf_counter()\n"
        "K.accumulate_span_grad(torch.zeros(100), k, 1000, 0, torch.ones(10), 1.0); t3 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2)\n"
    )
    results = {}
    import tempfile

    for label in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            if label == "cold":
                env["NUMBA_CACHE_DIR"] = empty
            lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            results[label] = [float(v) for v in lines.stdout.split()]
    return results


def measure(threads: int, repeats: int, total: int, sizes: list[int]) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        paths = {
            "int32 cache": _engine_fns(total, size, cache=True),
            "on the fly (tensor)": _engine_fns(total, size, cache=False),
            "fused kernels": _kernel_fns(total, size),
        }
        fns = {}
        for name, path in paths.items():
            fns[f"{name}|forward"] = path["forward"]
            fns[f"{name}|backward"] = path["backward"]
        times = interleaved_medians(fns, warmup=1, repeats=repeats)
        for name in paths:
            f, b = times[f"{name}|forward"]["runs"], times[f"{name}|backward"]["runs"]
            fb = sorted(x + y for x, y in zip(f, b, strict=True))
            rows.append(
                {
                    "threads": threads,
                    "ring": size,
                    "elements": total,
                    "path": name,
                    "forward": (min(f) * 1e9 / total, sorted(f)[len(f) // 2] * 1e9 / total),
                    "backward": (min(b) * 1e9 / total, sorted(b)[len(b) // 2] * 1e9 / total),
                    "total": (fb[0] * 1e9 / total, fb[len(fb) // 2] * 1e9 / total),
                }
            )
            print(_row(rows[-1]), flush=True)
        del paths, fns
    return rows


def _row(row: dict) -> str:
    cells = [f"{row['threads']}", f"{row['ring']:,}", f"{row['elements']:,}", row["path"]]
    cells += [f"{row[k][0]:.2f} / {row[k][1]:.2f}" for k in ("forward", "backward", "total")]
    return "| " + " | ".join(cells) + " |"


def render(rows: list[dict], jit: dict, info: dict, args, load: tuple[float, float]) -> str:
    lines = [
        BEGIN,
        "## Fused index kernels (`benchmarks/index_kernels.py`)",
        "",
        f"Written by `python -m benchmarks index_kernels`. Measured {info['date']} on {info['cpu']} "
        f"({info['logical_cores']} logical cores, shared with other jobs), Python {info['python']}, "
        f"torch {info['versions']['torch']}, numba {_numba_version()}; {args.repeats} alternating repeats "
        f"after one warm-up; cells are min / median ns per generated element. One-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after (2 cores: other jobs were running).",
        "",
        "| threads | ring N | elements P | path | forward | backward | forward+backward |",
        "|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
        f"First call in a fresh process (import of `hf_rpg.spec.index_kernels` + numba / first "
        f"`generate_span` / first `accumulate_span_grad`, seconds): cold cache "
        f"{' / '.join(f'{v:.2f}' for v in jit['cold'])}, warm cache {' / '.join(f'{v:.2f}' for v in jit['warm'])}.",
        END,
    ]
    return "\n".join(lines) + "\n"


def _numba_version() -> str:
    try:
        import numba

        return numba.__version__
    except ImportError:
        return "not installed (the fused rows are the tensor fallback)"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (or append it)."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--elements", type=int, default=4_000_000)
    parser.add_argument("--rings", type=int, nargs="+", default=[40_000, 400_000, 2_000_000])
    parser.add_argument(
        "--walk-elements",
        type=int,
        default=2**22 + 1,
        help="P of an extra one-thread row at N=400k: one past a power of two, the most cycle-walking (0: none)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "suite.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    info = machine_info(args.threads[0])
    print(f"{info['cpu']}, {info['logical_cores']} cores, torch {info['versions']['torch']}, "
          f"numba {_numba_version()}, compiled kernels: {index_kernels.available('cpu')}, "
          f"load average {os.getloadavg()}")  # fmt: skip
    start = time.perf_counter()
    jit = jit_seconds()
    print(f"first calls (import / generate / accumulate, s): cold {jit['cold']}, warm {jit['warm']}")
    load_before = os.getloadavg()
    rows = []
    for threads in args.threads:
        rows += measure(threads, args.repeats, args.elements, args.rings)
    if args.walk_elements:
        rows += measure(args.threads[0], args.repeats, args.walk_elements, [400_000])
    load = (load_before[0], os.getloadavg()[0])
    print(f"done in {time.perf_counter() - start:.0f} s, load average {os.getloadavg()}")
    if not args.no_write:
        write_section(args.out, render(rows, jit, info, args, load))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
