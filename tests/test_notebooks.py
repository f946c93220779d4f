"""The example notebooks: committed without outputs, and they run headless (nbmake).

The run uses the reduced setting (``HF_RPG_NOTEBOOK_FAST=1``); each notebook asserts its
own results (reloaded outputs identical, checkpoint smaller than dense, plot written).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "examples" / "notebooks"
EXPECTED = {"quickstart.ipynb", "bert_finetuning.ipynb", "dof_vs_accuracy.ipynb", "llm_finetuning.ipynb"}


def test_the_notebooks_exist():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cell"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs; strip them before committing"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    assert "FAST" in code[0].source, f"{name}: the first code cell must read HF_RPG_NOTEBOOK_FAST"


@pytest.mark.slow
def test_notebooks_run_headless(tmp_path, rt_dir):
    """nbmake in subprocesses, as CI would call it: ``pytest --nbmake examples/notebooks``.

    One subprocess per notebook, all at once: each spends most of its time starting a
    kernel and importing torch, so running them side by side roughly halves the wall time.
    """
    pytest.importorskip("nbmake", reason="nbmake is a dev dependency: pip install -e '.[dev]'")
    env = {
        **os.environ,
        "HF_RPG_NOTEBOOK_FAST": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        # bert_finetuning reads rt-polarity: the local copy, or the Hub's written out by the fixture
        "HF_RPG_RT_POLARITY_DIR": str(rt_dir),
        "TOKENIZERS_PARALLELISM": "false",
        # the kernel imports this checkout's hf_rpg, whatever is installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=300", "-q", "-p", "no:cacheprovider"]
    command += ["-o", "addopts=", "--rootdir", str(tmp_path)]
    runs = {
        name: subprocess.Popen(
            [*command, str(NOTEBOOKS / name)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in sorted(EXPECTED)
    }
    failures = []
    for name, run in runs.items():
        output, _ = run.communicate(timeout=600)
        if run.returncode != 0 or "1 passed" not in output:
            failures.append(f"--- {name} (exit {run.returncode}):\n{output[-5000:]}")
    assert not failures, "nbmake failed:\n" + "\n".join(failures)
