"""Hub upload: exactly the compact files, with a generated model card. Only the network
calls of huggingface_hub.HfApi are replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from conftest import make_bert_cls, model_outputs
from test_checkpoint import populate_hub_cache

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.api.cli import main

COMPACT = {"README.md", "config.json", "rpg_config.json", "rpg_model.safetensors"}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Record create_repo/upload_folder calls and keep a copy of each uploaded folder."""
    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / "uploaded" / str(len(calls["upload_folder"]))
        shutil.copytree(folder_path, copy)
        calls["upload_folder"].append({"repo_id": repo_id, "folder": copy, **kwargs})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid="a" * 40,
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_to_hub_uploads_exactly_the_compact_files_with_a_card(fake_hub, tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.1))
    info = model.push_to_hub(
        "someone/bert-rpg",
        private=True,
        card_info={"metrics": {"accuracy": 0.875}, "datasets": "rotten_tomatoes"},
    )
    assert info.commit_url.endswith("/commit/abc")
    assert fake_hub["create_repo"][0]["repo_id"] == "someone/bert-rpg"
    assert fake_hub["create_repo"][0]["private"] is True
    upload = fake_hub["upload_folder"][0]
    folder: Path = upload["folder"]
    assert {p.name for p in folder.iterdir()} == COMPACT
    assert set(upload["allow_patterns"]) == COMPACT
    card = (folder / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "hf_rpg"
    assert {"hf_rpg", "rpg", "rpg-replace"} <= set(meta["tags"])
    assert meta["datasets"] == ["rotten_tomatoes"]
    report = model.dof_report()
    assert f"{report.ring_dof:,}" in card and f"{report.compression_ratio:.1f}x smaller than the dense" in card
    assert f"{report.dof_fraction:.2%} of the {report.generated_elements:,} generated elements" in card
    assert "| accuracy | 0.875 |" in card
    assert 'RPGModel.from_pretrained("someone/bert-rpg")' in card

    # what was uploaded loads back through the Hub cache, offline
    populate_hub_cache(tmp_path / "cache", "someone/bert-rpg", folder)
    loaded = RPGModel.from_pretrained("someone/bert-rpg", cache_dir=tmp_path / "cache")
    batch = {"input_ids": torch.randint(0, 99, (2, 6))}
    assert torch.equal(model_outputs(loaded, batch), model_outputs(model, batch))


def test_delta_card_names_the_base_model(fake_hub, tmp_path):
    base_dir = tmp_path / "base"
    make_bert_cls().save_pretrained(base_dir)
    from transformers import BertForSequenceClassification

    model = apply_rpg(BertForSequenceClassification.from_pretrained(base_dir), RPGConfig(mode="delta", dof=100))
    with pytest.warns(UserWarning, match="is a local folder"):
        model.push_to_hub("someone/bert-delta")
    folder = fake_hub["upload_folder"][0]["folder"]
    meta = _front_matter((folder / "README.md").read_text())
    # a local folder is no base model on the Hub: neither the card nor rpg_config.json holds its absolute path
    assert "base_model" not in meta
    assert "rpg-delta" in meta["tags"]
    recorded = json.loads((folder / "rpg_config.json").read_text())["base_model"]["name_or_path"]
    assert recorded.startswith("../") and recorded.endswith("/base") and str(tmp_path) not in recorded
    assert str(base_dir) not in (folder / "README.md").read_text()


def test_cli_push_uploads_a_checkpoint_directory(fake_hub, tmp_path, capsys):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.1))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "optimizer.pt").write_bytes(b"not uploaded")
    assert main(["push", str(tmp_path / "ckpt"), "someone/from-cli", "--message", "first"]) == 0
    upload = fake_hub["upload_folder"][0]
    assert {p.name for p in upload["folder"].iterdir()} == COMPACT
    assert upload["commit_message"] == "first"
    assert 'RPGModel.from_pretrained("someone/from-cli")' in (upload["folder"] / "README.md").read_text()
    assert "pushed" in capsys.readouterr().out


def test_cli_push_of_a_non_checkpoint_is_a_one_line_error(fake_hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "someone/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an hf_rpg checkpoint" in err[0]
    assert fake_hub["upload_folder"] == []
