"""The two Accelerate examples end to end, in-process, with tiny settings on the real data.

Each run must train, print its metric, save a compact checkpoint that ``RPGModel.from_pretrained``
loads, and the reloaded model must score exactly what the script reported.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from hf_rpg import RPGModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COMPACT_FILES = {"rpg_config.json", "rpg_model.safetensors", "config.json", "README.md"}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hf_rpg_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_example() -> ModuleType:
    return _load("train_image_classification")


@pytest.fixture(scope="module")
def text_example() -> ModuleType:
    return _load("finetune_text_classification")


def _check_checkpoint(folder: Path) -> dict:
    assert {p.name for p in folder.iterdir()} == COMPACT_FILES
    return json.loads((folder / "rpg_config.json").read_text())


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
        total += len(labels)
    return correct / total


def test_image_example_digits_learns_and_saves(image_example, tmp_path, capsys):
    argv = ["--dataset", "digits", "--model", "resnet", "--dof", "0.25", "--max-steps", "40"]
    argv += ["--max-eval-samples", "200", "--compare-dense", "--output-dir", str(tmp_path), "--seed", "0"]
    results = image_example.main(argv)
    printed = capsys.readouterr().out
    assert "rpg: accuracy" in printed and "dense: accuracy" in printed and "smaller than the dense one" in printed
    assert results["rpg"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert results["dense"]["accuracy"] > 0.5
    assert json.loads((tmp_path / "results.json").read_text())["rpg"] == results["rpg"]

    meta = _check_checkpoint(tmp_path / "rpg")
    assert meta["mode"] == "replace" and meta["dof"]["ring_dof"] == results["dof"]["ring_dof"]
    assert results["rpg"]["checkpoint_bytes"] < results["dense"]["checkpoint_bytes"] / 2
    assert (tmp_path / "dense" / "model.safetensors").is_file()

    loaded = RPGModel.from_pretrained(tmp_path / "rpg")
    args = image_example.build_parser().parse_args(argv)
    _, test_loader, _ = image_example.make_loaders(args)
    assert _accuracy(loaded, test_loader) == results["rpg"]["accuracy"]


def test_image_example_dense_only_with_narrow_widths(image_example, tmp_path, capsys):
    argv = ["--dataset", "digits", "--dense-only", "--widths", "3,8,16", "--max-steps", "3"]
    results = image_example.main([*argv, "--max-eval-samples", "50", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr()
    assert "rpg" not in results and "dof" not in results and (tmp_path / "dense" / "model.safetensors").is_file()
    assert results["dense_parameters"] < 10_000 and f"{results['dense_parameters']:,} parameters" in printed.out
    assert "it/s" not in printed.err  # no progress bar when stderr is not a terminal


def test_image_example_vit_fashion_mnist_accumulation(image_example, fashion_dir, tmp_path, capsys):
    argv = ["--dataset", "fashion_mnist", "--model", "vit", "--dof", "5000", "--max-steps", "3"]
    argv += ["--gradient-accumulation-steps", "2", "--batch-size", "16", "--max-train-samples", "256"]
    argv += ["--max-eval-samples", "100", "--output-dir", str(tmp_path)]
    results = image_example.main(argv)
    assert "rpg: accuracy" in capsys.readouterr().out
    assert results["dof"]["ring_dof"] == 5000 and "dense" not in results
    meta = _check_checkpoint(tmp_path / "rpg")
    assert meta["base_model"]["class"] == "ViTForImageClassification"
    with safe_open(str(tmp_path / "rpg" / "rpg_model.safetensors"), "pt") as handle:
        assert handle.get_tensor("rpg_rings.default").shape == (5000,)
        # no dense copy of a generated weight is stored
        assert not any(k.endswith(("query.weight", "dense.weight", "projection.weight")) for k in handle.keys())  # noqa: SIM118
    loaded = RPGModel.from_pretrained(tmp_path / "rpg")
    assert loaded.config.id2label[9] == "Ankle boot"
    args = image_example.build_parser().parse_args(argv)
    _, test_loader, _ = image_example.make_loaders(args)
    assert _accuracy(loaded, test_loader) == results["rpg"]["accuracy"]


TEXT_TINY = ["--max-train-samples", "32", "--max-eval-samples", "48", "--max-steps", "2", "--batch-size", "16"]
TEXT_TINY += ["--max-length", "32", "--eval-batch-size", "48"]


def _text_loader(text_example: ModuleType, argv: list[str], path: str):
    from transformers import AutoTokenizer

    args = text_example.build_parser().parse_args(argv)
    _, test_loader = text_example.make_loaders(args, AutoTokenizer.from_pretrained(path))
    return test_loader


def test_text_example_delta(text_example, minilm, rt_dir, tmp_path, capsys):
    argv = ["--mode", "delta", "--dof", "0.01", "--lr", "1e-3", *TEXT_TINY, "--data-dir", str(rt_dir)]
    argv += ["--output-dir", str(tmp_path)]
    results = text_example.main(argv)
    assert "rpg: accuracy" in capsys.readouterr().out
    meta = _check_checkpoint(tmp_path / "rpg")
    recorded = meta["base_model"]["name_or_path"]  # relative to the checkpoint, never an absolute local path
    assert meta["mode"] == "delta" and (tmp_path / "rpg" / recorded).resolve() == Path(minilm).resolve()
    # delta: the ring (1% of the weights) and the head only; the 22.7M base weights stay out
    with safe_open(str(tmp_path / "rpg" / "rpg_model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == {"rpg_rings.default", "classifier.weight", "classifier.bias"}
        ring = handle.get_tensor("rpg_rings.default")
    assert ring.abs().max() > 0  # trained away from its zero start
    assert results["rpg"]["checkpoint_bytes"] < 1_100_000
    loaded = RPGModel.from_pretrained(tmp_path / "rpg")  # loads the base from the recorded path
    assert _accuracy(loaded, _text_loader(text_example, argv, minilm)) == results["rpg"]["accuracy"]


def test_text_example_replace_project(text_example, minilm, rt_dir, tmp_path, capsys):
    # only the first two layers generated, to stay fast; the rest of the pretrained weights are stored
    argv = ["--mode", "replace", "--init", "project", "--dof", "0.5", "--target-modules", r".*encoder\.layer\.[01]\..*"]
    argv += [*TEXT_TINY, "--data-dir", str(rt_dir), "--output-dir", str(tmp_path)]
    results = text_example.main(argv)
    assert "rpg: accuracy" in capsys.readouterr().out
    meta = _check_checkpoint(tmp_path / "rpg")
    assert meta["mode"] == "replace" and meta["config"]["init"] == "project"
    assert len(meta["manifest"]["targets"]) == 12  # 6 Linear layers in each of 2 BERT layers
    loaded = RPGModel.from_pretrained(tmp_path / "rpg")  # rebuilt from config.json, no base weights
    assert loaded.config.id2label == {0: "neg", 1: "pos"}
    assert _accuracy(loaded, _text_loader(text_example, argv, minilm)) == results["rpg"]["accuracy"]
    with pytest.raises(SystemExit):
        text_example.main(["--mode", "delta", "--init", "project"])
