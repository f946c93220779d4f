"""Inputs that used to give a silently wrong model, or torch's own error, each reproduced as
issue 20 found it; each now gets a clear hf_rpg error or the correct result.

The checkpoint cases (tampered files, saves of bad state, dtypes, the base binding) are in
``test_checkpoint_guards.py`` and ``test_base_binding.py``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_bert_cls

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, RPGTargetError, apply_rpg, prune_ring


def test_a_gain_that_overflows_float32_is_refused():
    for mode in ("replace", "delta"):
        with pytest.raises(RPGConfigError, match=r"gain=1e\+300 is too large: a float gain must be in \(0, 1e\+06\]"):
            RPGConfig(gain=1e300, mode=mode)
    with pytest.raises(RPGConfigError, match="gain must be one of"):
        RPGConfig(gain=10**30)
    assert RPGConfig(gain=1e6).gain == 1e6


def test_the_largest_gain_allowed_gives_finite_outputs():
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", gain=1e6, dof=200, target_modules=["query"]))
    batch = {"input_ids": torch.arange(12).reshape(2, 6), "labels": torch.tensor([0, 1])}
    optimizer = torch.optim.AdamW(model.rpg_rings.parameters(), lr=1e-3)
    model(**batch).loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


@pytest.mark.parametrize("device", ["nonsense", "cuda:nonsense", 3.5])
def test_a_device_that_is_not_one_is_named(device, tmp_path):
    with pytest.raises(RPGConfigError, match=r"device(=.* is not a torch device| must be a device)"):
        apply_rpg(make_bert_cls(), RPGConfig(dof=100), device=device)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=100))
    model.save_pretrained(tmp_path)
    with pytest.raises(RPGConfigError, match=r"device(=.* is not a torch device| must be a device)"):
        RPGModel.from_pretrained(tmp_path, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA device")
def test_cuda_on_a_torch_without_cuda_is_named(tmp_path):
    with pytest.raises(RPGConfigError, match=r"device='cuda': this torch .* has no usable cuda device"):
        apply_rpg(make_bert_cls(), RPGConfig(dof=100), device="cuda")
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=100))
    model.save_pretrained(tmp_path)
    with pytest.raises(RPGConfigError, match=r"device='cuda': this torch .* has no usable cuda device"):
        RPGModel.from_pretrained(tmp_path, device="cuda")


def test_a_typo_in_one_target_modules_entry_is_named():
    with pytest.raises(RPGTargetError, match=r"target_modules entry 'valeu' matches no module .*did you mean 'value'"):
        apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100, target_modules=["query", "valeu"]))
    # every entry matching something is fine, a regex string is PEFT's full-name match as before
    apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100, target_modules=["query", "value"]))
    apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=100, target_modules=r".*\.(query|value)"))


def test_prune_ring_takes_one_ring_name_as_a_string():
    torch.manual_seed(0)
    base = make_bert_cls()
    one = apply_rpg(base, RPGConfig(dof=400, seed=1, target_modules=["query", "value"]))
    ring = one.rpg_rings["default"].detach().clone()
    prune_ring(one, fraction=0.5, rings="default")
    zeros = (one.rpg_rings["default"] == 0).sum().item()
    assert zeros == 200
    expected = ring.clone()
    expected[ring.abs() < ring.abs().kthvalue(201).values] = 0
    assert torch.equal(one.rpg_rings["default"], expected)
    with pytest.raises(RPGConfigError, match="rings must name rings of the model"):
        prune_ring(one, fraction=0.5, rings="nope")


def test_a_peft_wrapped_model_is_named():
    peft = pytest.importorskip("peft", reason="peft is in the bench extra")
    wrapped = peft.get_peft_model(make_bert_cls(), peft.LoraConfig(target_modules=["query"], r=2))
    with pytest.raises(RPGTargetError, match=r"PEFT modules \(peft.*get_base_model\(\)"):
        apply_rpg(wrapped, RPGConfig(mode="delta", dof=100, target_modules=["query"]))
