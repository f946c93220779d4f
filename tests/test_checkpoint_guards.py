"""Checkpoint paths that used to give a silently wrong model, or destroy a good checkpoint
(issue 20), each reproduced as found: dtypes lost on reload, edited ``ring_dtype`` or
``config.json``, saves of state that would not load, a delta checkpoint missing a tensor."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, build
from checkpoint_helpers import edit_json, file_bytes, read_json, rewrite_weights, save_tiny
from conftest import MODELS, make_bert_cls

from hf_rpg import RPGCheckpointError, RPGConfig, RPGError, RPGModel, apply_rpg

CONFIG, WEIGHTS, MODEL_CONFIG = "rpg_config.json", "rpg_model.safetensors", "config.json"


def _logits(model, name="llama"):
    batch = (MODELS[name] if name in MODELS else ARCHITECTURES[name]).batch(0)
    batch = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_replace_model_built_from_a_config_reloads_in_its_dtype(dtype, tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(build("llama").to(dtype), RPGConfig(dof=0.2, seed=1))
    model.save_pretrained(tmp_path)
    loaded = RPGModel.from_pretrained(tmp_path)
    assert {p.dtype for n, p in loaded.base_model.named_parameters()} == {dtype}
    assert {w.dtype for _, w in loaded.generated_weights()} == {dtype}
    assert loaded.rpg_rings["default"].dtype == torch.float32  # ring_dtype, whatever the model's dtype
    assert torch.equal(_logits(loaded), _logits(model))
    assert read_json(tmp_path / CONFIG)["dtypes"] == {"default": str(dtype).removeprefix("torch."), "exceptions": {}}


def test_a_cast_after_apply_keeps_the_ring_in_ring_dtype_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(build("llama"), RPGConfig(dof=0.2, seed=1)).to(torch.bfloat16)
    assert model.rpg_rings["default"].dtype == torch.float32
    assert {w.dtype for _, w in model.generated_weights()} == {torch.bfloat16}
    model.save_pretrained(tmp_path)
    loaded = RPGModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.rpg_rings["default"], model.rpg_rings["default"])
    assert torch.equal(_logits(loaded), _logits(model))


def test_an_edited_ring_dtype_is_refused(tmp_path):
    save_tiny(tmp_path)
    edit_json(tmp_path / CONFIG, lambda meta: meta["config"].__setitem__("ring_dtype", "bfloat16"))
    with pytest.raises(RPGCheckpointError, match=r"saved with another rpg_config\.json: .*ring_dtype"):
        RPGModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("layer_norm_eps", 1e-3), ("hidden_act", "relu")])
def test_an_edited_architecture_in_config_json_is_refused(key, value, tmp_path):
    save_tiny(tmp_path)
    edit_json(tmp_path / MODEL_CONFIG, lambda config: config.__setitem__(key, value))
    with pytest.raises(RPGCheckpointError, match=r"config\.json differs from the config\.json the weights were saved"):
        RPGModel.from_pretrained(tmp_path)


def test_config_json_keys_that_change_nothing_may_differ(tmp_path):
    model = save_tiny(tmp_path)
    edit_json(tmp_path / MODEL_CONFIG, lambda config: config.__setitem__("transformers_version", "9.9.9"))
    assert torch.equal(_logits(RPGModel.from_pretrained(tmp_path), "bert_mlm"), _logits(model, "bert_mlm"))


@pytest.mark.parametrize("how", ["nan ring", "fp16 run diverged", "state_dict of the wrong shape"])
def test_a_save_that_would_not_load_is_refused_and_the_good_checkpoint_stays(how, tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(build("llama"), RPGConfig(dof=0.2, seed=1))
    model.save_pretrained(tmp_path)
    good = file_bytes(tmp_path)
    kwargs = {}
    if how == "nan ring":
        with torch.no_grad():
            model.rpg_rings["default"][3] = float("nan")
    elif how == "fp16 run diverged":
        model = apply_rpg(build("llama").half(), RPGConfig(dof=0.2, seed=1, ring_dtype="float16"))
        with torch.no_grad():
            model.rpg_rings["default"].mul_(1e4).mul_(1e4)  # overflows float16: inf, then NaN in training
    else:
        kwargs = {"state_dict": {"rpg_rings.default": torch.zeros(7)}}
    with pytest.raises(
        RPGCheckpointError, match=r"refusing to save .*(NaN or Inf|has shape \[7\]).*Nothing was written"
    ):
        model.save_pretrained(tmp_path, **kwargs)
    assert file_bytes(tmp_path) == good
    RPGModel.from_pretrained(tmp_path)
    with pytest.raises(RPGCheckpointError, match="allow_invalid=True never writes over a checkpoint"):
        model.save_pretrained(tmp_path, allow_invalid=True, **kwargs)
    assert file_bytes(tmp_path) == good
    with pytest.warns(UserWarning, match=r"saving a checkpoint from_pretrained will refuse"):
        model.save_pretrained(tmp_path / "debug", allow_invalid=True, **kwargs)
    with pytest.raises(RPGError):
        RPGModel.from_pretrained(tmp_path / "debug")


def test_a_delta_checkpoint_missing_a_tensor_and_its_files_entry_is_refused(tmp_path):
    torch.manual_seed(0)
    base = make_bert_cls()
    model = apply_rpg(base, RPGConfig(mode="delta", dof=200, target_modules=["query", "value"]))
    with torch.no_grad():
        model.base_model.classifier.weight.add_(1.0)  # the trained head differs from the base's
    model.save_pretrained(tmp_path)
    rewrite_weights(tmp_path, lambda tensors: tensors.pop("classifier.weight"), record_checksum=False)
    torch.manual_seed(0)
    with pytest.raises(RPGCheckpointError, match=r"lacks 1 tensor\(s\) the model needs, first 'classifier\.weight'"):
        RPGModel.from_pretrained(tmp_path, base_model=make_bert_cls())
