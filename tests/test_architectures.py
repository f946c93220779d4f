"""The architecture matrix, both modes: forward, delta at zero equals the base bit for bit,
training lowers the loss, merging keeps the outputs, greedy generation with the KV cache
gives the same tokens as the merged model, and a fresh process reloads every checkpoint
bit-exactly. The design serves any PreTrainedModel; these are examples, not the list."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from architectures import ARCHITECTURES, build, logits
from conftest import train_steps
from safetensors.torch import load_file, save_file

from hf_rpg import RPGConfig, apply_rpg

MODES = ["replace", "delta"]
# delta mode with its defaults (the attention's query and value projections where the
# architecture has them, full rank), with low-rank updates, and on every layer hf_rpg
# generates (embeddings, convolutions...)
VARIANTS = {
    "replace": {"mode": "replace"},
    "delta": {"mode": "delta"},
    "delta-lowrank": {"mode": "delta", "rank": 4},
    "delta-all": {"mode": "delta", "target_modules": "all"},
}
LANGUAGE_MODELS = {"causal", "seq2seq"}


def _greedy(model, batch) -> torch.Tensor:
    prompt = {"input_ids": batch["input_ids"][:, :5]}
    return model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)


def _trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture(name, variant):
    arch = ARCHITECTURES[name]
    base = build(name)
    reference = copy.deepcopy(base)
    batch = arch.batch(0)
    mode = VARIANTS[variant]["mode"]
    model = apply_rpg(base, RPGConfig(dof=0.3, seed=1, **VARIANTS[variant]))
    out = model(**batch)
    assert out.logits.shape == reference(**batch).logits.shape and torch.isfinite(out.loss)

    if mode == "delta":
        # the ring starts at zero: the base model's outputs exactly, without and with grad
        with torch.no_grad():
            assert torch.equal(logits(model, batch), logits(reference, batch))
        # with grad, CPU kernels may depend on which inputs require grad: give the reference the
        # model's flags (the generated weights require grad, through the ring)
        trainable = {n.removeprefix("base_model.") for n in _trainable(model)}
        trainable |= {t.name for t in model.layout.targets} | {n for t in model.layout.targets for n in t.tied}
        for pname, param in reference.named_parameters(remove_duplicate=False):
            param.requires_grad_(pname in trainable)
        assert torch.equal(logits(model, batch).detach(), logits(reference, batch).detach())
        if arch.kind in LANGUAGE_MODELS:  # PEFT's rule: no LM head trains, tied or not
            assert _trainable(model) == ["rpg_rings.default"], _trainable(model)
        else:
            assert "rpg_rings.default" in _trainable(model) and len(_trainable(model)) > 1

    losses = train_steps(model, batch, steps=5)
    model.eval()
    assert losses[-1] < losses[0], losses
    if mode == "delta" and arch.kind in LANGUAGE_MODELS:
        with model.disable_rpg(), torch.no_grad():  # the untouched base, though the ring has moved
            assert torch.equal(logits(model, batch), logits(reference, batch))

    with torch.no_grad():
        expected = logits(model, batch)
        tokens = _greedy(model, batch) if arch.kind in LANGUAGE_MODELS else None
    lowrank = any(t.rank is not None for t in model.layout.targets)
    merged = model.merge_and_unload()
    assert type(merged) is type(reference)
    with torch.no_grad():
        if lowrank:  # W0 + F P computes in another order than x W0ᵀ + (x Pᵀ) Fᵀ: equal to rounding
            torch.testing.assert_close(logits(merged, batch), expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(logits(merged, batch), expected)
        if tokens is not None:
            assert torch.equal(_greedy(merged, batch), tokens)


def test_fresh_process_reloads_every_architecture_bit_exactly(tmp_path):
    """Each architecture in both modes is saved here and loaded in one fresh process."""
    cases = []
    for name in sorted(ARCHITECTURES):
        arch = ARCHITECTURES[name]
        base_dir = tmp_path / f"{name}-base"
        build(name).save_pretrained(base_dir)  # delta checkpoints record where their base is
        batch = arch.batch(1)
        for mode in MODES:
            base = arch.auto_class.from_pretrained(base_dir).eval()
            model = apply_rpg(base, RPGConfig(mode=mode, dof=0.3, seed=2))
            train_steps(model, arch.batch(0), steps=2)
            model.eval()
            with torch.no_grad():
                expected = logits(model, batch)
            out = tmp_path / f"{name}-{mode}"
            model.save_pretrained(out)
            io = {key: value.clone() for key, value in batch.items()}  # labels may be input_ids itself
            save_file({**io, "expected": expected}, str(out.parent / f"{out.name}.io.safetensors"))
            cases.append(str(out))
    script = Path(__file__).parent / "scripts" / "reload_outputs.py"
    result = subprocess.run([sys.executable, str(script), *cases], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == dict.fromkeys(cases, True), report


def test_reload_script_compares_outputs(tmp_path):
    """The fresh-process check can fail: a changed expectation is reported as False."""
    name = "gpt2"
    arch = ARCHITECTURES[name]
    model = apply_rpg(build(name), RPGConfig(dof=0.3, seed=2))
    batch = arch.batch(1)
    with torch.no_grad():
        expected = logits(model, batch)
    model.save_pretrained(tmp_path / "c")
    io = {key: value.clone() for key, value in batch.items()}
    save_file({**io, "expected": expected + 1e-3}, str(tmp_path / "c.io.safetensors"))
    script = Path(__file__).parent / "scripts" / "reload_outputs.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "c")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {str(tmp_path / "c"): False}
    assert set(load_file(str(tmp_path / "c.io.safetensors"))) == {"input_ids", "labels", "expected"}
