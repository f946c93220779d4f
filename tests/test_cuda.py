"""RPG models on a CUDA device: the same weights as on CPU, training, checkpoints.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, model_outputs

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.spec import index_encoding

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("sign_bit_on_cpu", [False, True])
def test_cuda_generates_the_cpu_weights_bit_for_bit(name, sign_bit_on_cpu, monkeypatch):
    """Moving a model to the GPU re-encodes its index cache for the device (the sign-bit
    layout is CPU-only) and must not change a single generated bit."""
    if sign_bit_on_cpu:
        monkeypatch.setattr(index_encoding, "SIGN_BIT_MIN_SIGNED_BYTES", 0)
    torch.manual_seed(0)
    model = apply_rpg(MODELS[name].build(), RPGConfig(dof=0.2, seed=4, index_cache="int32"))
    model.build_index_caches()  # built on first use otherwise
    assert all(model.runtime_stats().sign_bit_rings.values()) == sign_bit_on_cpu
    with torch.no_grad():
        on_cpu = {n: w.clone() for n, w in model.generated_weights()}
        model.cuda()
        model.clear_cache()
        on_gpu = {n: w.cpu() for n, w in model.generated_weights()}
    assert not any(model.runtime_stats().sign_bit_rings.values())
    for key, weight in on_cpu.items():
        assert torch.equal(on_gpu[key], weight), key
    model.cpu()  # and back: the CPU layout again (re-encoded at first use), the same weights
    model.clear_cache()
    with torch.no_grad():
        for key, weight in model.generated_weights():
            assert torch.equal(weight, on_cpu[key]), key
    assert all(model.runtime_stats().sign_bit_rings.values()) == sign_bit_on_cpu


@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_training_on_cuda_matches_cpu_and_round_trips(mode, tmp_path):
    tiny = MODELS["bert_cls"]
    torch.manual_seed(0)
    base = tiny.build()
    config = RPGConfig(dof=0.2, seed=2, mode=mode)
    models = {}
    for device in ("cpu", "cuda"):
        model = apply_rpg(copy.deepcopy(base), config).to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        batch = {k: v.to(device) for k, v in tiny.batch(0).items()}
        losses = []
        for _ in range(5):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        models[device] = model
    assert models["cuda"].plan.cache_indices  # with an index cache on CUDA: the fused gather and scatter
    torch.testing.assert_close(
        models["cuda"].rpg_rings["default"].detach().cpu(), models["cpu"].rpg_rings["default"].detach(),
        rtol=1e-3, atol=1e-5,
    )  # fmt: skip
    models["cuda"].save_pretrained(tmp_path / "ckpt")
    kwargs = {"base_model": copy.deepcopy(base)} if mode == "delta" else {}
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt", **kwargs)
    batch = tiny.batch(1)
    expected = model_outputs(models["cuda"], {k: v.cuda() for k, v in batch.items()}).cpu()
    torch.testing.assert_close(model_outputs(loaded, batch), expected, rtol=1e-4, atol=1e-5)
