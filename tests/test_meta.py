"""Models built on the meta device: replace mode never allocates the dense weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from architectures import ARCHITECTURES, build

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, apply_rpg


def _meta_llama() -> torch.nn.Module:
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(build("llama").config)


def test_apply_rpg_on_the_meta_device_materialises_only_what_is_not_generated(tmp_path):
    model = apply_rpg(_meta_llama(), RPGConfig(dof=0.1, seed=0), device="cpu")
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    generated = {t.name for t in model.layout.targets}
    assert not generated & {n.removeprefix("base_model.") for n, _ in model.named_parameters()}
    # initialised by the model's own rules: RMSNorm weights at one, rotary frequencies computed
    reference = build("llama")
    assert torch.equal(model.base_model.model.norm.weight, reference.model.norm.weight)
    assert torch.equal(model.base_model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    # gains from the model's initializer_range: there are no values to measure
    scale = model.layout.rings["default"].scale
    q = model.layout.targets[model.layout.index_of("model.layers.0.self_attn.q_proj.weight")]
    assert q.gain * scale == pytest.approx(reference.config.initializer_range, rel=1e-6)
    assert {w.device.type for _, w in model.generated_weights()} == {"cpu"}

    batch = ARCHITECTURES["llama"].batch(0)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert model.rpg_rings["default"].grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = RPGModel.from_pretrained(tmp_path)  # rebuilt on meta as well
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize(
    ("config", "device", "message"),
    [
        ({}, None, r"the model is on the meta device: pass device="),
        ({}, "meta", r"device='meta' is not a place to materialise anything"),
        ({"mode": "delta"}, "cpu", r"mode='delta' needs the pretrained weights"),
        ({"init": "project"}, "cpu", r"init='project' fits the model's weights"),
    ],
)
def test_meta_models_need_replace_mode_and_a_device(config, device, message):
    with pytest.raises(RPGConfigError, match=message):
        apply_rpg(_meta_llama(), RPGConfig(dof=0.1, **config), device=device)
