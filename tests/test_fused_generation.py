"""The fused generation path (GPUs: a few whole-ring kernels instead of a few per target)
gives the per-target path's weights bit for bit and its ring gradients to rounding.

The path is chosen by device; here it is switched on for CPU so that CI runs it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, forward_backward

import hf_rpg.runtime.ring_autograd
from hf_rpg import RPGConfig, apply_rpg


def _fused_on_cpu(engine, device):
    return engine.cache_indices


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_fused_path_matches_the_per_target_path(name, mode, monkeypatch):
    tiny = MODELS[name]
    torch.manual_seed(0)
    base = tiny.build()
    per_target = apply_rpg(copy.deepcopy(base), RPGConfig(dof=0.3, seed=1, mode=mode))
    fused = apply_rpg(base, RPGConfig(dof=0.3, seed=1, mode=mode))
    with torch.no_grad():  # a nonzero ring in delta mode too, so that gains and signs show
        for ring_name, ring in per_target.rpg_rings.items():
            ring.normal_(generator=torch.Generator().manual_seed(2))
            fused.rpg_rings[ring_name].copy_(ring)
    batch = tiny.batch(0)
    loss_a, weights_a, grads_a = forward_backward(per_target, batch)
    monkeypatch.setattr(hf_rpg.runtime.ring_autograd, "_fused_applies", _fused_on_cpu)
    loss_b, weights_b, grads_b = forward_backward(fused, batch)
    for key, weight in weights_a.items():
        assert torch.equal(weights_b[key], weight), key
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    fused.eval()  # the inference cache goes through the fused path as well
    per_target.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, per_target(**batch).logits, rtol=0, atol=0)


def test_runs_of_consecutive_targets():
    from hf_rpg.format.manifest import TargetLayout

    def t(offset, numel):
        return TargetLayout(name=f"t{offset}", shape=(numel,), offset=offset, gain=1.0, ring="default")

    runs = hf_rpg.runtime.ring_autograd._contiguous_runs([t(0, 4), t(4, 2), t(10, 3), t(13, 1), t(0, 1)])
    assert runs == [(0, 2), (2, 4), (4, 5)]
    assert hf_rpg.runtime.ring_autograd._contiguous_runs([]) == []
