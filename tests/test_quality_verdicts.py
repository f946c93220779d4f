"""The goal verdicts of benchmarks/results/quality.md: met, tie within the smaller std, or missed."""

from __future__ import annotations

from benchmarks.quality import verdicts as quality_verdicts


def _row(method: str, budget, mean: float, std: float, task: str = "text", n: int = 3) -> dict:
    return {"task": task, "method": method, "budget": budget, "test_mean": mean, "test_std": std, "n": n}


def test_verdicts_name_met_ties_and_misses():
    rows = [
        _row("rpg-qv", 1000, 0.60, 0.05),
        _row("unilora", 1000, 0.70, 0.02),  # 10 points ahead: missed
        _row("rpg-qv", 8000, 0.720, 0.010),
        _row("lora", 8000, 0.725, 0.008),  # 0.5 points ahead, within the smaller std (0.8): a tie
        _row("rpg-qv", 74000, 0.75, 0.01),
        _row("lora", 74000, 0.72, 0.01),  # behind: met
        _row("full", "full", 0.76, 0.01),
    ]
    text = "\n".join(quality_verdicts.verdict_lines(rows))
    assert "| text | 1,000 | 60.00 ± 5.00 | unilora 70.00 ± 2.00 | +10.00 | **missed by 10.00 points**" in text
    assert "| text | 8,000 | 72.00 ± 1.00 | lora 72.50 ± 0.80 | +0.50 | met: tie (gap within 0.80) |" in text
    assert "| text | 74,000 | 75.00 ± 1.00 | lora 72.00 ± 1.00 | -3.00 | met: at or above |" in text
    assert "8,000 DoF: hf_rpg defaults 72.00 ± 1.00 against full fine-tuning 76.00 ± 1.00: 4.00 points below" in text
    assert "missed by 3.00 points beyond the 1-point allowance" in text


def test_a_verdict_with_seeds_still_running_says_so_far():
    rows = [_row("rpg", 1000, 0.70, 0.01), _row("unilora", 1000, 0.72, 0.01, n=1)]
    text = "\n".join(quality_verdicts.verdict_lines(rows))
    assert "**missed by 2.00 points** (one std: 1.00) so far (unilora not at 3 seeds yet)" in text


def test_the_library_defaults_row_wins_over_its_equivalent_and_the_section_is_replaced():
    rows = [_row("rpg-qv", 8000, 0.5, 0.0), _row("rpg", 8000, 0.8, 0.0), _row("lora", 8000, 0.7, 0.0)]
    lines = quality_verdicts.verdict_lines(rows)
    assert any("| text | 8,000 | 80.00 ± 0.00 | lora 70.00 ± 0.00 | -10.00 | met: at or above |" in x for x in lines)
    report = "# report\n\nbody\n"
    once = quality_verdicts.insert(report, lines)
    twice = quality_verdicts.insert(once, lines)
    assert once == twice and once.count(quality_verdicts.BEGIN) == 1 and once.startswith(report.rstrip("\n"))
