"""Named adapters in delta mode (hf_rpg.api.adapters): PEFT's verbs on several rings over one
frozen base, their checkpoints in PEFT's folder layout, a weighted combination, mixed
adapters in one batch, and hot-swapping into a compiled model without recompiling."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS, make_bert_cls, model_outputs, train_steps

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, RPGStateError, apply_rpg

BATCH = MODELS["bert_cls"].batch(0)
OTHER_BATCH = MODELS["bert_cls"].batch(1)


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_bert_cls()


def _config(**extra) -> RPGConfig:
    return RPGConfig(mode="delta", dof=300, seed=3, **extra)


def _two_adapters(**extra) -> tuple[RPGModel, dict[str, torch.Tensor]]:
    """Adapters "default" and "b" trained on different batches; their outputs on BATCH."""
    model = apply_rpg(_base(), _config(**extra))
    train_steps(model, BATCH, steps=3)
    outputs = {"default": model_outputs(model, BATCH)}
    with model.disable_adapter():
        no_update = model_outputs(model, BATCH)
    model.add_adapter("b", _config(**extra))
    assert model.active_adapter == "default"  # as in PEFT, adding does not activate
    model.set_adapter("b")
    assert model.active_adapters == ["b"]
    # a new adapter's update starts at zero; its head starts as a copy of the active adapter's
    assert torch.equal(model_outputs(model, BATCH), no_update)
    train_steps(model, OTHER_BATCH, steps=3)
    outputs["b"] = model_outputs(model, BATCH)
    return model, outputs


@pytest.mark.parametrize("rank", [None, 4], ids=["full-rank", "low-rank"])
def test_adapters_switch_exactly_and_keep_their_own_heads(rank):
    model, outputs = _two_adapters(rank=rank)
    assert not torch.equal(outputs["default"], outputs["b"])
    ring = model.rpg_rings["default"]
    for name in ("default", "b", "default", "b"):
        model.set_adapter(name)
        assert model.rpg_rings["default"] is ring  # values are copied in place: the Parameter stays
        assert torch.equal(model_outputs(model, BATCH), outputs[name])
    assert sorted(model.adapters) == ["b", "default"]


def test_save_lays_adapters_out_as_peft_and_they_load_back(tmp_path):
    model, outputs = _two_adapters()
    with pytest.warns(UserWarning, match="records no base model"):
        model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "rpg_config.json").is_file()  # default at the root
    assert (tmp_path / "out" / "b" / "rpg_model.safetensors").is_file()  # the others in subfolders
    assert model.active_adapter == "b"  # saving leaves the active adapter as it was
    loaded = RPGModel.from_pretrained(tmp_path / "out", base_model=_base())
    loaded.load_adapter(tmp_path / "out" / "b", adapter_name="b")
    assert loaded.active_adapter == "default"
    assert torch.equal(model_outputs(loaded, BATCH), outputs["default"])
    loaded.set_adapter("b")
    assert torch.equal(model_outputs(loaded, BATCH), outputs["b"])
    named = RPGModel.from_pretrained(tmp_path / "out" / "b", base_model=_base(), adapter_name="b")
    assert named.active_adapter == "b" and torch.equal(model_outputs(named, BATCH), outputs["b"])


def test_delete_adapter_and_errors_name_the_adapters():
    model, outputs = _two_adapters()
    with pytest.raises(RPGConfigError, match=r"set_adapter\(\): no adapter named 'c'; this model's adapters: \["):
        model.set_adapter("c")
    with pytest.raises(RPGConfigError, match=r"add_adapter\(\): an adapter named 'b' exists"):
        model.add_adapter("b", _config())
    with pytest.raises(RPGConfigError, match=r"adapter 'c' has dof=400, this model's adapters dof=300"):
        model.add_adapter("c", RPGConfig(mode="delta", dof=400, seed=3))
    with pytest.raises(RPGConfigError, match=r"adapter_name must be 1-64 characters .* got 'a/b'"):
        model.add_adapter("a/b", _config())
    model.delete_adapter("b")  # the active one: "default" becomes active
    assert model.active_adapter == "default" and list(model.adapters) == ["default"]
    assert torch.equal(model_outputs(model, BATCH), outputs["default"])
    with pytest.raises(RPGStateError, match="only adapter"):
        model.delete_adapter("default")
    replace = apply_rpg(_base(), RPGConfig(dof=300))
    with pytest.raises(RPGStateError, match=r"add_adapter\(\) needs mode='delta'"):
        replace.add_adapter("b", RPGConfig(dof=300))


def test_a_loaded_adapter_must_share_the_layout(tmp_path):
    model, _ = _two_adapters()
    other = apply_rpg(_base(), RPGConfig(mode="delta", dof=300, seed=3, target_modules=["query"]))
    with pytest.warns(UserWarning, match="records no base model"):
        other.save_pretrained(tmp_path / "other")
    with pytest.raises(RPGConfigError, match=r"adapter 'q' has target_modules=\['query'\]"):
        model.load_adapter(tmp_path / "other", adapter_name="q")
    assert sorted(model.adapters) == ["b", "default"]  # nothing half-added


@pytest.mark.parametrize("rank", [None, 4], ids=["full-rank", "low-rank"])
def test_weighted_adapter_is_the_weighted_sum_of_the_updates(rank):
    model, _ = _two_adapters(rank=rank, update="full" if rank is None else "lowrank")
    updates = {}
    for name in ("default", "b"):
        model.set_adapter(name)
        with model.disable_adapter():
            base = dict(model.generated_weights())
        # low-rank targets give ΔW itself (and the base weight inside disable_adapter)
        updates[name] = {n: w - base[n] if rank is None else w.clone() for n, w in model.generated_weights()}
    model.add_weighted_adapter(["default", "b"], [0.5, -2.0], adapter_name="mix")
    model.set_adapter("mix")
    with model.disable_adapter():
        base = dict(model.generated_weights())
    for name, weight in model.generated_weights():
        update = weight - base[name] if rank is None else weight
        expected = 0.5 * updates["default"][name] - 2.0 * updates["b"][name]
        torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(RPGConfigError, match="same length"):
        model.add_weighted_adapter(["default"], [1.0, 2.0], adapter_name="bad")


def test_weighted_adapter_refuses_rpg_lora_updates():
    model, _ = _two_adapters()  # dof=300: update="auto" is rpg-lora-v1
    assert set(model.plan.servings()) == {"lora"}
    with pytest.raises(RPGConfigError, match=r"rpg-lora-v1 updates .* not the weighted sum"):
        model.add_weighted_adapter(["default", "b"], [0.5, 0.5], adapter_name="mix")
    assert sorted(model.adapters) == ["b", "default"]  # nothing half-added


def test_mixed_adapters_in_one_batch():
    model, _ = _two_adapters(rank=4)
    model.eval()
    names = ["b", "default", "__base__", "b", "default", "default", "__base__", "b"][: BATCH["input_ids"].shape[0]]
    inputs = {k: v for k, v in BATCH.items() if k != "labels"}
    model.set_adapter("b")  # "__base__" rows: no ring update, the active adapter's head
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        assert model.active_adapter == "b"
        for position, name in enumerate(names):
            row = {k: v[position : position + 1] for k, v in inputs.items()}
            model.set_adapter("b" if name == "__base__" else name)
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(**row).logits
            else:
                alone = model(**row).logits
            torch.testing.assert_close(mixed[position : position + 1], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(RPGConfigError, match="adapter_names has 1 entries for a batch of"):
        model(**inputs, adapter_names=["b"])
    with pytest.raises(RPGStateError, match="leave out labels"):
        model(**BATCH, adapter_names=names)


def test_hot_swapping_into_a_compiled_model_does_not_recompile(tmp_path):
    model, outputs = _two_adapters()
    with pytest.warns(UserWarning, match="records no base model"):
        model.save_pretrained(tmp_path / "out")  # default at the root, b in out/b
    model.set_adapter("default")
    model.eval()
    compiled = torch.compile(model, backend="eager")
    inputs = {k: v for k, v in BATCH.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, outputs["default"], rtol=1e-5, atol=1e-6)
        with torch._dynamo.config.patch(error_on_recompile=True):
            model.set_adapter("b")
            torch.testing.assert_close(compiled(**inputs).logits, outputs["b"], rtol=1e-5, atol=1e-6)
            model.load_adapter(tmp_path / "out", adapter_name="b", hotswap=True)  # default's values into b
            torch.testing.assert_close(compiled(**inputs).logits, outputs["default"], rtol=1e-5, atol=1e-6)
