"""``import hf_rpg`` stays quick: optional and heavy modules load when they are used, not before.

torch._dynamo (about 2 s) loads with the first ``torch.compile``, numba with the first fused
CPU kernel, Triton's kernels with the first CUDA ring, matplotlib with a sweep's plots, PEFT
never (benchmarks only), and transformers with the user's model (which imports it anyway).
Timings are measured, not asserted: ``docs/performance.md``, section "Import time".
"""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("torch._dynamo", "numba", "hf_rpg.spec._numba_kernels", "hf_rpg.spec.triton_kernels", "matplotlib", "peft",
        "transformers")  # fmt: skip


def _loaded_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_hf_rpg_loads_none_of_the_lazy_modules():
    assert _loaded_after("import hf_rpg") == []


def test_they_load_when_used():
    """A CPU model without an index cache uses the numba kernels: numba loads then, and the
    generated weights work; still no dynamo, matplotlib, PEFT or Triton."""
    code = (
        "import torch, hf_rpg\n"
        "model = hf_rpg.apply_rpg(torch.nn.Sequential(torch.nn.Linear(64, 64)), hf_rpg.RPGConfig(dof=0.5, "
        "index_cache='none'))\n"
        "model(torch.randn(2, 64)).sum().backward()\n"
        "assert model.rpg_rings['default'].grad.abs().sum() > 0\n"
    )
    assert _loaded_after(code) == ["numba", "hf_rpg.spec._numba_kernels"]
