"""Old checkpoints keep loading the same: tiny checkpoints committed under tests/fixtures/
(made once by make_compat_fixture.py, never regenerated here) load with today's code into
bit-identical weights and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from checkpoint_helpers import read_weights, snapshot
from fixtures.make_compat_fixture import generated_digests

from hf_rpg import RPGModel
from hf_rpg.api.checkpoint import RING_PREFIX, stored_entries

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compat_v1"
NAMES = ["bert_cls_delta", "bert_mlm", "resnet"]


def test_every_fixture_is_present():
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.endswith(".base")) == NAMES
    for name in NAMES:
        assert (FIXTURES / f"{name}.expected.safetensors").is_file()


def _load(name: str) -> RPGModel:
    path = FIXTURES / name
    meta = json.loads((path / "rpg_config.json").read_text())
    base = None
    if meta["mode"] == "delta":  # the recorded base is the dense model committed beside it
        base = transformers.BertForSequenceClassification.from_pretrained(FIXTURES / meta["base_model"]["name_or_path"])
    return RPGModel.from_pretrained(path, base_model=base)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_loads_bit_exactly(name):
    before = snapshot(FIXTURES)
    model = _load(name)
    assert snapshot(FIXTURES) == before  # loading wrote nothing

    # What the file stores comes back exactly.
    stored, _ = read_weights(FIXTURES / name / "rpg_model.safetensors")
    live = {RING_PREFIX + n: r for n, r in model.rpg_rings.items()} | stored_entries(model)
    assert stored.keys() == live.keys()
    assert all(torch.equal(live[k], v) for k, v in stored.items())

    # Every regenerated weight is bit-identical to the one the model was trained with:
    # generation is integer indexing and one float32 multiply (plus an add in delta mode),
    # the same on any machine.
    inputs, metadata = read_weights(FIXTURES / f"{name}.expected.safetensors")
    expected_logits = inputs.pop("logits")
    assert generated_digests(model) == json.loads(metadata["generated_sha256"])

    with torch.no_grad():
        logits = model(**inputs).logits
    platform = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if platform == (metadata["torch"], metadata["cpu_capability"]):
        assert torch.equal(logits, expected_logits)
    else:
        # Matrix products may round differently on another CPU or torch build; the weights
        # above are still bit-exact, so only kernel rounding can differ here.
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
