"""When weights are generated: per layer in training (and again in backward), once per ring version in inference."""

from __future__ import annotations

import pytest
import torch
from conftest import make_bert_cls, make_bert_mlm, torch_threads

import hf_rpg.runtime.buffer_pool
import hf_rpg.runtime.ring_autograd
from hf_rpg import RPGConfig, apply_rpg

QUERY = "bert.encoder.layer.0.attention.self.query"


def _batch():
    return {"input_ids": torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))}


def _generated(model) -> int:
    return model.runtime_stats().generated


def test_inference_materialises_once_until_the_ring_changes():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    model.eval()
    query = model.base_model.get_submodule(QUERY)
    with torch.no_grad():
        first = model(**_batch()).logits
        weight = query.weight
        second = model(**_batch()).logits
        assert query.weight is weight  # the same materialised tensor, reused
    assert torch.equal(first, second)
    assert _generated(model) == len(model.layout.targets) and model.runtime_stats().inference_weights_held
    with torch.no_grad():
        model.rpg_rings["default"].mul_(1.5)  # an optimizer step does the same
        third = model(**_batch()).logits
        assert query.weight is not weight
    assert _generated(model) == 2 * len(model.layout.targets) and not torch.equal(third, first)
    model.clear_cache()
    assert not model.runtime_stats().inference_weights_held


def test_training_weights_exist_only_while_their_layer_runs():
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2, weights_in_backward="regenerate"))
    live_at_entry = []
    for module in model.base_model.modules():  # as each layer starts, which weights are alive?
        module.register_forward_pre_hook(lambda *_: live_at_entry.append(model.runtime_stats().live_weights))
    model.train()
    loss = model(input_ids=_batch()["input_ids"], labels=_batch()["input_ids"]).loss
    # after the forward no generated weight is alive: nothing autograd saved holds their memory
    stats = model.runtime_stats()
    assert stats.live_weights == 0 and stats.pooled_buffer_ids and stats.pooled_in_use == 0
    # one weight at a time: the owners (Linear layers, the tied decoder) do not nest
    assert max(live_at_entry) == 0
    generated_in_forward = stats.generated
    rowwise = len(model.plan.rowwise_ids())
    assert generated_in_forward == len(model.layout.targets) - rowwise + 1  # + the tied decoder
    loss.backward()
    # backward regenerated each weight autograd needed, once: all but the tied word embedding's
    # table in its Embedding owner (an embedding's backward needs only the ids)
    assert model.runtime_stats().generated - generated_in_forward == generated_in_forward - 1
    assert model.rpg_rings["default"].grad.abs().sum() > 0


def test_inference_cache_can_be_disabled():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, inference_cache=False))
    model.eval()
    with torch.no_grad():
        model(**_batch())
        model(**_batch())
    # each layer generates its weight when it runs, every forward: no dense copy is kept
    per_forward = len(model.layout.targets) - len(model.plan.rowwise_ids())
    stats = model.runtime_stats()
    assert stats.generated == 2 * per_forward and not stats.inference_weights_held and stats.live_weights == 0


def test_row_wise_embeddings_equal_full_generation():
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    assert {model.layout.targets[i].name for i in model.plan.rowwise_ids()} == {
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    }
    model.eval()
    batch = _batch()
    with torch.no_grad():
        cached = model(**batch).logits  # full materialised tables
    model.train()  # no dropout in the tiny config: row-wise generation must give the same numbers
    rows = model(**batch).logits
    torch.testing.assert_close(rows, cached, rtol=0, atol=0)
    rows.sum().backward()
    torch.manual_seed(0)
    full = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, embedding_rows=False))
    full.train()
    full(**batch).logits.sum().backward()
    torch.testing.assert_close(model.rpg_rings["default"].grad, full.rpg_rings["default"].grad, rtol=1e-5, atol=1e-7)


def test_on_the_fly_indices_equal_the_cache():
    torch.manual_seed(0)
    cached = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    torch.manual_seed(0)
    fly = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, index_cache="none"))
    assert fly.runtime_stats().index_cache_bytes == 0
    batch = _batch()
    out_cached, out_fly = cached(**batch).logits, fly(**batch).logits
    torch.testing.assert_close(out_fly, out_cached, rtol=0, atol=0)
    out_cached.sum().backward()
    out_fly.sum().backward()
    # the fused kernels sum each entry's uses in position order: equal to rounding
    torch.testing.assert_close(fly.rpg_rings["default"].grad, cached.rpg_rings["default"].grad, rtol=1e-5, atol=1e-7)


