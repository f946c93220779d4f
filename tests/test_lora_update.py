"""``rpg-lora-v1``: delta updates ``F (P + A)`` with both factors generated from the ring.

Pinned by golden vectors; the update is exactly zero at a zero ring, both factors train,
it saves and reloads bit-exactly, merges into the same outputs, and is what ``update="auto"``
picks at small budgets (and only there). The paths it shares with ``rpg-lowrank-v1`` (GPT-2's
``Conv1D``, quantized bases, nothing kept between steps) are tested for both in ``test_lowrank.py``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import _text_cls_batch, make_bert_cls, model_outputs, train_steps
from torch import nn

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.api.config import AUTO_LORA_MAX_DOF, LORA_RANK
from hf_rpg.errors import RPGConfigError
from hf_rpg.format.manifest import Layout
from hf_rpg.spec.generator import build_signed_index, derive_key
from hf_rpg.spec.lora import a_scale, lora_delta_weight, part_scales
from hf_rpg.spec.lowrank import projection
from hf_rpg.spec.lowrank_shapes import LORA_VERSION, LOWRANK_VERSION

# The golden case: seed 0, ring "default" of 7 entries valued 1..7, one target "layer.weight"
# of shape [3, 5] at rank 2 and gain 0.5, alone on the ring (16 positions: F's 6, then A's 10).
GOLDEN_SIGNED_INDEX = [7, 1, 6, 9, 2, 5, 3, 6, 0, 12, 4, 8, 10, 0, 1, 4]
# ΔW = F (P + A) in units of sqrt(2) / 2: F has halves, P and A multiples of sqrt(8) / 2.
GOLDEN_DELTA = [[-5, -16, 2, 7, 4], [24, 57, 8, -38, 16], [3, -12, 18, -9, 36]]


def test_lora_golden_vectors():
    assert LORA_VERSION == "rpg-lora-v1"
    index = build_signed_index(16, 7, derive_key(0, "default"), start=0, stop=16)
    assert index.tolist() == GOLDEN_SIGNED_INDEX
    ring = torch.arange(1, 8, dtype=torch.float64)
    scales = part_scales((3, 5), "linear", 2, 0.5, dtype=torch.float64, device="cpu")
    block = torch.cat([ring, -ring])[index.long()] * scales
    proj = projection(0, "layer.weight", 2, 5, dtype=torch.float64)
    delta = lora_delta_weight(block, proj, (3, 5), "linear", 2)
    expected = torch.tensor(GOLDEN_DELTA, dtype=torch.float64) * math.sqrt(2) / 2
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-12)
    assert a_scale(2) == math.sqrt(8) / 2


def _lora_bert(dof: int = 300, **options) -> tuple[RPGModel, nn.Module]:
    torch.manual_seed(0)
    base = make_bert_cls()
    reference = copy.deepcopy(base)
    config = RPGConfig(mode="delta", dof=dof, update="lora", target_modules=["query", "value"], **options)
    return apply_rpg(base, config), reference


def test_lora_layout_generates_both_factors_and_scales_the_ring_by_f():
    model, reference = _lora_bert(rank=4)
    hidden, layers = reference.config.hidden_size, reference.config.num_hidden_layers
    assert set(model.plan.servings()) == {"lora"}
    assert all(t.rank == 4 and t.update == LORA_VERSION for t in model.layout.targets)
    assert all(t.generated_shape == (4 * (hidden + hidden),) for t in model.layout.targets)
    assert model.layout.generated_elements == 2 * layers * 4 * 2 * hidden
    # the ring's scale: the RMS of the weights' stds over the F values only (all F's are [hidden, 4])
    weights = dict(reference.named_parameters())
    stds = [float(weights[t.name].detach().double().std(correction=0)) for t in model.layout.targets]
    scale = math.sqrt(sum(s * s for s in stds) / len(stds))
    assert model.layout.rings["default"].scale == pytest.approx(scale, rel=1e-6)
    assert [t.gain for t in model.layout.targets] == pytest.approx([s / scale for s in stds], rel=1e-6)
    report = model.dof_report()
    assert report.ring_dof == 300 and report.model_parameters == sum(p.numel() for p in reference.parameters())


def test_lora_update_is_f_times_p_plus_a():
    model, _ = _lora_bert()
    with torch.no_grad():
        model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(1))
    entry = model.layout.targets[1]
    ring, size = model.rpg_rings["default"].detach(), model.layout.rings["default"]
    index = build_signed_index(
        size.elements, size.size, derive_key(0, "default"), start=entry.offset, stop=entry.offset + entry.numel
    )
    values = torch.cat([ring, -ring])[index.long()]
    out_f, in_f, r = entry.shape[0], entry.shape[1], entry.rank
    factor = values[: out_f * r].view(out_f, r) * entry.gain
    a = values[out_f * r :].view(r, in_f) * (math.sqrt(8) / r)
    expected = factor @ (projection(0, entry.name, r, in_f) + a)
    torch.testing.assert_close(dict(model.generated_weights())[entry.name], expected, rtol=0, atol=1e-7)


def test_lora_is_the_base_at_zero_trains_both_factors_and_round_trips(tmp_path):
    model, reference = _lora_bert(other_parameters="freeze")
    batch = _text_cls_batch(0)
    assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    ring = model.rpg_rings["default"]
    losses = train_steps(model, batch, steps=5)
    assert losses[-1] < losses[0], losses
    # after F has moved, the A values get gradient too: the ring entries read only by A's positions move
    entry = model.layout.targets[0]
    size = model.layout.rings["default"]
    index = build_signed_index(size.elements, size.size, derive_key(0, "default"), start=0, stop=size.elements).long()
    split = entry.offset + entry.shape[0] * entry.rank
    a_only = set((index[split : entry.offset + entry.numel] % size.size).tolist())
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    assert ring.grad[sorted(a_only)].abs().sum() > 0

    expected = model_outputs(model, batch)
    with model.disable_rpg():
        assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "rpg_config.json").read_text())["manifest"]
    assert {(t["rank"], t["update"]) for t in manifest["targets"]} == {(LORA_RANK, LORA_VERSION)}
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=copy.deepcopy(reference))
    assert torch.equal(model_outputs(loaded, batch), expected)
    merged = model.merge_and_unload()
    torch.testing.assert_close(model_outputs(merged, batch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("settings", "update", "rank"),
    [
        ({"mode": "delta", "dof": 1000}, "lora", LORA_RANK),
        ({"mode": "delta", "dof": AUTO_LORA_MAX_DOF}, "lora", LORA_RANK),
        ({"mode": "delta", "dof": AUTO_LORA_MAX_DOF + 1}, "full", None),
        ({"mode": "delta", "dof": 0.001}, "full", None),  # a fraction: the budget grows with the model
        ({"mode": "delta", "dof": 1000, "rank": 4}, "lowrank", 4),  # a rank alone: rpg-lowrank-v1, as before
        ({"mode": "delta", "dof": 1000, "rank_pattern": {"query": 2}}, "lowrank", None),
        ({"mode": "delta", "dof": 50_000, "update": "lora"}, "lora", LORA_RANK),
        ({"mode": "delta", "dof": 1000, "update": "lowrank"}, "lowrank", "auto"),
        ({"mode": "delta", "dof": 1000, "update": "full"}, "full", None),
        ({"mode": "replace", "dof": 1000}, "full", None),
    ],
)
def test_auto_update_is_lora_at_small_budgets_only(settings, update, rank):
    config = RPGConfig(**settings)
    assert (config.resolved_update, config.resolved_rank) == (update, rank)


def test_auto_update_falls_back_to_full_rank_where_lora_cannot_hold_the_ring():
    torch.manual_seed(0)
    small = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=1000, target_modules=["query", "value"]))
    assert set(small.plan.servings()) == {"lora"}  # 4 targets x 8 x (32 + 32) = 2,048 values >= 1,000
    large = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=2048, target_modules=["query"]))
    assert set(large.plan.servings()) == {"merged"}  # lora: 1,024 values < 2,048 ring entries
    with pytest.raises(RPGConfigError, match="larger than the 1024 targeted elements"):
        apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=2048, update="lora", target_modules=["query"]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"update": "both"}, r"update must be one of 'auto', 'full', 'lowrank', 'lora'; got 'both'"),
        ({"mode": "replace", "update": "lora"}, r"update='lora' applies to mode='delta'"),
        ({"mode": "delta", "update": "full", "rank": 4}, r"rank=4 asks for low-rank updates but update='full'"),
        ({"mode": "delta", "update": "full", "rank_pattern": {"q": 2}}, r"rank_pattern asks for low-rank updates"),
        ({"mode": "delta", "update": "lora", "rank": "auto"}, r"update='lora' takes an int rank"),
    ],
)
def test_update_is_checked(settings, message):
    with pytest.raises(RPGConfigError, match=message):
        RPGConfig(**settings)


def test_manifest_keeps_the_update_kind_and_reads_old_low_rank_entries():
    model, _ = _lora_bert()
    data = model.layout.to_dict()
    assert Layout.from_dict(data).targets == model.layout.targets
    data["targets"][0]["update"] = LOWRANK_VERSION  # the same rank, the other kind: another shape
    with pytest.raises(Exception, match="tile its positions"):
        Layout.from_dict(data)
