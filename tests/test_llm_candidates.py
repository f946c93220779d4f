"""The LLM benchmark's candidate structures (benchmarks/llm_quality/candidates.py): zero at start,
only the ring trains, and both factors learn."""

from __future__ import annotations

import copy

import pytest
import torch
from architectures import VOCAB, build

pytest.importorskip("peft", reason="PEFT is a benchmark dependency: pip install -e '.[bench]'")
from benchmarks.llm_quality.candidates import LoRAFromRing, apply_candidate


def test_cand_rpg_lora_starts_at_the_base_and_trains_both_factors():
    base = build("llama")  # the tests' tiny Llama: hidden 32, 2 layers, 2 key/value heads of 8
    model = copy.deepcopy(base)
    positions = apply_candidate(model, "cand-rpg-lora", 50, seed=3, target_leaves=["q_proj", "v_proj"])
    # rank 8: q (32 out, 32 in) and v (16 out, 32 in) in each of 2 layers
    assert positions == 2 * 8 * ((32 + 32) + (16 + 32))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, _ in trainable] == ["rpg_candidate_factors.ring"] and trainable[0][1].numel() == 50
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)

    ring = trainable[0][1]
    wrapper = next(m for m in model.modules() if isinstance(m, LoRAFromRing))
    out_f, r = wrapper.base.out_features, wrapper.rank
    a_slice = slice(wrapper.offset + out_f * r, wrapper.offset + wrapper.positions)
    a_index = model.rpg_candidate_factors.index[a_slice] % 50  # the ring entries A reads

    def a_grad() -> torch.Tensor:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return ring.grad.clone()

    at_zero = a_grad()
    assert at_zero.abs().sum() > 0  # F learns through the fixed projection at once
    with torch.no_grad():
        ring.normal_(0, 0.1)
    moved = a_grad()
    # Once F is non-zero the A positions carry gradient too: it differs from F's alone.
    assert not torch.allclose(moved[a_index], at_zero[a_index])
    with torch.no_grad():
        assert (model(ids).logits - base(ids).logits).abs().max() > 0


def test_the_report_sets_a_finished_candidate_beside_the_defaults_and_the_best_peer():
    from benchmarks.llm_quality.report import candidate_lines

    def row(method, val, mean, final=True):
        return {
            "task": "trec",
            "budget": 1000,
            "method": method,
            "final": final,
            "val_mean": val,
            "val_std": 1.0,
            "mean": mean,
            "std": 2.0,
            "seeds": 3,
        }

    rows = [
        row("cand-rpg-lora", 76.0, 77.0),
        row("rpg", 73.0, 66.0),
        row("unilora", 69.0, 75.0),
        row("fourierft", 60.0, 80.0, final=False),
    ]  # an unfinished peer is not the best yet
    [line] = candidate_lines(rows)
    assert line.startswith("- trec, 1,000: cand-rpg-lora validation 76.00 ± 1.00 vs hf_rpg's defaults 73.00 ± 1.00")
    assert line.endswith("test 77.00 ± 2.00 vs 66.00 ± 2.00; best finished peer unilora 75.00 ± 2.00")
    assert candidate_lines([row("cand-rpg-lora", 76.0, 77.0, final=False)]) == []
