"""A delta checkpoint is bound to the base it was trained on (``base_fingerprint``, issue 20):
another base of the same architecture is refused with a clear error unless the caller says
``check_base=False``; the same weights in another dtype match; older checkpoints load with
a warning that the base is unchecked."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import edit_json, read_json
from conftest import make_bert_cls

from hf_rpg import RPGBaseMismatchError, RPGCheckpointError, RPGConfig, RPGModel, apply_rpg
from hf_rpg.runtime.base_fingerprint import sample_positions

FIXTURES = Path(__file__).parent / "fixtures" / "compat_v1"
BATCH = {"input_ids": torch.arange(24).reshape(2, 12) % 99}


def _base(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_bert_cls()


def _trained_delta(tmp_path: Path) -> tuple[RPGModel, torch.nn.Module]:
    base = _base(0)
    pristine = copy.deepcopy(base)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=200, target_modules=["query", "value"]))
    with torch.no_grad():
        model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path)
    return model, pristine


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(**BATCH).logits


def test_another_base_of_the_same_architecture_is_refused(tmp_path):
    model, pristine = _trained_delta(tmp_path)
    other = _base(7)
    before = {n: p.clone() for n, p in other.named_parameters()}
    with pytest.raises(
        RPGBaseMismatchError, match=r"trained on another base model: the base weights of 'bert\.encoder"
    ):
        RPGModel.from_pretrained(tmp_path, base_model=other)
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())  # given back unchanged
    loaded = RPGModel.from_pretrained(tmp_path, base_model=other, check_base=False)  # the explicit override
    assert not torch.equal(_logits(loaded), _logits(model))
    assert torch.equal(_logits(RPGModel.from_pretrained(tmp_path, base_model=pristine)), _logits(model))


def test_the_recorded_base_reference_is_checked_too(tmp_path):
    base = _base(0)
    base.save_pretrained(tmp_path / "base")
    model = apply_rpg(
        base, RPGConfig(mode="delta", dof=200, target_modules=["query"], base_model_name_or_path=str(tmp_path / "base"))
    )
    model.save_pretrained(tmp_path / "ckpt")
    RPGModel.from_pretrained(tmp_path / "ckpt")
    _base(3).save_pretrained(tmp_path / "base")  # the base on disk changed under the checkpoint
    with pytest.raises(RPGBaseMismatchError, match="check_base=False"):
        RPGModel.from_pretrained(tmp_path / "ckpt")


def test_the_same_base_in_bfloat16_matches(tmp_path):
    _trained_delta(tmp_path)
    base = _base(0)
    for module in base.modules():  # weights that bfloat16 holds exactly, as a bf16 checkpoint's are
        for param in module.parameters(recurse=False):
            param.data = param.data.to(torch.bfloat16).float()
    RPGModel.from_pretrained(tmp_path, base_model=copy.deepcopy(base))
    RPGModel.from_pretrained(tmp_path, base_model=base.to(torch.bfloat16))


def test_a_checkpoint_before_the_binding_loads_with_a_note():
    import transformers

    base = transformers.BertForSequenceClassification.from_pretrained(FIXTURES / "bert_cls_delta.base")
    with pytest.warns(UserWarning, match=r"records no base_fingerprint .* not checked"):
        RPGModel.from_pretrained(FIXTURES / "bert_cls_delta", base_model=base)


def test_an_edited_fingerprint_is_refused(tmp_path):
    _, pristine = _trained_delta(tmp_path)
    edit_json(tmp_path / "rpg_config.json", lambda m: m["base_fingerprint"]["targets"].__setitem__(0, "0" * 16))
    with pytest.raises(RPGCheckpointError, match=r"saved with another rpg_config\.json"):
        RPGModel.from_pretrained(tmp_path, base_model=pristine)


def test_the_fingerprint_is_as_specified(tmp_path):
    _trained_delta(tmp_path)
    recorded = read_json(tmp_path / "rpg_config.json")["base_fingerprint"]
    assert recorded["method"] == "rpg-base-sample-v1" and recorded["samples"] == 64
    assert len(recorded["targets"]) == 4 and len(set(recorded["targets"])) == 4
    assert sample_positions(1024) == [16 * i for i in range(64)]
    assert sample_positions(10) == list(range(10))
