"""RPGConfig: validation with clear messages, and the JSON round trip."""

from __future__ import annotations

import json
import warnings

import pytest

from hf_rpg import RPGConfig, RPGConfigError, RPGError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dof": 0}, r"dof must be a positive int \(ring size\), got 0"),
        ({"dof": -5}, r"dof must be a positive int \(ring size\), got -5"),
        ({"dof": 0.0}, r"dof as a float .* must be in \(0, 1\], got 0.0"),
        ({"dof": 1.5}, r"dof as a float .* must be in \(0, 1\], got 1.5"),
        ({"dof": float("nan")}, r"dof as a float .* got nan"),
        ({"dof": True}, r"dof must be an int \(ring size\) or a float in \(0, 1\]"),
        ({"dof": "0.1"}, r"dof must be an int .* got '0.1' \(str\)"),
        ({"seed": -1}, r"seed must be an int in \[0, 2\*\*64\), got -1"),
        ({"seed": 2**64}, r"seed must be an int in \[0, 2\*\*64\)"),
        ({"mode": "lora"}, r"mode must be one of 'replace', 'delta'; got 'lora'"),
        ({"init": "zeros"}, r"init must be one of 'random', 'project'; got 'zeros'"),
        ({"mode": "delta", "init": "project"}, r"init='project' applies to mode='replace' only"),
        ({"target_modules": []}, r"target_modules must not be an empty list"),
        ({"target_modules": "("}, r"target_modules='\(' is not a valid regular expression"),
        ({"exclude_modules": [3]}, r"exclude_modules entries must be non-empty strings, got 3 \(int\)"),
        ({"target_parameters": ""}, r"target_parameters must not be an empty string"),
        ({"rings": {}}, r"rings must be None or a non-empty dict"),
        ({"rings": {"a.b": ".*"}}, r"rings: ring name 'a.b' must be 1-64 characters"),
        ({"gain": -1.0}, r"gain must be one of .* or a positive finite float, got -1.0"),
        ({"gain": "xavier"}, r"gain must be one of 'auto', 'kaiming_fan_in', 'kaiming_fan_out'; got 'xavier'"),
        ({"other_parameters": "some"}, r"other_parameters must be one of 'train', 'head', 'freeze'"),
        ({"index_cache": "int16"}, r"index_cache must be one of 'auto', 'int32', 'none'"),
        ({"embedding_rows": 1}, r"embedding_rows must be True or False, got 1 \(int\)"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_valid(kwargs, message):
    with pytest.raises(RPGConfigError, match=message) as info:
        RPGConfig(**kwargs)
    assert isinstance(info.value, RPGError) and isinstance(info.value, ValueError)


def test_json_round_trip(tmp_path):
    config = RPGConfig(
        dof=1234,
        seed=2**63 + 5,
        mode="delta",
        target_modules=["query", "value"],
        exclude_modules=r".*pooler.*",
        rings={"attn": ["query"], "rest": r".*"},
        gain=0.02,
        other_parameters="freeze",
        base_model_name_or_path="org/model",
    )
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert RPGConfig.from_json_file(path) == config
    assert json.loads(path.read_text())["dof"] == 1234


def test_unknown_keys_warn_and_are_kept_aside():
    data = RPGConfig().to_dict() | {"future_option": 3}
    with pytest.warns(UserWarning, match="future_option"):
        config = RPGConfig.from_dict(data)
    assert config._extra == {"future_option": 3}
    assert config == RPGConfig()


def test_defaults_depend_on_mode():
    assert RPGConfig().resolved_other_parameters == "train"
    assert RPGConfig(mode="delta").resolved_other_parameters == "head"
    assert RPGConfig(gain=1).gain == 1.0


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(RPGConfigError, match="is not valid JSON"):
        RPGConfig.from_json_file(path)


def test_numpy_scalars_count_as_their_python_twins():
    import numpy as np

    config = RPGConfig(dof=np.int64(1000), seed=np.uint64(2**63), gain=np.float32(0.5))
    assert (config.dof, config.seed, config.gain) == (1000, 2**63, 0.5)
    assert type(config.dof) is int and type(config.seed) is int and type(config.gain) is float
    fraction = RPGConfig(dof=np.float64(0.25))
    assert type(fraction.dof) is float and fraction.dof == 0.25
    with pytest.raises(RPGConfigError, match="dof must be an int"):
        RPGConfig(dof=np.bool_(True))


def test_int_dof_1_warns_that_it_is_one_ring_entry():
    with pytest.warns(UserWarning, match=r"ring of ONE entry.*dof=1\.0"):
        RPGConfig(dof=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RPGConfig(dof=1.0)
        RPGConfig(dof=2)


def test_dof_report_fraction_is_of_the_generated_elements():
    from conftest import make_bert_cls

    from hf_rpg import apply_rpg

    report = apply_rpg(make_bert_cls(), RPGConfig(dof=0.25)).dof_report()
    assert report.dof_fraction == pytest.approx(0.25, abs=1e-3)
    assert report.ring_fraction < report.dof_fraction  # the model also has other parameters
    assert "25.00% of" in str(report) and report.to_dict()["dof_fraction"] == report.dof_fraction


def test_print_trainable_parameters_speaks_peft_and_shows_small_budgets(capsys):
    from conftest import make_bert_cls

    from hf_rpg import apply_rpg

    base = make_bert_cls()
    dense = sum(p.numel() for p in base.parameters())
    head = sum(p.numel() for n, p in base.named_parameters() if n.startswith("classifier"))
    model = apply_rpg(base, RPGConfig(mode="delta", dof=3))
    model.print_trainable_parameters()
    peft_line, rpg_line = capsys.readouterr().out.strip().split("\n")
    trainable, total = 3 + head, dense + 3  # PEFT counts the base plus the adapter
    assert peft_line == (
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    )
    assert model.get_nb_trainable_parameters() == (trainable, total)
    fraction = 3 / model.layout.generated_elements
    assert f"ring DoF: 3 ({100 * fraction:.3g}% of" in rpg_line and "0.00%" not in rpg_line
    # a delta checkpoint is an update of its base, not a compressed model
    assert "smaller than" not in rpg_line and "loading also needs the base model" in rpg_line
    replace = apply_rpg(make_bert_cls(), RPGConfig(dof=0.25))
    assert "smaller than the dense model" in replace.dof_report().rpg_line()
