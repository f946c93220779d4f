"""The hf-rpg command: info, merge, demo, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import make_bert_cls, model_outputs
from transformers import AutoModelForSequenceClassification

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg.api.cli import main


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.1))
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_info_prints_dof_sizes_generator_targets_and_mode(tmp_path, capsys):
    model, path = _checkpoint(tmp_path)
    assert main(["info", str(path), "--targets"]) == 0
    out = capsys.readouterr().out
    assert "mode: replace" in out and "generator: rpg-v1" in out
    assert f"ring DoF: {model.dof_report().ring_dof:,}" in out
    report = model.dof_report()
    assert (
        f"({report.dof_fraction:.2%} of the generated elements, {report.ring_fraction:.2%} of all "
        f"{report.all_parameters:,} parameters)"
    ) in out
    assert "smaller than the dense fp32 weights" in out
    assert "bert.encoder.layer.0.attention.self.query.weight" in out
    assert "architecture: BertForSequenceClassification" in out


def test_merge_writes_a_plain_transformers_checkpoint(tmp_path, capsys):
    model, path = _checkpoint(tmp_path)
    batch = {"input_ids": torch.randint(0, 99, (2, 7))}
    assert main(["merge", str(path), str(tmp_path / "dense")]) == 0
    dense = AutoModelForSequenceClassification.from_pretrained(tmp_path / "dense")
    assert torch.equal(model_outputs(dense, batch), model_outputs(model, batch))


def test_errors_are_one_line_and_a_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_rpg.api.cli", "info", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-rpg info: error:"), result.stderr
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "hf_rpg.api.cli", "merge", str(tmp_path / "empty"), "out"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "is not an hf_rpg checkpoint" in result.stderr


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--dof", "0.5", "--threads", "1", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torch threads: 1 (asked for)\n")  # says what it chose, first
    assert "dense" in out and "rpg" in out and "checkpoint" in out
    assert (tmp_path / "rpg" / "rpg_model.safetensors").exists()


def test_info_works_without_the_optional_dof_report(tmp_path, capsys):
    import json

    model, path = _checkpoint(tmp_path)
    meta = json.loads((path / "rpg_config.json").read_text())
    del meta["dof"], meta["base_model"]
    (path / "rpg_config.json").write_text(json.dumps(meta))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"ring DoF: {model.dof_report().ring_dof:,}" in out and "architecture: unknown" in out


def test_dof_forms_cannot_be_misread():
    import argparse

    import pytest

    from hf_rpg.api.cli import parse_dof

    assert parse_dof("25%") == 0.25 and parse_dof("0.25") == 0.25 and parse_dof("100%") == 1.0
    assert parse_dof("18116") == 18116 and parse_dof("18_116") == 18116 and parse_dof("1.0") == 1.0
    assert isinstance(parse_dof("18116"), int) and isinstance(parse_dof("1e-2"), float)
    with pytest.raises(argparse.ArgumentTypeError, match=r"write 1\.0 or 100% for full DoF"):
        parse_dof("1")
    for bad in ("abc", "0%", "150%", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--dof"):
            parse_dof(bad)


def test_demo_dof_1_is_one_clear_line(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--dof", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--dof 1 would be a ring of one entry; write 1.0" in err


def test_size_comparison_is_honest():
    from hf_rpg.format.report import size_ratio

    assert size_ratio(100, 340) == "3.4x smaller than"
    assert size_ratio(340, 100) == "3.4x larger than"
    assert size_ratio(104, 100) == "1.04x larger than"  # never "1.0x smaller" when larger
    assert size_ratio(100, 104) == "1.04x smaller than"
    assert size_ratio(100, 100) == "as large as"


def test_study_commands_without_the_study_code_name_the_extra(monkeypatch, capsys):
    """``hf-rpg demo`` / ``sweep`` run hf_rpg_studies; where it cannot be imported the error
    says how to install it (the library itself never needs it)."""
    monkeypatch.setitem(sys.modules, "hf_rpg_studies.demo", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "hf_rpg_studies.sweep", None)
    assert main(["demo"]) == 1
    assert "-e ./studies" in capsys.readouterr().err
    assert main(["sweep", "--dof", "0.1"]) == 1
    assert "hf_rpg_studies.sweep" in capsys.readouterr().err
