"""The Hub: one ``snapshot_download`` per checkpoint, local-looking names never sent to it (and
failing at once, naming the path), and no absolute local path recorded as the base model.
Only huggingface_hub's download function is replaced (the network edge)."""

from __future__ import annotations

import json
import shutil
import time
import warnings

import pytest
import torch
import transformers
from conftest import MODELS, make_bert_cls, model_outputs
from huggingface_hub.errors import LocalEntryNotFoundError

import hf_rpg.format.hub_resolve
from hf_rpg import RPGCheckpointError, RPGConfig, RPGModel, apply_rpg
from hf_rpg.api.cli import main
from hf_rpg.format.files import CONFIG_NAME, MODEL_CONFIG_NAME, WEIGHTS_NAME

BATCH = MODELS["bert_cls"].batch(0)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """``snapshot_download`` serving folders of ``repos`` (repo id -> folder); every call recorded."""
    calls: list[dict] = []
    repos: dict[str, object] = {}

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        if repo_id not in repos:
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache and the Hub cannot be reached")
        snapshot = tmp_path / "snapshots" / repo_id.replace("/", "--")
        if not snapshot.exists():
            snapshot.mkdir(parents=True)
            for file in repos[repo_id].iterdir():
                if any(file.match(pattern) for pattern in kwargs.get("allow_patterns") or ["*"]):
                    shutil.copy2(file, snapshot / file.name)
        return str(snapshot)

    monkeypatch.setattr(hf_rpg.format.hub_resolve, "snapshot_download", snapshot_download)
    return calls, repos


def _saved(tmp_path) -> tuple[RPGModel, object]:
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=300))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "optimizer.pt").write_bytes(b"never downloaded")
    return model, tmp_path / "ckpt"


def test_a_repo_id_is_fetched_with_one_snapshot_download(hub, tmp_path):
    calls, repos = hub
    model, path = _saved(tmp_path)
    repos["someone/tiny-rpg"] = path
    loaded = RPGModel.from_pretrained("someone/tiny-rpg", revision="v1")
    assert torch.equal(model_outputs(loaded, BATCH), model_outputs(model, BATCH))
    assert len(calls) == 1
    assert calls[0]["revision"] == "v1"
    assert sorted(calls[0]["allow_patterns"]) == sorted([CONFIG_NAME, WEIGHTS_NAME, MODEL_CONFIG_NAME])
    assert RPGConfig.from_pretrained("someone/tiny-rpg") == model.rpg_config
    assert len(calls) == 2


def test_hub_errors_name_the_repo(hub, tmp_path):
    calls, repos = hub
    _, path = _saved(tmp_path)
    (path / WEIGHTS_NAME).unlink()
    repos["someone/half"] = path
    with pytest.raises(RPGCheckpointError, match=r"Hub repo 'someone/half' is not an hf_rpg checkpoint: it lacks rpg_"):
        RPGModel.from_pretrained("someone/half")
    with pytest.raises(RPGCheckpointError, match=r"'someone/absent' .* could not be fetched from the Hub or found in"):
        RPGModel.from_pretrained("someone/absent")
    assert [c["repo_id"] for c in calls] == ["someone/half", "someone/absent"]


@pytest.mark.parametrize(
    "name", ["nosuchdir", "./ckpt", "../ckpt", "/no/such/ckpt", "~/no-such-ckpt", "a/b/c", "runs/ckpt", "a/b/"]
)
def test_local_looking_names_never_reach_the_hub_and_fail_at_once(hub, tmp_path, monkeypatch, name):
    calls, _ = hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/ckpt": part of it exists, so it is a local path
    start = time.perf_counter()
    with pytest.raises(RPGCheckpointError) as info:
        RPGModel.from_pretrained(name)
    assert time.perf_counter() - start < 1.0
    assert repr(name) in str(info.value) and "not a checkpoint directory" in str(info.value)
    with pytest.raises(RPGCheckpointError, match="not a checkpoint directory"):
        RPGConfig.from_pretrained(name)
    assert calls == []


def test_cli_info_of_a_missing_directory_fails_in_under_a_second(hub, tmp_path, monkeypatch, capsys):
    calls, _ = hub
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(["info", "nosuchdir"]) == 1
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert err.startswith("hf-rpg info: error: 'nosuchdir' is not a checkpoint directory: no such path")
    assert calls == []


def _delta_on(base_dir, save_dir):
    base = transformers.BertForSequenceClassification.from_pretrained(base_dir)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=300))
    model.save_pretrained(save_dir)
    meta = json.loads((save_dir / CONFIG_NAME).read_text())
    return model, meta, (save_dir / "README.md").read_text()


def test_a_base_from_the_hub_cache_is_recorded_by_repo_id_and_commit(tmp_path):
    commit = "ab" * 20
    base_dir = tmp_path / "hub" / "models--someone--bert-base" / "snapshots" / commit
    make_bert_cls().save_pretrained(base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known repo id: nothing to warn about
        _, meta, card = _delta_on(base_dir, tmp_path / "delta")
    assert meta["base_model"]["name_or_path"] == "someone/bert-base"
    assert meta["base_model"]["revision"] == commit
    assert "base_model: someone/bert-base" in card and str(tmp_path) not in card


def test_a_local_base_is_recorded_relative_and_still_loads(tmp_path):
    base_dir = tmp_path / "models" / "base"
    make_bert_cls().save_pretrained(base_dir)
    with pytest.warns(UserWarning, match=r"records it as '\.\./models/base', relative to the checkpoint directory"):
        model, meta, card = _delta_on(base_dir, tmp_path / "delta")
    assert meta["base_model"]["name_or_path"] == "../models/base"
    assert str(tmp_path) not in json.dumps(meta) and str(tmp_path) not in card
    assert "\nbase_model:" not in card.split("---")[1]  # the Hub's base_model is a repo id, never a path
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "delta", moved / "delta")
    shutil.copytree(base_dir, moved / "models" / "base")
    shutil.rmtree(tmp_path / "models")
    loaded = RPGModel.from_pretrained(moved / "delta")  # the relative record follows the folders
    assert torch.equal(model_outputs(loaded, BATCH), model_outputs(model, BATCH))
