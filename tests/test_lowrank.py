"""``rpg-lowrank-v1``: delta updates ``F P`` with the factor ``F`` generated from the ring
(and, where the path is shared, ``rpg-lora-v1``'s ``F (P + A)``: ``tests/test_lora_update.py``).

The projection is pinned by golden vectors; the update is exactly zero at a zero ring,
trains, saves and reloads bit-exactly, merges into the same outputs, and keeps nothing
between steps (no index cache, no pooled buffer).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from architectures import ARCHITECTURES
from conftest import _text_cls_batch, make_bert_cls, make_gpt2, model_outputs, train_steps
from torch import nn

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.errors import RPGConfigError, RPGManifestMismatchError
from hf_rpg.format.manifest import Layout
from hf_rpg.spec.generator import build_signed_index, derive_key
from hf_rpg.spec.lowrank import projection, reference_projection_sign
from hf_rpg.spec.lowrank_shapes import LOWRANK_VERSION

# (seed, target name, rank, in_features) -> the signs of P, row-major
GOLDEN_PROJECTION = [
    (
        (0, "encoder.layer.0.attention.self.query.weight", 4, 8),
        [-1, 1, 1, 1, 1, 1, 1, -1, 1, 1, 1, -1, 1, -1, 1, -1, -1, 1, 1, 1, -1, 1, -1, 1, -1, -1, -1, 1, -1, -1, 1, -1],
    ),
    ((2**64 - 1, "model.layers.3.self_attn.v_proj.weight", 2, 5), [-1, -1, 1, -1, -1, -1, 1, -1, 1, 1]),
]


@pytest.mark.parametrize(("args", "signs"), GOLDEN_PROJECTION)
def test_projection_golden_vectors(args, signs):
    seed, name, rank, in_features = args
    values = projection(seed, name, rank, in_features)
    assert values.shape == (rank, in_features) and values.dtype == torch.float32
    scale = math.sqrt(8) / rank  # LoRA's alpha / r rule, anchored at rank 8
    assert torch.equal(values, torch.tensor(signs, dtype=torch.float32).view(rank, in_features) * scale)
    assert [
        reference_projection_sign(seed, name, k, j, in_features) for k in range(rank) for j in range(in_features)
    ] == signs
    assert LOWRANK_VERSION == "rpg-lowrank-v1"


def _lowrank_bert(dof: int = 300, rank: int = 4, **options) -> tuple[RPGModel, nn.Module]:
    torch.manual_seed(0)
    base = make_bert_cls()
    reference = copy.deepcopy(base)
    config = RPGConfig(mode="delta", dof=dof, rank=rank, target_modules=["query", "value"], **options)
    return apply_rpg(base, config), reference


def test_lowrank_layout_counts_the_factor_and_the_dense_size():
    model, reference = _lowrank_bert()
    hidden = reference.config.hidden_size
    layers = reference.config.num_hidden_layers
    assert all(t.rank == 4 and t.generated_shape == (hidden, 4) for t in model.layout.targets)
    assert model.layout.generated_elements == 2 * layers * hidden * 4
    report = model.dof_report()
    dense = sum(p.numel() for p in reference.parameters())
    assert report.model_parameters == dense  # the dense model, not the factors
    assert report.ring_dof == 300 and report.trainable == 300 + sum(
        p.numel() for n, p in reference.named_parameters() if n.startswith("classifier")
    )


def test_lowrank_is_exactly_the_base_at_zero_and_trains(tmp_path):
    model, reference = _lowrank_bert(other_parameters="freeze")  # only the ring trains
    batch = _text_cls_batch(0)
    assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    losses = train_steps(model, batch, steps=5)
    assert losses[-1] < losses[0], losses
    expected = model_outputs(model, batch)
    assert not torch.equal(expected, model_outputs(reference, batch))
    with model.disable_rpg():
        assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))

    model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "rpg_config.json").read_text())["manifest"]
    assert {(t["rank"], t["update"]) for t in manifest["targets"]} == {(4, LOWRANK_VERSION)}
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=copy.deepcopy(reference))
    assert torch.equal(model_outputs(loaded, batch), expected)

    deltas = dict(model.generated_weights())
    merged = model.merge_and_unload()
    torch.testing.assert_close(model_outputs(merged, batch), expected, rtol=0, atol=1e-5)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    base_query = dict(reference.named_parameters())[query]
    torch.testing.assert_close(dict(merged.named_parameters())[query], base_query + deltas[query], rtol=0, atol=1e-7)


def test_lowrank_update_is_the_factor_times_the_projection():
    model, _ = _lowrank_bert()
    with torch.no_grad():
        model.rpg_rings["default"].normal_(generator=torch.Generator().manual_seed(1))
    entry = model.layout.targets[0]
    ring, size = model.rpg_rings["default"].detach(), model.layout.rings["default"]
    stop = entry.offset + entry.numel  # the factor's rpg-v1 indices into the signed ring [θ, -θ]
    index = build_signed_index(
        size.elements, size.size, derive_key(model.rpg_config.seed, "default"), start=entry.offset, stop=stop
    )
    factor = (torch.cat([ring, -ring])[index.long()] * entry.gain).view(entry.generated_shape)
    expected = factor @ projection(model.rpg_config.seed, entry.name, entry.rank, entry.shape[1])
    torch.testing.assert_close(dict(model.generated_weights())[entry.name], expected, rtol=0, atol=0)


@pytest.mark.parametrize("update", ["lowrank", "lora"])
def test_lowrank_keeps_nothing_between_steps(update):
    model, _ = _lowrank_bert(update=update)
    train_steps(model, _text_cls_batch(0), steps=2)
    stats = model.runtime_stats()
    assert stats.index_cache_bytes == 0 and stats.pooled_bytes == 0 and stats.live_weights == 0


@pytest.mark.parametrize("update", ["lowrank", "lora"])
def test_lowrank_on_gpt2_conv1d_merges_in_its_layout(update):
    torch.manual_seed(0)
    base = make_gpt2()
    reference = copy.deepcopy(base)
    config = RPGConfig(mode="delta", dof=400, rank=2, update=update, target_modules=["c_attn", "c_fc"])
    model = apply_rpg(base, config)
    assert {t.kind for t in model.layout.targets} == {"conv1d_transposed"}
    ids = torch.randint(0, reference.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    assert torch.equal(model_outputs(model, batch), model_outputs(reference, batch))
    train_steps(model, batch, steps=3)
    expected = model_outputs(model, batch)
    merged = model.merge_and_unload()
    torch.testing.assert_close(model_outputs(merged, batch), expected, rtol=0, atol=1e-5)


def test_rank_leaves_non_linear_targets_full_rank():
    torch.manual_seed(0)
    model = apply_rpg(
        make_bert_cls(), RPGConfig(mode="delta", dof=500, rank=2, target_modules=["word_embeddings", "query"])
    )
    ranks = {t.name.rsplit(".", 2)[-2]: t.rank for t in model.layout.targets}
    assert ranks == {"word_embeddings": None, "query": 2}


@pytest.mark.parametrize("update", ["lowrank", "lora"])
def test_lowrank_on_a_quantized_base(update):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is a dev dependency")
    from test_quantized import MERGE_TOLERANCE, QUANTIZERS, quantizable_llama

    base = QUANTIZERS["bnb_nf4"](quantizable_llama())
    reference = copy.deepcopy(base)
    batch = ARCHITECTURES["llama"].batch(0)
    config = RPGConfig(mode="delta", dof=100, rank=2, update=update, target_modules=["q_proj", "v_proj"])
    model = apply_rpg(base, config)
    assert set(model.plan.servings()) == {update}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    losses = train_steps(model, batch, steps=4)
    assert losses[-1] < losses[0], losses
    model.eval()
    expected = model_outputs(model, batch)
    merged = model.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(model_outputs(merged, batch), expected, **MERGE_TOLERANCE)
    assert (model_outputs(merged, batch) - model_outputs(reference, batch)).abs().max() > 10 * MERGE_TOLERANCE["atol"]


def test_rank_is_checked():
    with pytest.raises(RPGConfigError, match="rank=4 applies to mode='delta'"):
        RPGConfig(mode="replace", rank=4)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(RPGConfigError, match=r"rank must be a positive int, 'auto' or None"):
            RPGConfig(mode="delta", rank=bad)


def test_manifest_refuses_an_unknown_update_version():
    model, _ = _lowrank_bert()
    data = model.layout.to_dict()
    assert Layout.from_dict(data).targets == model.layout.targets
    data["targets"][0]["update"] = "rpg-lowrank-v9"
    with pytest.raises(RPGManifestMismatchError, match=r"rpg-lowrank-v9.*not supported"):
        Layout.from_dict(data)
    data["targets"][0]["update"] = LOWRANK_VERSION
    data["targets"][0]["rank"] = 0
    with pytest.raises(RPGManifestMismatchError, match="rank >= 1"):
        Layout.from_dict(data)
