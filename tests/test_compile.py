"""torch.compile: training and inference after a ring update give eager's outputs."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, build

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.spec import index_encoding


@pytest.mark.slow
@pytest.mark.parametrize("rank", [None, 4], ids=["full-rank", "low-rank"])
def test_compiled_training_and_inference_match_eager(rank):
    batch = ARCHITECTURES["gpt2"].batch(0)
    model = apply_rpg(build("gpt2"), RPGConfig(dof=0.2, mode="delta", seed=1, rank=rank))
    ring = model.rpg_rings["default"]
    with torch.no_grad():
        ring.normal_(generator=torch.Generator().manual_seed(0)).mul_(0.02)
    compiled = torch.compile(model)

    model.train()
    eager = model(**batch)
    eager.loss.backward()
    eager_grad, ring.grad = ring.grad.clone(), None
    out = compiled(**batch)
    out.loss.backward()
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ring.grad, eager_grad, rtol=1e-5, atol=1e-6)

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-6)
        before = model(**batch).logits
        ring.add_(0.01)  # as an optimizer step does: the compiled model must not keep stale weights
        after = model(**batch).logits
        assert not torch.allclose(after, before)
        torch.testing.assert_close(compiled(**batch).logits, after, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_model_compiled_before_any_eager_call_matches_eager(monkeypatch):
    """Index caches are built (and re-encoded) on first use: inside the compiled graph here,
    run eagerly. The sign-bit layout is forced, so its NumPy re-encoding runs too."""
    monkeypatch.setattr(index_encoding, "SIGN_BIT_MIN_SIGNED_BYTES", 0)
    batch = {"input_ids": ARCHITECTURES["gpt2"].batch(0)["input_ids"]}
    fresh = apply_rpg(build("gpt2"), RPGConfig(dof=0.2, seed=1)).eval()
    reference = apply_rpg(build("gpt2"), RPGConfig(dof=0.2, seed=1)).eval()
    assert fresh.runtime_stats().index_cache_bytes == 0
    with torch.no_grad():
        compiled = torch.compile(fresh)(**batch).logits
        torch.testing.assert_close(compiled, reference(**batch).logits, rtol=1e-5, atol=1e-6)
    sign_bit = fresh.runtime_stats().sign_bit_rings
    assert sign_bit and all(sign_bit.values())
