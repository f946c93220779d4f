"""The core install is what the library imports: with the examples' packages unimportable,
hf_rpg applies, saves, loads and describes a checkpoint; ``hf-rpg demo`` names the extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tqdm is in the extra too, but transformers and huggingface_hub depend on it: always installed.
EXAMPLES_ONLY = ("datasets", "evaluate", "sklearn", "matplotlib", "pyarrow", "pandas")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}


def test_core_dependencies_leave_the_examples_packages_to_the_extras():
    project = _project()
    core = _names(project["dependencies"])
    assert core == {"torch", "transformers", "accelerate", "safetensors", "huggingface_hub", "numpy", "numba"}
    examples = _names(project["optional-dependencies"]["examples"])
    assert {"datasets", "evaluate", "scikit-learn", "matplotlib", "tqdm"} <= examples
    assert examples <= _names(project["optional-dependencies"]["dev"])  # the tests install everything


def test_the_library_wheel_leaves_the_study_code_to_its_own_distribution():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert packages["include"] == ["hf_rpg", "hf_rpg.*"]
    studies = tomllib.loads((ROOT / "studies" / "pyproject.toml").read_text())
    assert studies["project"]["name"] == "hf_rpg_studies"
    assert "hf_rpg" in _names(studies["project"]["dependencies"])
    assert studies["tool"]["setuptools"]["packages"]["find"]["include"] == ["hf_rpg_studies", "hf_rpg_studies.*"]
    assert (ROOT / "studies" / "hf_rpg_studies" / "__init__.py").is_file()
    assert not (ROOT / "hf_rpg_studies").exists()


def test_the_library_runs_without_the_examples_packages(tmp_path):
    # None in sys.modules: importing raises ModuleNotFoundError, find_spec says "not installed"
    blocker = f"""
    import sys
    sys.modules.update(dict.fromkeys({EXAMPLES_ONLY!r}))
    """
    script = (
        blocker
        + f"""
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from hf_rpg import RPGConfig, RPGModel, apply_rpg
    from hf_rpg.api.cli import main
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    model = apply_rpg(BertForSequenceClassification(config), RPGConfig(dof=100))
    model.save_pretrained({str(tmp_path / "ckpt")!r})
    loaded = RPGModel.from_pretrained({str(tmp_path / "ckpt")!r})
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert main(["info", {str(tmp_path / "ckpt")!r}]) == 0
    assert main(["demo", "--epochs", "1"]) == 1
    blocked = {EXAMPLES_ONLY!r}
    print("blocked loaded:", sorted(m for m, v in sys.modules.items() if v and m.partition(".")[0] in blocked))
    """
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blocked loaded: []" in result.stdout
    assert "hf-rpg demo: error: " in result.stderr
    assert "-e ./studies" in result.stderr  # the study code's own distribution
