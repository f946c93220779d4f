"""``python -m benchmarks.gpu`` runs end to end (a tiny config on CPU) and writes its results.

Measured numbers are the benchmark's business; this only checks that it runs, covers every
case, and says in its file that a CPU run is no GPU measurement. In this process (the
imports are most of a smoke run's time), with the repository root importable as
``python -m`` has it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_run_writes_its_results(tmp_path, monkeypatch):
    pytest.importorskip("peft", reason="PEFT is a benchmark dependency: pip install -e '.[bench]'")
    monkeypatch.syspath_prepend(str(ROOT))
    gpu = importlib.import_module("benchmarks.gpu")
    argv = ["--device", "cpu", "--smoke", "--steps", "1", "--warmup", "1", "--out-dir", str(tmp_path)]
    assert gpu.main(argv) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    names = [case["case"] for case in data["cases"]]
    assert names == gpu.CASES
    for case in data["cases"]:
        assert case["step_ms"] > 0 and case["trainable"] >= 0, case
    rpg = [case for case in data["cases"] if case["case"].startswith("rpg")]
    assert all(case["generated"] > 0 and case["kernels"] for case in rpg)
    assert {row["kernel"] for row in data["kernels"]} >= {"index cache gather (index_select, * gain)"}
    assert all(row["ns_per_element"] > 0 for row in data["kernels"])
    text = (tmp_path / "gpu.md").read_text()
    assert "has not run on a GPU yet" in text
    assert all(f"| {name} |" in text for name in names)
    assert all(f"{a} / {b}:" in text for a, b in gpu.COMPARED)


def test_gpu_benchmark_refuses_unknown_cases(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    gpu = importlib.import_module("benchmarks.gpu")
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--smoke", "--cases", "dense,lora everything", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "gpu.json").exists()
