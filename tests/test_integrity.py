"""Integrity: the config is the model's own, resumption checks what loading checks, ids and
positions are validated, unknown keywords are errors, copies and pickles are clear."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from architectures import ARCHITECTURES, build
from checkpoint_helpers import CONFIG, WEIGHTS, edit_json

import hf_rpg.runtime.engine
from hf_rpg import RPGConfig, RPGError, RPGManifestMismatchError, RPGModel, RPGStateError, apply_rpg
from hf_rpg.api.trainer import load_weights_into
from hf_rpg.spec.generator import derive_key, permute, signed_indices


def _model(**config):
    torch.manual_seed(0)
    return apply_rpg(build("gpt2"), RPGConfig(**({"dof": 0.2, "seed": 3} | config)))


def test_apply_rpg_keeps_its_own_copy_of_the_config(tmp_path):
    config = RPGConfig(dof=0.2, seed=3)
    model = apply_rpg(build("gpt2"), config)
    config.seed = 99  # the caller's object; the model's weights were generated with seed 3
    assert model.rpg_config.seed == 3 and model.rpg_config is not config
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG).read_text())["config"]["seed"] == 3


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        ("truncate", RPGError, "is .* bytes but rpg_config.json records"),
        ("seed", RPGManifestMismatchError, "saved with seed=4, the model has seed=3"),
        ("binding", RPGError, "was saved with another rpg_config.json"),
    ],
)
def test_resuming_runs_the_checks_from_pretrained_runs(tmp_path, edit, error, message):
    model = _model()
    model.save_pretrained(tmp_path)
    before = model.rpg_rings["default"].detach().clone()
    if edit == "truncate":
        data = (tmp_path / WEIGHTS).read_bytes()
        (tmp_path / WEIGHTS).write_bytes(data[:-8])
    elif edit == "seed":
        other = _model(seed=4)
        other.save_pretrained(tmp_path)
    else:  # a weights file from another save with the same shapes, its checksum updated
        _model(seed=4).save_pretrained(tmp_path / "other")
        (tmp_path / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
        import hashlib

        digest = hashlib.sha256((tmp_path / WEIGHTS).read_bytes()).hexdigest()
        edit_json(tmp_path / CONFIG, lambda meta: meta["files"][WEIGHTS].update(sha256=digest))
    with pytest.raises(error, match=message):
        load_weights_into(model, tmp_path)
    assert torch.equal(model.rpg_rings["default"], before)  # nothing was loaded


@pytest.mark.parametrize("index_cache", ["int32", "none"])
def test_embedding_ids_are_checked_on_every_path(index_cache, monkeypatch):
    model = apply_rpg(build("llama"), RPGConfig(dof=0.2, index_cache=index_cache))
    model.train()
    vocab = model.base_model.config.vocab_size
    bad = torch.tensor([[1, vocab]])
    with pytest.raises(IndexError, match=f"ids must be in \\[0, {vocab}\\)"):
        model(input_ids=bad)
    # where checking would sync a GPU or break a compiled graph, an out-of-range id is sent past
    # the ring's end, so the lookup itself fails instead of reading the next tensor's weights
    monkeypatch.setattr(hf_rpg.runtime.embedding_rows, "_compiling", lambda: True)
    with pytest.raises((IndexError, RuntimeError, ValueError)):
        model(input_ids=bad)
    good = model(input_ids=torch.tensor([[1, vocab - 1]]))
    assert torch.isfinite(good.logits).all()


def test_generator_positions_are_checked():
    key = derive_key(0, "default")
    with pytest.raises(ValueError, match=r"positions must be in \[0, total=10\), got 10"):
        permute(torch.tensor([0, 10]), 10, key)
    with pytest.raises(ValueError, match=r"positions must be in \[0, total=10\), got -1"):
        signed_indices(torch.tensor([-1, 3]), 10, 4, key)
    # the int64 path too (rings beyond the uint32 path)
    with pytest.raises(ValueError, match="positions must be in"):
        signed_indices(torch.tensor([2**40]), 2**40, 7, key)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        (
            "save_pretrained",
            {"ring_dtype": "int8"},
            r"save_pretrained\(\) got an unexpected keyword argument 'ring_dtype'",
        ),
        (
            "from_pretrained",
            {"device_map": "auto"},
            r"from_pretrained\(\) got an unexpected keyword argument 'device_map'",
        ),
    ],
)
def test_unknown_keyword_arguments_are_errors(tmp_path, method, kwargs, message):
    model = _model()
    model.save_pretrained(tmp_path)
    call = (
        (lambda: model.save_pretrained(tmp_path / "x", **kwargs))
        if method == "save_pretrained"
        else (lambda: RPGModel.from_pretrained(tmp_path, **kwargs))
    )
    with pytest.raises(TypeError, match=message + r" \(= '.*'\); valid keyword arguments: "):
        call()
    assert not (tmp_path / "x").exists()


def test_deepcopy_works_and_pickling_is_a_clear_error():
    model = _model()
    batch = ARCHITECTURES["gpt2"].batch(0)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        saved = twin.rpg_rings["default"].clone()
        twin.rpg_rings["default"].add_(0.5)  # the copy has its own ring
        assert not torch.equal(twin(**batch).logits, model(**batch).logits)
        twin.rpg_rings["default"].copy_(saved)
    model.eval()
    twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(**batch).logits, model(**batch).logits)
    with pytest.raises(RPGStateError, match=r"cannot be pickled \(torch.save\(model\)\): use model.save_pretrained"):
        torch.save(model, io.BytesIO())
    with pytest.raises(RPGStateError, match="is part of an RPG model and cannot be pickled"):
        torch.save(model.base_model, io.BytesIO())
    with pytest.raises(RPGStateError, match=r"deep-copy the whole RPGModel"):
        copy.deepcopy(model.base_model.transformer.h[0].attn.c_attn)
    torch.save(model.state_dict(), io.BytesIO())  # the state is plain tensors


def test_disable_rpg_needs_delta_mode():
    with pytest.raises(RPGStateError, match="disable_rpg\\(\\) needs mode='delta'"), _model().disable_rpg():
        pass


def test_modules_to_save_chooses_what_trains_and_what_a_delta_checkpoint_stores(tmp_path):
    base = build("llama")
    model = apply_rpg(base, RPGConfig(mode="delta", dof=200, target_modules=["q_proj"], modules_to_save=["norm"]))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["base_model.model.norm.weight", "rpg_rings.default"]
    model.base_model.model.norm.weight.requires_grad_(False)  # what is stored follows the config, not this
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / WEIGHTS, "pt") as f:
        assert sorted(f.keys()) == ["model.norm.weight", "rpg_rings.default"]
    assert json.loads((tmp_path / CONFIG).read_text())["config"]["modules_to_save"] == ["norm"]
    with pytest.raises(RPGError, match=r"modules_to_save=\['nothing_here'\] matches no module"):
        apply_rpg(build("llama"), RPGConfig(mode="delta", dof=200, modules_to_save=["nothing_here"]))
