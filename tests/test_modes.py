"""Replace vs delta mode, projection init, scales, rings, and seed-only initial values."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_bert_cls, make_bert_mlm, make_resnet, make_vit, model_outputs, train_steps

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, RPGStateError, apply_rpg


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 99, (4, 10), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}


def test_delta_mode_starts_at_the_base_model_and_trains_ring_and_head():
    base = make_bert_cls()
    reference = copy.deepcopy(base)
    batch = _batch()
    model = apply_rpg(base, RPGConfig(mode="delta", dof=500))
    assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    assert torch.count_nonzero(model.rpg_rings["default"]) == 0
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["base_model.classifier.bias", "base_model.classifier.weight", "rpg_rings.default"]
    train_steps(model, batch, steps=5)
    assert not torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    # the frozen base weights did not move
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(
        base.get_submodule(query.rsplit(".", 1)[0])._parameters["weight"], reference.get_parameter(query)
    )
    restored = model.unload()
    restored_out = model_outputs(restored, batch)
    reference.classifier.load_state_dict(restored.classifier.state_dict())
    assert torch.equal(restored_out, model_outputs(reference, batch))


def test_delta_checkpoint_records_base_and_loads_both_ways(tmp_path):
    base_dir = tmp_path / "base"
    make_bert_cls().save_pretrained(base_dir)
    from transformers import BertForSequenceClassification

    model = apply_rpg(BertForSequenceClassification.from_pretrained(base_dir), RPGConfig(mode="delta", dof=300))
    batch = _batch()
    train_steps(model, batch, steps=5)
    expected = model_outputs(model, batch)
    with pytest.warns(UserWarning, match="is a local folder: the checkpoint records it as '../base'"):
        model.save_pretrained(tmp_path / "delta")
    import json

    meta = json.loads((tmp_path / "delta" / "rpg_config.json").read_text())
    assert meta["base_model"]["name_or_path"] == "../base"  # never an absolute local path: relative to the checkpoint
    weights = (tmp_path / "delta" / "rpg_model.safetensors").stat().st_size
    assert weights < 4 * (300 + 32 * 3 + 3) + 64 * 1024
    from safetensors import safe_open

    with safe_open(tmp_path / "delta" / "rpg_model.safetensors", "pt") as f:
        # the ring and the trained head; BERT's buffers are not persistent, the base stays out
        assert sorted(f.keys()) == ["classifier.bias", "classifier.weight", "rpg_rings.default"]
    by_path = RPGModel.from_pretrained(tmp_path / "delta")
    assert torch.equal(model_outputs(by_path, batch), expected)
    by_object = RPGModel.from_pretrained(
        tmp_path / "delta", base_model=BertForSequenceClassification.from_pretrained(base_dir)
    )
    assert torch.equal(model_outputs(by_object, batch), expected)


def test_delta_mode_on_tied_mlm_freezes_the_base():
    model = apply_rpg(make_bert_mlm(), RPGConfig(mode="delta", dof=200))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.bert.embeddings.word_embeddings.weight" not in trainable
    assert "rpg_rings.default" in trainable


def test_project_init_at_full_dof_reproduces_the_weights():
    base = make_bert_cls()
    reference = copy.deepcopy(base)
    model = apply_rpg(base, RPGConfig(dof=1.0, init="project"))
    for name, weight in model.generated_weights():
        torch.testing.assert_close(weight, reference.get_parameter(name), rtol=1e-5, atol=1e-6)
    batch = _batch()
    torch.testing.assert_close(model_outputs(model, batch), model_outputs(reference, batch), rtol=1e-4, atol=1e-5)


def test_project_init_is_the_least_squares_fit():
    base = make_vit()
    reference = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = apply_rpg(base, RPGConfig(dof=0.3, init="project"))
    ring = model.rpg_rings["default"]

    def error() -> float:
        with torch.no_grad():
            return sum(float((w - reference[n]).square().sum()) for n, w in model.generated_weights())

    best = error()
    with torch.no_grad():
        for scale in (0.9, 1.1):
            ring.mul_(scale)
            assert error() > best
            ring.div_(scale)
        ring.add_(1e-3 * torch.randn_like(ring))
        assert error() > best


@pytest.mark.parametrize("build", [make_vit, make_resnet, make_bert_cls])
def test_generated_tensors_start_at_their_layers_scale(build):
    base = build()
    stds = {n: float(p.detach().std()) for n, p in base.named_parameters()}
    model = apply_rpg(base, RPGConfig(dof=0.25))
    model.eval()
    with torch.no_grad():
        for name, weight in model.generated_weights():
            if weight.numel() >= 2048:
                assert weight.std().item() == pytest.approx(stds[name], rel=0.15), name


def test_ring_scale_matches_weight_scale_and_gains_are_relative():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.25))
    ring = model.layout.rings["default"]
    assert ring.scale == pytest.approx(0.02, rel=0.1)
    assert float(model.rpg_rings["default"].detach().std()) == pytest.approx(ring.scale, rel=0.1)
    assert all(t.gain == pytest.approx(1.0, rel=0.2) for t in model.layout.targets)


@pytest.mark.parametrize("gain", ["kaiming_fan_in", "kaiming_fan_out", 0.05])
def test_analytic_gains_do_not_depend_on_the_weights(gain):
    torch.manual_seed(0)
    a = apply_rpg(make_resnet(), RPGConfig(dof=0.25, gain=gain))
    torch.manual_seed(1)
    b = apply_rpg(make_resnet(), RPGConfig(dof=0.25, gain=gain))
    assert [t.gain for t in a.layout.targets] == [t.gain for t in b.layout.targets]
    assert torch.equal(a.rpg_rings["default"], b.rpg_rings["default"])


def test_ring_init_comes_from_the_seed_not_the_global_rng():
    torch.manual_seed(0)
    base = make_bert_cls()
    first_copy, second_copy = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    a = apply_rpg(first_copy, RPGConfig(dof=0.25, seed=5))
    torch.manual_seed(2)
    b = apply_rpg(second_copy, RPGConfig(dof=0.25, seed=5))
    assert torch.equal(a.rpg_rings["default"], b.rpg_rings["default"])
    for (_, wa), (_, wb) in zip(a.generated_weights(), b.generated_weights(), strict=True):
        assert torch.equal(wa, wb)
    c = apply_rpg(copy.deepcopy(base), RPGConfig(dof=0.25, seed=6))
    assert not torch.equal(a.rpg_rings["default"], c.rpg_rings["default"])


def test_local_rings_per_group(tmp_path):
    rings = {"attention": r".*attention.*", "ffn": ["intermediate.dense", "output.dense"]}
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, rings=rings))
    by_ring = {}
    for t in model.layout.targets:
        by_ring.setdefault(t.ring, []).append(t.name)
    assert set(by_ring) == {"attention", "ffn", "default"}
    assert all("attention" in n for n in by_ring["attention"])
    assert all("embeddings" in n or "pooler" in n for n in by_ring["default"])
    for name, ring in model.layout.rings.items():
        assert model.rpg_rings[name].numel() == ring.size == round(0.2 * ring.elements)
    model.train()
    loss = model(**_batch()).loss
    loss.backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in model.rpg_rings.values())
    expected = model_outputs(model, _batch(1))
    model.save_pretrained(tmp_path)
    assert torch.equal(model_outputs(RPGModel.from_pretrained(tmp_path), _batch(1)), expected)


def test_int_dof_is_split_across_rings_exactly():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=1001, rings={"attention": r".*attention.*"}))
    assert sum(r.numel() for r in model.rpg_rings.values()) == 1001
    with pytest.raises(RPGConfigError, match="matches no targeted"):
        apply_rpg(make_bert_cls(), RPGConfig(rings={"nothing": ["does_not_exist"]}))


def test_dof_larger_than_the_targeted_elements_is_refused():
    with pytest.raises(RPGConfigError, match=r"dof=10000000 is larger than the \d+ targeted elements"):
        apply_rpg(make_bert_cls(), RPGConfig(dof=10_000_000))


def test_unload_needs_delta_mode():
    model = apply_rpg(make_bert_cls(), RPGConfig())
    with pytest.raises(RPGStateError, match="merge_and_unload"):
        model.unload()
    model.merge_and_unload()
    with pytest.raises(RPGStateError, match="unloaded"):
        model(**_batch())


def test_delta_checkpoint_keeps_its_own_head_config(tmp_path):
    """The saved config.json wins over the base's: label names of a fine-tuned head survive."""
    from transformers import BertForSequenceClassification

    base_dir = tmp_path / "base"
    make_bert_cls().save_pretrained(base_dir)
    model = BertForSequenceClassification.from_pretrained(base_dir)
    model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    rpg = apply_rpg(model, RPGConfig(mode="delta", dof=100))
    rpg.save_pretrained(tmp_path / "delta")
    loaded = RPGModel.from_pretrained(tmp_path / "delta")
    assert loaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_saving_a_delta_model_without_a_base_reference_warns(tmp_path):
    base = make_bert_cls()
    pristine = copy.deepcopy(base)  # the same base: another one is refused (base_fingerprint)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=100))
    with pytest.warns(UserWarning, match="records no base model"):
        model.save_pretrained(tmp_path / "delta")
    loaded = RPGModel.from_pretrained(tmp_path / "delta", base_model=pristine)
    assert torch.equal(loaded.rpg_rings["default"], model.rpg_rings["default"])


def test_delta_gain_scales_the_update_as_a_learning_rate_multiplier():
    """A float gain in delta mode multiplies the update: different gains train differently,
    and under Adam gain=4 with lr trains as gain=1 with 4 * lr (eps aside)."""
    from conftest import _text_cls_batch, make_bert_cls

    batch = _text_cls_batch(0)

    def losses(gain: float, lr: float) -> list[float]:
        torch.manual_seed(0)
        model = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=200, gain=gain, other_parameters="freeze"))
        optimizer = torch.optim.Adam(list(model.rpg_rings.parameters()), lr=lr, eps=1e-12)
        out = []
        model.train()
        for _ in range(4):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    small, large = losses(0.01, 3e-2), losses(1.0, 3e-2)
    assert small[0] == large[0]  # the ring starts at zero: the same base model
    assert abs(small[-1] - small[0]) < 0.1 * abs(large[-1] - large[0]), (small, large)
    torch.testing.assert_close(torch.tensor(losses(4.0, 1e-3)), torch.tensor(losses(1.0, 4e-3)), rtol=1e-4, atol=0)
