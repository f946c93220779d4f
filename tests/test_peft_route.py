"""PEFT and transformers routes (hf_rpg.api.peft_integration): what cannot be routed fails with
hf_rpg's errors naming hf_rpg's verbs; the claims the docs make about PEFT 0.21 and
transformers 5 are checked here, so that a release that changes them shows."""

from __future__ import annotations

import pytest
import torch
from conftest import make_bert_cls
from transformers import AutoModelForSequenceClassification

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, RPGStateError, apply_rpg
from hf_rpg.api.peft_integration import MIXIN_REPLACEMENTS

peft = pytest.importorskip("peft")  # the bench extra (installed by dev runs) holds it


def test_get_peft_model_with_an_rpg_config_names_apply_rpg():
    config = RPGConfig(mode="delta", dof=100)
    assert not hasattr(config, "peft_type")  # an AttributeError for probes, a clear message for callers
    with pytest.raises(RPGConfigError, match=r"RPGConfig is not a PEFT config.*hf_rpg\.apply_rpg\(model, config\)"):
        peft.get_peft_model(make_bert_cls(), config)


def test_peft_registers_only_members_of_its_closed_enum():
    from peft.utils import register_peft_method

    with pytest.raises(ValueError, match=r"Unknown PEFT type RPG, please add an entry to .*PeftType"):
        register_peft_method(name="rpg", config_cls=RPGConfig, model_cls=RPGModel)


@pytest.mark.parametrize("name", sorted(MIXIN_REPLACEMENTS))
def test_forwarded_transformers_adapter_methods_name_the_hf_rpg_verb(name):
    model = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100))
    assert callable(getattr(type(model.base_model), name, None))  # transformers' PeftAdapterMixin has it
    with pytest.raises(RPGStateError, match=rf"{name}\(\) is transformers' PEFT method.*on an RPGModel use"):
        getattr(model, name)()


def test_peft_verbs_on_an_rpg_model_are_hf_rpgs():
    model = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100))
    for verb in ("add_adapter", "set_adapter", "delete_adapter", "load_adapter", "disable_adapter"):
        owner = next(c for c in type(model).__mro__ if verb in vars(c))
        assert owner.__module__.startswith("hf_rpg."), (verb, owner)  # not transformers' PeftAdapterMixin
    model.add_adapter("b", RPGConfig(mode="delta", dof=100))
    model.set_adapter("b")
    assert model.active_adapters == ["b"]


def test_transformers_routes_cannot_load_an_hf_rpg_folder(tmp_path):
    torch.manual_seed(0)
    apply_rpg(make_bert_cls(), RPGConfig(dof=100)).save_pretrained(tmp_path / "ckpt")
    # no hook in transformers for other weight formats: its own error (docs/usage.md says so)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    # its load_adapter wants PEFT's adapter_config.json (read through PEFT's closed PeftType enum)
    with pytest.raises(ValueError, match="adapter model file not found"):
        make_bert_cls().load_adapter(str(tmp_path / "ckpt"))
