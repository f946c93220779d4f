"""benchmarks/quality/ in its tiny --smoke mode: every step of the protocol runs,
the results file is resumable and the report is rebuilt from it alone."""

from __future__ import annotations

import importlib
import json
import types

import pytest


@pytest.fixture(scope="module")
def fq():
    """The benchmark's modules, in this process (the imports are the slow part of a run)."""
    pytest.importorskip("peft", reason="PEFT is a benchmark dependency: pip install -e '.[bench]'")
    parts = {name: importlib.import_module(f"benchmarks.quality.{name}") for name in ("loop", "__main__")}
    lr_selection = importlib.import_module("benchmarks.lr_selection")
    return types.SimpleNamespace(
        pick_lr=lr_selection.pick_lr,
        widen=lr_selection.widen,
        schedule=parts["loop"].schedule,
        main=parts["__main__"].main,
    )


def test_lr_pick_and_grid_edges(fq):
    runs = [
        {"seed": 0, "lr": 1e-3, "val_acc": 0.8, "val_loss": 0.5},
        {"seed": 0, "lr": 3e-3, "val_acc": 0.9, "val_loss": 0.4},
        {"seed": 0, "lr": 1e-2, "val_acc": 0.9, "val_loss": 0.3},  # tie on accuracy: lower loss wins
        {"seed": 1, "lr": 1e-3, "val_acc": 1.0, "val_loss": 0.0},  # only seed 0 selects
        {"seed": 0, "lr": 3e-2, "val_acc": 1.0, "val_loss": float("nan"), "finite": False},  # diverged: not picked
    ]
    assert fq.pick_lr(runs) == 1e-2
    grid = [1e-3, 3e-3, 1e-2]
    assert fq.widen(grid, 1e-2) == pytest.approx(3e-2, rel=0.01)
    assert fq.widen(grid, 1e-3) == pytest.approx(1e-3 / 3, rel=0.01)
    assert fq.widen(grid, 3e-3) is None
    assert fq.schedule(10)(0) == 1.0 and fq.schedule(10)(9) == pytest.approx(1 / 9)


@pytest.mark.slow
def test_smoke_runs_resumes_and_reports(fq, tmp_path, rt_dir, fashion_dir, minilm):
    results, report = tmp_path / "results.jsonl", tmp_path / "quality.md"
    common = ["--smoke", "--results", str(results), "--cache-dir", str(tmp_path / "cache"), "--report", str(report)]
    assert fq.main(["--task", "all", "--methods", "head,vblora,rpg-qv", "--budgets", "8000", *common]) == 0

    records = [json.loads(line) for line in results.read_text().splitlines()]
    runs = {(r["task"], r["method"]): r for r in records if r["kind"] == "run"}
    assert set(runs) == {(task, m) for task in ("text", "vision") for m in ("head", "vblora", "rpg-qv")}
    # The exact counts of the method's own parameters (the head excluded).
    assert runs["text", "head"]["trainable"] == 0
    assert runs["text", "vblora"]["trainable"] == 7904  # 19 vectors x (128 + 288 logits)
    assert runs["vision", "vblora"]["trainable"] == 8064  # 42 vectors x (64 + 128 logits)
    for task in ("text", "vision"):
        assert runs[task, "rpg-qv"]["trainable"] == runs[task, "rpg-qv"]["ring_dof"] == 8000
    assert all(r["seed"] == 0 and r["finite"] and 0 <= r["test_acc"] <= 1 for r in runs.values())
    assert [r["test_images"] for r in records if r["kind"] == "pretrain"] == [128]

    # Resumed: nothing runs again, nothing is appended.
    before = results.read_text()
    assert fq.main(["--task", "vision", "--methods", "head,rpg-qv", "--budgets", "8000", "--no-report", *common]) == 0
    assert results.read_text() == before

    report.unlink()
    assert fq.main(["--report-only", "--results", str(results), "--report", str(report)]) == 0
    text = report.read_text()
    assert "## text:" in text and "## vision:" in text and "## Protocol" in text
    assert "| vblora | 8k | 7,904 |" in text
    assert (tmp_path / "quality_plots" / "text.png").is_file()


def test_protocols_are_kept_apart():
    """A run of protocol 2 is not the protocol-1 run of the same method, budget, lr and seed; the
    keys of protocol 1's runs (recorded before the protocol was) are as they were."""
    pytest.importorskip("peft", reason="PEFT is a benchmark dependency: pip install -e '.[bench]'")
    from benchmarks.quality.results import protocol_of, run_key

    old = {"task": "text", "method": "lora", "budget": 8000, "config": {"r": 1}, "lr": 3e-3, "seed": 0}
    new = {**old, "protocol": 2}
    assert protocol_of(old) == 1 and protocol_of(new) == 2
    assert run_key(old) != run_key(new)
    assert run_key(old) == json.dumps(["text", "lora", 8000, {"r": 1}, "3e-3", 0], sort_keys=True)
