"""Compact checkpoints: contents, size bound, fresh-process determinism, Hub cache, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import save_tiny
from conftest import MODELS, make_bert_cls, make_bert_mlm, make_resnet, model_outputs
from safetensors import safe_open

from hf_rpg import (
    RPGCheckpointError,
    RPGGeneratorVersionError,
    RPGManifestMismatchError,
    RPGModel,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _saved(tmp_path, build=make_bert_mlm, **config) -> tuple[RPGModel, Path]:
    return save_tiny(tmp_path / "ckpt", build, **config), tmp_path / "ckpt"


def test_metadata_and_manifest(tmp_path):
    model, path = _saved(tmp_path)
    meta = json.loads((path / "rpg_config.json").read_text())
    assert meta["generator"] == "rpg-v1"
    assert meta["hf_rpg_version"] == __import__("hf_rpg").__version__
    assert meta["config"]["seed"] == 3
    assert meta["base_model"]["class"] == "BertForMaskedLM"
    targets = meta["manifest"]["targets"]
    assert len(targets) == len(model.layout.targets)
    for entry in targets:
        assert {"name", "shape", "offset", "gain", "ring"} <= set(entry)
    offsets = [t["offset"] for t in targets]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert json.loads((path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    card = (path / "README.md").read_text()
    assert "library_name: hf_rpg" in card and "RPGModel.from_pretrained" in card


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_file_holds_only_ring_others_and_buffers(tmp_path, name):
    model, path = _saved(tmp_path, MODELS[name].build)
    report = model.dof_report()
    with safe_open(path / "rpg_model.safetensors", "pt") as f:
        keys = set(f.keys())
    generated = {t.name for t in model.layout.targets}
    assert not keys & generated
    assert "rpg_rings.default" in keys
    buffers = {n: b for n, b in model.base_model.named_buffers() if n in model.base_model.state_dict()}
    buffer_bytes = sum(b.numel() * b.element_size() for b in buffers.values())
    assert keys == {"rpg_rings.default"} | {n for n, _ in model.base_model.named_parameters()} | set(buffers)
    size = (path / "rpg_model.safetensors").stat().st_size
    assert size <= 4 * report.trainable + buffer_bytes + 64 * 1024
    # far below the dense fp32 model for the bigger tiny models
    assert size < 4 * report.model_parameters


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.manual_seed(int(sys.argv[3]))
    torch.set_num_threads(int(sys.argv[4]))
    sys.path.insert(0, sys.argv[5])
    from conftest import MODELS, model_outputs
    from hf_rpg import RPGModel
    model = RPGModel.from_pretrained(sys.argv[1])
    batch = MODELS[sys.argv[2]].batch(7)
    torch.save(model_outputs(model, batch), sys.argv[1] + "/out.pt")
    """
)


@pytest.mark.parametrize("name", ["bert_mlm", "resnet"])
def test_fresh_process_with_other_seed_and_threads_is_bit_identical(tmp_path, name):
    model, path = _saved(tmp_path, MODELS[name].build)
    expected = model_outputs(model, MODELS[name].batch(7))
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(path), name, "987", "2", str(REPO_ROOT / "tests")],
        check=True,
        cwd=tmp_path,
    )
    got = torch.load(path / "out.pt", weights_only=True)
    assert torch.equal(got, expected)


def populate_hub_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> None:
    """Lay out ``folder`` as huggingface_hub's cache would after downloading ``repo_id``."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        shutil.copy2(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_from_pretrained_resolves_a_repo_id_through_the_hub_cache(tmp_path):
    model, path = _saved(tmp_path)
    populate_hub_cache(tmp_path / "hub", "someone/tiny-rpg", path)
    batch = MODELS["bert_mlm"].batch(2)
    loaded = RPGModel.from_pretrained("someone/tiny-rpg", cache_dir=tmp_path / "hub")
    assert torch.equal(model_outputs(loaded, batch), model_outputs(model, batch))
    with pytest.raises(RPGCheckpointError, match="could not be fetched from the Hub or found in the cache"):
        RPGModel.from_pretrained("someone/absent", cache_dir=tmp_path / "hub")


def test_unknown_generator_version_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    meta = json.loads((path / "rpg_config.json").read_text())
    meta["generator"] = "rpg-v9"
    (path / "rpg_config.json").write_text(json.dumps(meta))
    with pytest.raises(RPGGeneratorVersionError, match=r"generator 'rpg-v9'.* implements rpg-v1"):
        RPGModel.from_pretrained(path)


def test_loading_into_a_model_that_does_not_match_names_the_first_mismatch(tmp_path):
    _, path = _saved(tmp_path, make_bert_cls)
    import transformers

    other = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, num_labels=3)
    )  # fmt: skip
    with pytest.raises(
        RPGManifestMismatchError,
        match=r"manifest target 'bert.embeddings.word_embeddings.weight' has shape \[99, 32\] but the model's "
        r"parameter has shape \[99, 48\]",
    ):
        RPGModel.from_pretrained(path, base_model=other)
    with pytest.raises(RPGManifestMismatchError, match=r"has no module 'bert\.embeddings\.word_embeddings'"):
        RPGModel.from_pretrained(path, base_model=make_resnet())


def test_missing_and_corrupted_files(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(RPGCheckpointError, match=r"lacks rpg_model\.safetensors"):
        broken = tmp_path / "broken"
        shutil.copytree(path, broken)
        (broken / "rpg_model.safetensors").unlink()
        RPGModel.from_pretrained(broken)
    data = (path / "rpg_model.safetensors").read_bytes()
    (path / "rpg_model.safetensors").write_bytes(data[:-7] + b"\x00" * 7)
    with pytest.raises(RPGCheckpointError, match="does not match the SHA-256"):
        RPGModel.from_pretrained(path)


def test_save_overwrites_only_its_own_files(tmp_path):
    model, path = _saved(tmp_path)
    (path / "optimizer.pt").write_bytes(b"keep me")
    (path / "README.md").write_text("my own card")
    model.save_pretrained(path)
    assert (path / "optimizer.pt").read_bytes() == b"keep me"
    assert (path / "README.md").read_text() == "my own card"
    assert not [p for p in tmp_path.iterdir() if "rpg-tmp" in p.name]
