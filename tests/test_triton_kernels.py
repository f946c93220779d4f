"""The Triton kernels (``hf_rpg.spec.triton_kernels``) against the reference generator, bit for bit.

On every machine they run in Triton's interpreter (NumPy on the CPU): ``TRITON_INTERPRET=1``
must be set before triton is imported (triton's own ``@jit`` library functions, ``tl.max``
among them, are bound to the interpreter or to the compiler then), so those checks
(``scripts/triton_interpreted_checks.py``) run in a child process. Where a CUDA GPU is
present the compiled kernels are checked here the same way, at larger sizes, and through
models. Triton is the ``hf_rpg[triton]`` extra, which the CI installs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MODELS
from test_generator import GOLDEN

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.spec import index_kernels
from hf_rpg.spec.generator import derive_key, signed_indices
from hf_rpg.spec.lowrank import projection

pytest.importorskip("triton", reason="triton is not installed (the hf_rpg[triton] extra)")

from hf_rpg.spec import triton_kernels

CHECKS = Path(__file__).parent / "scripts" / "triton_interpreted_checks.py"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


def reference(ring: torch.Tensor, index: torch.Tensor, gain: float) -> torch.Tensor:
    """What the tensor path generates: ``[ring, -ring][index] * gain``."""
    return torch.cat((ring, -ring))[index.to(torch.int64)] * gain


def random_cases(count: int, seed: int, largest: int) -> list[tuple[int, int, int, int]]:
    """(total, ring size, start, numel): tiny totals, totals just above and below powers of two
    (the most cycle-walking), and random ones."""
    g = torch.Generator().manual_seed(seed)
    cases = [(1, 1, 0, 1), (2, 1, 0, 2), (3, 2, 1, 2), (2**12 + 1, 100, 0, 2**12 + 1), (2**13 - 1, 8191, 5, 3000)]
    while len(cases) < count:
        total = int(torch.randint(2, largest, (1,), generator=g))
        size = int(torch.randint(1, total + 1, (1,), generator=g))
        start = int(torch.randint(0, total, (1,), generator=g))
        numel = int(torch.randint(0, min(total - start, 3000) + 1, (1,), generator=g))
        cases.append((total, size, start, numel))
    return cases


@pytest.mark.slow
def test_the_kernels_in_tritons_interpreter():
    """Every check of ``scripts/triton_interpreted_checks.py`` passes in Triton's interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(CHECKS)]
    result = subprocess.run(command, env=env, cwd=CHECKS.parents[2], capture_output=True, text=True, timeout=900)
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and " skipped" not in result.stdout and " failed" not in result.stdout, report


def test_cpu_work_never_imports_the_triton_kernels():
    """hf_rpg imports its Triton kernels for CUDA tensors only (``triton`` itself may come in
    with ``torch._dynamo``, which probes for it)."""
    code = (
        "import torch, sys; from hf_rpg.spec import index_kernels, lowrank\n"
        "from hf_rpg.spec.generator import derive_key\n"
        "ring = torch.randn(100); key = derive_key(0, 'default')\n"
        "index_kernels.generate_span(ring, key, 1000, 0, 500, 1.0); lowrank.projection(0, 't', 4, 16)\n"
        "assert not index_kernels.triton_serves('cpu')\n"
        "assert 'hf_rpg.spec.triton_kernels' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# ------------------------------------------------------------------ compiled (GPU machines)


@needs_cuda
@pytest.mark.parametrize(("args", "signed", "permuted"), GOLDEN)
def test_cuda_golden_vectors(args, signed, permuted):
    seed, ring, total, size = args
    key = derive_key(seed, ring)
    positions = torch.tensor([0, 1, 2, 3, total // 2, total - 1], device="cuda")
    out = torch.empty(6, dtype=torch.int64, device="cuda")
    triton_kernels.signed_indices(key, total, size, 0, positions, out)
    assert out.tolist() == signed


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_kernels_are_the_tensor_path(dtype):
    assert index_kernels.triton_serves("cuda")
    key = derive_key(11, "default")
    cases = [*random_cases(20, seed=3, largest=1 << 24), (2**33 + 5, 70_001, 2**32 - 10**5, 2 * 10**5)]
    for total, size, start, numel in cases:
        ring = torch.randn(size, dtype=torch.float64).to(dtype).cuda()
        got = index_kernels.generate_span(ring, key, total, start, numel, 0.37)
        index = signed_indices(torch.arange(start, start + numel), total, size, key)
        assert torch.equal(got.cpu(), reference(ring.cpu(), index, 0.37)), (total, size, start, numel)
        grad = torch.randn(numel, device="cuda").to(dtype)
        grad_ring = torch.zeros(size, device="cuda", dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        index_kernels.accumulate_span_grad(grad_ring, key, total, start, grad, 0.37)
        signed = torch.zeros(2 * size, dtype=grad_ring.dtype).index_add_(
            0, index.to(torch.int64), grad.cpu().to(grad_ring.dtype), alpha=0.37
        )
        torch.testing.assert_close(grad_ring.cpu(), signed[:size] - signed[size:], rtol=1e-4, atol=1e-4)
        positions = torch.randint(0, total, (5000,))
        at = index_kernels.generate_at(ring, key, total, positions.cuda(), 0.37)
        assert torch.equal(at.cpu(), reference(ring.cpu(), signed_indices(positions, total, size, key), 0.37))


@needs_cuda
def test_cuda_projection_and_models_match_cpu():
    for dtype in (torch.float32, torch.bfloat16):
        on_gpu = projection(2, "a.weight", 8, 1000, dtype=dtype, device="cuda")
        assert torch.equal(on_gpu.cpu(), projection(2, "a.weight", 8, 1000, dtype=dtype))
    tiny = MODELS["gpt2"]
    torch.manual_seed(0)
    for config in (RPGConfig(dof=0.3, seed=1, index_cache="none"),
                   RPGConfig(mode="delta", dof=200, rank=4, seed=1)):  # fmt: skip
        model = apply_rpg(tiny.build(), config)
        with torch.no_grad():
            on_cpu = {n: w.clone() for n, w in model.generated_weights()}
            model.cuda()
            model.clear_cache()
            for name, weight in model.generated_weights():
                assert torch.equal(weight.cpu(), on_cpu[name]), name
