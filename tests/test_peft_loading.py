"""Loading as PEFT does: frozen unless ``is_trainable=True``, ``RPGConfig.from_pretrained``,
``merge_adapter`` / ``unmerge_adapter``, ``layers_to_transform`` / ``layers_pattern`` and
``rank_pattern``."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS, make_bert_cls, model_outputs, train_steps

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, RPGStateError, RPGTargetError, apply_rpg

BATCH = MODELS["bert_cls"].batch(0)


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_bert_cls()


def _trained_delta(**config) -> RPGModel:
    model = apply_rpg(_base(), RPGConfig(mode="delta", dof=300, seed=1, **config))
    train_steps(model, BATCH, steps=2)
    return model


def test_from_pretrained_is_frozen_by_default_and_trainable_on_request(tmp_path):
    model = _trained_delta()
    with pytest.warns(UserWarning, match="records no base model"):
        model.save_pretrained(tmp_path / "ckpt")
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=_base())
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.dof_report().trainable == 0
    resumed = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=_base(), is_trainable=True)
    trainable = {n for n, p in resumed.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "rpg_rings.default" in trainable
    start = resumed.rpg_rings["default"].detach().clone()
    train_steps(resumed, BATCH, steps=1)
    assert not torch.equal(resumed.rpg_rings["default"].detach(), start)
    with pytest.raises(RPGConfigError, match="is_trainable must be True or False, got 'yes'"):
        RPGModel.from_pretrained(tmp_path / "ckpt", base_model=_base(), is_trainable="yes")


def test_config_from_pretrained_reads_the_checkpoint_config(tmp_path):
    model = _trained_delta(rank=4)
    with pytest.warns(UserWarning, match="records no base model"):
        model.save_pretrained(tmp_path / "ckpt")
    config = RPGConfig.from_pretrained(tmp_path / "ckpt")
    assert config == model.rpg_config
    assert config.rank == 4 and config.mode == "delta"


def test_merge_and_unmerge_adapter_keep_the_outputs(tmp_path):
    for rank in (None, 4):
        model = _trained_delta(rank=rank)
        base_weight = model.base_model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        expected = model_outputs(model, BATCH)
        model.merge_adapter()
        assert model.merged
        merged_weight = model.base_model.bert.encoder.layer[0].attention.self.query._parameters["weight"]
        assert not torch.equal(merged_weight, base_weight)  # the update is in the base weight now
        torch.testing.assert_close(model_outputs(model, BATCH), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(RPGStateError, match="unmerge_adapter"), model.disable_adapter():
            pass
        with pytest.warns(UserWarning, match="already merged"):
            model.merge_adapter()
        model.unmerge_adapter()
        assert not model.merged
        torch.testing.assert_close(merged_weight, base_weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(model_outputs(model, BATCH), expected, rtol=1e-5, atol=1e-5)
        model.merge_adapter()
        dense = model.merge_and_unload()  # the update is not added twice
        torch.testing.assert_close(model_outputs(dense, BATCH), expected, rtol=1e-5, atol=1e-5)


def test_merge_adapter_refuses_replace_mode():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=300))
    with pytest.raises(RPGStateError, match=r"merge_adapter\(\) needs mode='delta'.*merge_and_unload"):
        model.merge_adapter()


def test_layers_to_transform_selects_numbered_layers():
    config = RPGConfig(mode="delta", dof=100, target_modules=["query", "value"], layers_to_transform=[1])
    model = apply_rpg(make_bert_cls(), config)
    names = [t.name for t in model.layout.targets]
    assert names and all(".layer.1." in n for n in names), names
    patterned = RPGConfig(
        mode="delta", dof=100, target_modules="all-linear", layers_to_transform=0, layers_pattern="layer"
    )
    names = [t.name for t in apply_rpg(make_bert_cls(), patterned).layout.targets]
    assert names and all(n.startswith("bert.encoder.layer.0.") for n in names), names
    with pytest.raises(RPGTargetError, match="layers_to_transform=7"):
        apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100, layers_to_transform=7))


def test_rank_pattern_overrides_rank_per_layer():
    config = RPGConfig(mode="delta", dof=100, target_modules=["query", "value"], rank=4, rank_pattern={"value": 2})
    model = apply_rpg(make_bert_cls(), config)
    ranks = {t.name.split(".")[-2]: t.rank for t in model.layout.targets}
    assert ranks == {"query": 4, "value": 2}
    full_but_one = RPGConfig(
        mode="delta", dof=100, target_modules=["query", "value"], rank_pattern={r"layer\.0\..*query": 3}
    )
    layout = apply_rpg(make_bert_cls(), full_but_one).layout
    assert {t.name: t.rank for t in layout.targets if t.rank is not None} == {
        "bert.encoder.layer.0.attention.self.query.weight": 3
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layers_to_transform": -1}, r"layers_to_transform must be a layer number .* got -1"),
        ({"layers_to_transform": []}, r"layers_to_transform must be .* non-empty list"),
        ({"layers_to_transform": [0, "1"]}, r"layers_to_transform must be"),
        ({"layers_to_transform": 0, "target_modules": ".*query"}, r"needs target_modules as a list.*'\.\*query'"),
        ({"layers_pattern": "layer"}, r"layers_pattern='layer' is used only with layers_to_transform"),
        ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\] must be a positive int \(a rank\), got 0"),
        ({"rank_pattern": {"(": 2}}, r"rank_pattern key '\(' is not a valid regular expression"),
        ({"rank_pattern": {}}, r"rank_pattern must be None or a non-empty dict"),
        ({"rank_pattern": {"query": 2}, "mode": "replace"}, r"rank_pattern=.* applies to mode='delta'"),
    ],
)
def test_new_fields_name_the_bad_value(fields, message):
    settings = {"mode": "delta", "dof": 100, **fields}
    with pytest.raises(RPGConfigError, match=message):
        RPGConfig(**settings)
