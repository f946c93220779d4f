"""One trainable count: PEFT's print line, ``dof_report``, the model card, ``hf-rpg info``
and the demo's table show the same trainable percentage of the same "all params"."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_bert_cls

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.api.cli import main
from hf_rpg.format.report import trainable_percent
from hf_rpg_studies.demo import DemoResult


def _percentages(text: str) -> set[str]:
    return set(re.findall(r"(\d+\.\d{4})%", text))


@pytest.mark.parametrize("mode", ["delta", "replace"])
def test_print_report_card_and_info_agree(tmp_path, capsys, mode):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(mode=mode, dof=500, base_model_name_or_path="someone/bert"))
    report = model.dof_report()
    expected = trainable_percent(report.trainable / report.all_parameters)
    assert trainable_percent(report.trainable_fraction) == expected
    assert report.ring_fraction == report.ring_dof / report.all_parameters
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert f"all params: {report.all_parameters:,} || trainable%: {expected}" in printed
    assert f"of all {report.all_parameters:,})" in printed  # the second line's "all" is the same
    trainable, total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (report.trainable, report.all_parameters)

    model.save_pretrained(tmp_path / "ckpt")
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert f"| trainable parameters | {report.trainable:,} ({expected}% of {report.all_parameters:,}) |" in card
    assert main(["info", str(tmp_path / "ckpt")]) == 0
    info = capsys.readouterr().out
    assert f"trainable: {report.trainable:,} ({expected}%)" in info
    assert _percentages(info) == _percentages(card) == {expected}


def test_a_model_loaded_frozen_saves_the_trainable_count_of_its_config(tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(mode="replace", dof=500))
    model.save_pretrained(tmp_path / "a")
    loaded = RPGModel.from_pretrained(tmp_path / "a")
    assert loaded.dof_report().trainable == 0  # frozen for inference
    assert loaded.dof_report(configured=True) == model.dof_report()
    loaded.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == (tmp_path / "a" / "README.md").read_text().replace(
        str(tmp_path / "a"), str(tmp_path / "b")
    )


def test_demo_table_shows_the_same_percentage():
    torch.manual_seed(0)
    report = apply_rpg(make_bert_cls(), RPGConfig(mode="delta", dof=500)).dof_report()
    result = DemoResult(
        model="mlp", dof=0.1, dense_accuracy=0.9, rpg_accuracy=0.8, dense_bytes=1000, rpg_bytes=100,
        dense_seconds=1.0, rpg_seconds=1.0, report=report,
    )  # fmt: skip
    assert f"trainable {trainable_percent(report.trainable_fraction)}%" in result.table()
