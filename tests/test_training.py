"""Training features with Accelerate: gradient accumulation, bf16 autocast on CPU, and
gradient checkpointing (non-reentrant)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import make_bert_cls, make_vit

from hf_rpg import RPGConfig, apply_rpg


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 99, (n, 10), generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}


def _model(**config):
    torch.manual_seed(0)
    return apply_rpg(make_bert_cls(), RPGConfig(dof=400, **config))


def test_gradient_accumulation_with_accelerate_matches_the_full_batch():
    full = _model()
    full.train()
    full(**_batch()).loss.backward()

    model = _model()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batch = _batch()
    for half in (slice(0, 4), slice(4, 8)):
        with accelerator.accumulate(model):
            loss = model(**{k: v[half] for k, v in batch.items()}).loss
            accelerator.backward(loss)
    ring = accelerator.unwrap_model(model).rpg_rings["default"]
    torch.testing.assert_close(ring.grad, full.rpg_rings["default"].grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_on_cpu():
    reference = _model()
    reference.train()
    reference(**_batch()).loss.backward()

    model = _model()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    seen = []
    query = model.base_model.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    model = accelerator.prepare(model)
    model.train()
    with accelerator.autocast():
        out = model(**_batch())
    assert seen == [torch.bfloat16]  # the generated weight was used in a bf16 matmul
    accelerator.backward(out.loss)
    ring = accelerator.unwrap_model(model).rpg_rings["default"]
    assert ring.dtype == torch.float32 and ring.grad.dtype == torch.float32
    assert torch.isfinite(ring.grad).all()
    similarity = F.cosine_similarity(ring.grad, reference.rpg_rings["default"].grad, dim=0)
    assert similarity > 0.95, similarity


def test_gradient_checkpointing_non_reentrant_gives_the_same_gradients():
    reference = _model()
    reference.train()
    reference(**_batch()).loss.backward()

    model = _model()
    # transformers 5 renamed gradient_checkpointing_enable to activation_checkpointing_enable
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    query = model.base_model.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, output: calls.append(output.requires_grad))
    loss = model(**_batch()).loss
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2  # the layer ran again during backward: it was checkpointed
    torch.testing.assert_close(
        model.rpg_rings["default"].grad, reference.rpg_rings["default"].grad, rtol=1e-5, atol=1e-7
    )
    for name, param in reference.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(model.get_parameter(name).grad, param.grad, rtol=1e-5, atol=1e-7)


def _vit_gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one ViT step (ring and every other parameter), and how often layer 0's query ran."""
    torch.manual_seed(0)
    model = apply_rpg(make_vit(), RPGConfig(dof=0.2))
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    query = model.base_model.vit.layers[0].attention.q_proj
    query.register_forward_hook(lambda module, args, output: calls.append(1))
    g = torch.Generator().manual_seed(1)
    batch = {"pixel_values": torch.randn(2, 3, 16, 16, generator=g), "labels": torch.tensor([0, 1])}
    model(**batch).loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    return grads, len(calls)


def test_gradient_checkpointing_on_a_vit():
    reference, reference_calls = _vit_gradients(checkpointing=False)
    checkpointed, calls = _vit_gradients(checkpointing=True)
    assert (reference_calls, calls) == (1, 2)  # with checkpointing the layer ran again during backward
    assert "rpg_rings.default" in reference and reference["rpg_rings.default"].abs().sum() > 0
    assert set(checkpointed) == set(reference)
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