def test_training_buffers_are_reused_only_when_no_graph_holds_them(monkeypatch):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    torch.manual_seed(0)
    reference = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    model.train()
    reference.train()
    batch = _batch()
    # two forwards before one backward: the regenerated weights of the first pass are its own
    first = model(**batch).logits
    second = model(**batch).logits
    (first.sum() + 2 * second.sum()).backward()
    with monkeypatch.context() as patch:  # the reference never reuses memory
        patch.setattr(hf_rpg.runtime.buffer_pool, "buffer_is_free", lambda buffer: False)
        ref_first, ref_second = reference(**batch).logits, reference(**batch).logits
        (ref_first.sum() + 2 * ref_second.sum()).backward()
    torch.testing.assert_close(model.rpg_rings["default"].grad, reference.rpg_rings["default"].grad, rtol=0, atol=0)
    # the next pass writes into the same memory
    pool = model.runtime_stats().pooled_buffer_ids
    model(**batch).logits.sum().backward()
    assert model.runtime_stats().pooled_buffer_ids == pool


def test_a_ring_changed_between_forward_and_backward_is_an_error():
    # regenerating in backward from a changed ring would give wrong gradients: refused
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, weights_in_backward="regenerate"))
    model.train()
    loss = model(**_batch()).logits.sum()
    with torch.no_grad():
        model.rpg_rings["default"].add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place between the forward and the backward"):
        loss.backward()


def test_parallel_gather_and_scatter_on_several_threads(monkeypatch):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2, mode="delta"))
    with torch.no_grad():
        model.rpg_rings["default"].normal_()
    batch = {"input_ids": _batch()["input_ids"], "labels": _batch()["input_ids"]}
    model.train()
    model(**batch).loss.backward()
    serial_weights = {name: w.detach().clone() for name, w in model.generated_weights()}
    serial_grad = model.rpg_rings["default"].grad.clone()
    model.rpg_rings["default"].grad = None

    monkeypatch.setattr(hf_rpg.runtime.ring_autograd, "PARALLEL_CHUNK", 512)  # small enough to split this tiny model
    with torch_threads(2):
        assert hf_rpg.runtime.ring_autograd._workers(torch.device("cpu"), 10_000) == 2
        model(**batch).loss.backward()
        parallel_weights = {name: w.detach().clone() for name, w in model.generated_weights()}
    for name, weight in serial_weights.items():
        assert torch.equal(parallel_weights[name], weight), name  # gathers are exact
    torch.testing.assert_close(model.rpg_rings["default"].grad, serial_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_per_layer_gradients_equal_generating_every_weight_up_front(mode):
    """The per-layer engine (weights generated in each layer, regenerated in backward) gives
    the ring gradient of the plain computation: all weights generated first, then the model
    run as a dense model on them (torch.func.functional_call)."""
    torch.manual_seed(0)
    model = apply_rpg(
        make_bert_mlm(), RPGConfig(dof=0.2, mode=mode, embedding_rows=False, weights_in_backward="regenerate")
    )
    ring = model.rpg_rings["default"]
    with torch.no_grad():
        ring.normal_(generator=torch.Generator().manual_seed(1)).mul_(0.05)
    batch = {"input_ids": _batch()["input_ids"], "labels": _batch()["input_ids"]}
    model.train()
    model(**batch).loss.backward()
    per_layer = ring.grad.clone()
    ring.grad = None

    weights = dict(model.generated_weights())  # read outside their layers: whole, with autograd to the ring
    names = {}
    for entry in model.layout.targets:
        for name in (entry.name, *entry.tied):
            names[name] = weights[entry.name]
    merged = model.merge_and_unload()  # a plain model of the same architecture
    loss = torch.func.functional_call(merged, names, args=(), kwargs=batch).loss
    loss.backward()
    torch.testing.assert_close(per_layer, ring.grad, rtol=1e-5, atol=1e-7)


def test_small_models_keep_their_weights_for_backward_by_default():
    """weights_in_backward='auto': below the threshold autograd keeps each weight (no second
    gather), with the same gradients as regenerating."""
    torch.manual_seed(0)
    kept = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2))
    torch.manual_seed(0)
    regenerated = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2, weights_in_backward="regenerate"))
    assert not kept.plan.regenerate and regenerated.plan.regenerate
    batch = {"input_ids": _batch()["input_ids"], "labels": _batch()["input_ids"]}
    kept.train()
    regenerated.train()
    loss = kept(**batch).loss
    forward_calls = kept.runtime_stats().generated
    loss.backward()
    assert kept.runtime_stats().generated == forward_calls  # nothing generated again in backward
    regenerated(**batch).loss.backward()
    torch.testing.assert_close(kept.rpg_rings["default"].grad, regenerated.rpg_rings["default"].grad, rtol=0, atol=0)
