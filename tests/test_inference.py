"""When weights are generated: per layer in training (and again in backward), once per ring version in inference."""

from __future__ import annotations

import pytest
import torch
from conftest import make_bert_cls, make_bert_mlm, torch_threads

import hf_rpg.runtime.engine
import hf_rpg.runtime.ring_autograd
from hf_rpg import RPGConfig, apply_rpg

QUERY = "bert.encoder.layer.0.attention.self.query"


def _batch():
    return {"input_ids": torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))}


def _count_generations(model, monkeypatch) -> list[int]:
    calls = []
    original = model._engine.generate

    def counting(ids, **kwargs):
        calls.append(len(ids))
        return original(ids, **kwargs)

    monkeypatch.setattr(model._engine, "generate", counting)
    return calls


def test_inference_materialises_once_until_the_ring_changes(monkeypatch):
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    calls = _count_generations(model, monkeypatch)
    model.eval()
    query = model.base_model.get_submodule(QUERY)
    with torch.no_grad():
        first = model(**_batch()).logits
        weight = query.weight
        second = model(**_batch()).logits
        assert query.weight is weight  # the same materialised tensor, reused
    assert torch.equal(first, second)
    assert calls == [len(model.layout.targets)]
    with torch.no_grad():
        model.rpg_rings["default"].mul_(1.5)  # an optimizer step does the same
        third = model(**_batch()).logits
        assert query.weight is not weight
    assert len(calls) == 2 and not torch.equal(third, first)
    model.clear_cache()
    assert model._engine._materialized is None


def test_training_weights_exist_only_while_their_layer_runs(monkeypatch):
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2, weights_in_backward="regenerate"))
    engine = model._engine
    phases, live_counts = [], []
    original = engine._weight

    def counting(tid):
        phases.append("backward" if backward_started else "forward")
        live_counts.append(len(engine._live))
        return original(tid)

    monkeypatch.setattr(engine, "_weight", counting)
    model.train()
    backward_started = False
    loss = model(input_ids=_batch()["input_ids"], labels=_batch()["input_ids"]).loss
    # after the forward no generated weight is alive: nothing autograd saved holds their memory
    assert engine._live == {} and engine._live_storage == {}
    pool = [buffer for buffers in engine._pool.values() for buffer in buffers]
    assert pool and all(hf_rpg.runtime.engine.buffer_is_free(buffer) for buffer in pool)
    generated_in_forward = phases.count("forward")
    # one weight at a time: the owners (Linear layers, the tied decoder) do not nest
    assert max(live_counts) == 0
    assert generated_in_forward == len(model.layout.targets) - len(engine.rowwise) + 1  # + the tied decoder
    backward_started = True
    loss.backward()
    # backward regenerated each weight autograd needed, once: all but the tied word embedding's
    # table in its Embedding owner (an embedding's backward needs only the ids)
    assert phases.count("backward") == generated_in_forward - 1
    assert model.rpg_rings["default"].grad.abs().sum() > 0


def test_inference_cache_can_be_disabled(monkeypatch):
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2, inference_cache=False))
    calls = []
    original = model._engine._weight
    monkeypatch.setattr(model._engine, "_weight", lambda tid: calls.append(tid) or original(tid))
    model.eval()
    with torch.no_grad():
        model(**_batch())
        model(**_batch())
    # each layer generates its weight when it runs, every forward: no dense copy is kept
    per_forward = len(model.layout.targets) - len(model._engine.rowwise)
    assert len(calls) == 2 * per_forward and model._engine._materialized is None
    assert model._engine._live == {}


def test_row_wise_embeddings_equal_full_generation():
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.2))
    assert {model.layout.targets[i].name for i in model._engine.rowwise} == {
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
    assert fly._engine.index_cache_bytes() == 0
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
        patch.setattr(hf_rpg.runtime.engine, "buffer_is_free", lambda buffer: False)
        ref_first, ref_second = reference(**batch).logits, reference(**batch).logits
        (ref_first.sum() + 2 * ref_second.sum()).backward()
    torch.testing.assert_close(model.rpg_rings["default"].grad, reference.rpg_rings["default"].grad, rtol=0, atol=0)
    # the next pass writes into the same memory
    pool = {id(buffer) for buffers in model._engine._pool.values() for buffer in buffers}
    model(**batch).logits.sum().backward()
    assert {id(buffer) for buffers in model._engine._pool.values() for buffer in buffers} == pool


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

    weights = model._engine.generate(list(range(len(model.layout.targets))))  # with autograd to the ring
    names = {}
    for tid, entry in enumerate(model.layout.targets):
        for name in (entry.name, *entry.tied):
            names[name] = weights[tid]
    merged = model.merge_and_unload()  # a plain model of the same architecture
    loss = torch.func.functional_call(merged, names, args=(), kwargs=batch).loss
    loss.backward()
    torch.testing.assert_close(per_layer, ring.grad, rtol=1e-5, atol=1e-7)


def test_small_models_keep_their_weights_for_backward_by_default(monkeypatch):
    """weights_in_backward='auto': below the threshold autograd keeps each weight (no second
    gather), with the same gradients as regenerating."""
    torch.manual_seed(0)
    kept = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2))
    torch.manual_seed(0)
    regenerated = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2, weights_in_backward="regenerate"))
    assert not kept._engine.regenerate and regenerated._engine.regenerate
    calls = []
    original = kept._engine._weight
    monkeypatch.setattr(kept._engine, "_weight", lambda tid: calls.append(tid) or original(tid))
    batch = {"input_ids": _batch()["input_ids"], "labels": _batch()["input_ids"]}
    kept.train()
    regenerated.train()
    loss = kept(**batch).loss
    forward_calls = len(calls)
    loss.backward()
    assert len(calls) == forward_calls  # nothing generated again in backward
    regenerated(**batch).loss.backward()
    torch.testing.assert_close(kept.rpg_rings["default"].grad, regenerated.rpg_rings["default"].grad, rtol=0, atol=0)
