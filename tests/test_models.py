"""The model matrix: ViT, ResNet, BERT (classification and tied MLM), GPT-2 (Conv1D, tied)."""

from __future__ import annotations

import torch
from conftest import model_outputs, train_steps

from hf_rpg import RPGConfig, RPGModel, apply_rpg


def test_forward_matches_base_interface(tiny):
    base = tiny.build()
    batch = tiny.batch(0)
    dense_out = base(**batch)
    model = apply_rpg(base, RPGConfig(dof=0.2, seed=0))
    out = model(**batch)
    assert type(out) is type(dense_out)
    assert out.logits.shape == dense_out.logits.shape
    assert torch.isfinite(out.loss)


def test_no_dense_copy_and_gradients_only_on_ring_and_others(tiny):
    base = tiny.build()
    model = apply_rpg(base, RPGConfig(dof=0.2, seed=0))
    generated = {t.name for t in model.layout.targets}
    names = {n.removeprefix("base_model.") for n, _ in model.named_parameters()}
    assert not generated & names, "a generated weight is still a Parameter"
    assert not generated & set(model.base_model.state_dict()), "a generated weight is still in the state_dict"
    ring = model.rpg_rings["default"]
    others = sum(p.numel() for n, p in model.base_model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == ring.numel() + others
    # compact caches only: at most 4 bytes per generated element, nothing per-weight saved
    assert model.runtime_stats().index_cache_bytes <= 4 * model.layout.generated_elements

    loss = model(**tiny.batch(0)).loss
    loss.backward()
    assert ring.grad is not None and ring.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert name == "rpg_rings.default" or name.startswith("base_model."), name
    # every weight the model reads is the generated one
    for name, weight in model.generated_weights():
        assert not isinstance(weight, torch.nn.Parameter), name


def test_optimizer_steps_lower_the_loss(tiny):
    model = apply_rpg(tiny.build(), RPGConfig(dof=0.2, seed=0))
    losses = train_steps(model, tiny.batch(0))
    assert losses[-1] < losses[0] * 0.9, losses


def test_save_load_round_trip_is_bit_exact(tiny, tmp_path):
    model = apply_rpg(tiny.build(), RPGConfig(dof=0.2, seed=0))
    train_steps(model, tiny.batch(0), steps=3)
    batch = tiny.batch(1)
    expected = model_outputs(model, batch)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "rpg_config.json",
        "rpg_model.safetensors",
    ]
    torch.manual_seed(1234)
    loaded = RPGModel.from_pretrained(tmp_path)
    assert not loaded.training
    assert torch.equal(model_outputs(loaded, batch), expected)
    assert torch.equal(loaded.rpg_rings["default"], model.rpg_rings["default"])


def test_merge_round_trip_loads_with_plain_transformers(tiny, tmp_path):
    base_cls = None
    model = apply_rpg(tiny.build(), RPGConfig(dof=0.2, seed=0))
    train_steps(model, tiny.batch(0), steps=3)
    batch = tiny.batch(1)
    expected = model_outputs(model, batch)
    generated = {name: w.detach().clone() for name, w in model.generated_weights()}
    dense = model.merge_and_unload()
    base_cls = type(dense)
    assert base_cls.__name__ == tiny.build().__class__.__name__
    assert not base_cls.__name__.startswith("RPG")
    for name, value in generated.items():
        param = dense.get_parameter(name)
        assert isinstance(param, torch.nn.Parameter)
        assert torch.equal(param, value)
    assert torch.equal(model_outputs(dense, batch), expected)
    dense.save_pretrained(tmp_path)
    reloaded = tiny.auto_class.from_pretrained(tmp_path)
    assert type(reloaded) is base_cls
    torch.testing.assert_close(model_outputs(reloaded, batch), expected, rtol=0, atol=0)
