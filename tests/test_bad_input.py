"""Bad input, one case at a time: each raises an RPGError naming the thing, the value and
what is valid. Complements test_config.py (per-field values) and test_checkpoint.py
(missing weights file, SHA-256 mismatch, unknown generator, shape mismatch)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import warnings

import pytest
import torch
import transformers
from checkpoint_helpers import (
    CONFIG,
    WEIGHTS,
    copy_checkpoint,
    edit_json,
    read_weights,
    rewrite_weights,
    save_tiny,
)
from conftest import MODELS, _bert_config, make_bert_mlm, model_outputs
from safetensors.torch import save_file

import hf_rpg
from hf_rpg import (
    RPGCheckpointError,
    RPGConfig,
    RPGConfigError,
    RPGError,
    RPGGeneratorVersionError,
    RPGManifestMismatchError,
    RPGModel,
    RPGStateError,
    apply_rpg,
)

# ------------------------------------------------------------------------------- RPGConfig

# field -> (wrong type, out of range), each (value, pattern the message must match). The
# values differ from test_config.py's; together they cover every field both ways.
FIELD_CASES = {
    "dof": (([0.1], r"dof must be an int .* got \[0\.1\] \(list\)"), (-0.5, r"dof as a float .* \(0, 1\], got -0\.5")),
    "seed": ((1.5, r"seed must be an int in \[0, 2\*\*64\), got 1\.5 \(float\)"), (-7, r"seed must be .*got -7")),
    "mode": ((None, r"mode must be one of 'replace', 'delta'; got None"), ("Replace", r"mode must be .*got 'Replace'")),
    "init": ((3, r"init must be one of 'random', 'project'; got 3 \(int\)"), ("normal", r"init must be .*'normal'")),
    "target_modules": (
        (5, r"target_modules must be a regex string, a list of strings or None, got 5 \(int\)"),
        ("", r"target_modules must not be an empty string; it must be a regex string"),
    ),
    "exclude_modules": (
        (2.5, r"exclude_modules must be a regex string, a list of strings or None, got 2\.5 \(float\)"),
        ([], r"exclude_modules must not be an empty list"),
    ),
    "target_parameters": (
        ({"a": 1}, r"target_parameters must be a regex string, a list of strings or None, got \{'a': 1\} \(dict\)"),
        ([], r"target_parameters must not be an empty list"),
    ),
    "rings": (
        ("attn", r"rings must be None or a non-empty dict .* got 'attn' \(str\)"),
        ({"attn": []}, r"rings\['attn'\] must not be an empty list"),
    ),
    "rank": (
        ("8", r"rank must be a positive int, 'auto' or None \(full-rank updates\), got '8' \(str\)"),
        (0, r"rank must be a positive int, 'auto' or None \(full-rank updates\), got 0"),
    ),
    "update": (
        (8, r"update must be one of 'auto', 'full', 'lowrank', 'lora'; got 8 \(int\)"),
        ("LoRA", r"update must be one of 'auto', 'full', 'lowrank', 'lora'; got 'LoRA'"),
    ),
    "gain": (
        ([1.0], r"gain must be one of 'auto', 'kaiming_fan_in', 'kaiming_fan_out' or a positive finite float, got \["),
        (float("inf"), r"gain must be one of .* or a positive finite float, got inf"),
    ),
    "other_parameters": (
        (0, r"other_parameters must be one of 'train', 'head', 'freeze'; got 0 \(int\)"),
        ("all", r"other_parameters must be one of .*; got 'all'"),
    ),
    "modules_to_save": (
        (7, r"modules_to_save must be a regex string, a list of strings or None, got 7 \(int\)"),
        ([""], r"modules_to_save entries must be non-empty strings, got '' \(str\)"),
    ),
    "ring_dtype": (
        (torch.float32, r"ring_dtype must be one of 'float32', 'float64', 'bfloat16', 'float16'; got torch\.float32"),
        ("int8", r"ring_dtype must be one of .*; got 'int8'"),
    ),
    "weights_in_backward": (
        (False, r"weights_in_backward must be one of 'auto', 'regenerate', 'keep'; got False"),
        ("recompute", r"weights_in_backward must be one of .*; got 'recompute'"),
    ),
    "index_cache": ((None, r"index_cache must be one of 'auto', 'int32', 'none'; got None"), ("int64", r"got 'int64'")),
    "embedding_rows": (("yes", r"embedding_rows must be True or False, got 'yes' \(str\)"), (2, r"got 2 \(int\)")),
    "inference_cache": (
        ("true", r"inference_cache must be True or False, got 'true' \(str\)"),
        (None, r"inference_cache must be True or False, got None"),
    ),
    "base_model_name_or_path": (
        (3, r"base_model_name_or_path must be a non-empty string or None, got 3 \(int\)"),
        ("", r"base_model_name_or_path must be a non-empty string or None, got '' \(str\)"),
    ),
    "revision": (
        (["main"], r"revision must be a non-empty string or None, got \['main'\] \(list\)"),
        ("", r"revision must be a non-empty string or None, got ''"),
    ),
    "layers_to_transform": (
        ("1", r"layers_to_transform must be a layer number \(an int >= 0\), a non-empty list of them, .*got '1'"),
        (-1, r"layers_to_transform must be a layer number .* got -1"),
    ),
    "layers_pattern": (
        (7, r"layers_pattern must be a regex string, a list of strings or None, got 7 \(int\)"),
        ([""], r"layers_pattern entries must be non-empty strings, got '' \(str\)"),
    ),
    "rank_pattern": (
        (["q_proj"], r"rank_pattern must be None or a non-empty dict of module-name pattern -> .* got \['q_proj'\]"),
        ({"q_proj": 0}, r"rank_pattern\['q_proj'\] must be a positive int \(a rank\), got 0"),
    ),
}


def test_every_config_field_has_a_wrong_type_and_an_out_of_range_case():
    public = {f.name for f in dataclasses.fields(RPGConfig) if not f.name.startswith("_")}
    assert set(FIELD_CASES) == public


@pytest.mark.parametrize("kind", ["wrong type", "out of range"])
@pytest.mark.parametrize("field", sorted(FIELD_CASES))
def test_config_field_errors_name_field_value_and_what_is_valid(field, kind):
    value, message = FIELD_CASES[field][kind == "out of range"]
    with pytest.raises(RPGConfigError, match=message) as info:
        RPGConfig(**{field: value})
    assert str(info.value).startswith(field)  # the message leads with the field's name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gain": 10**400}, r"gain must be .* positive finite float, got 1000"),  # float() would overflow
        ({"target_modules": "(" * 5000 + ")" * 5000}, r"target_modules=.* is not a valid regular expression"),
        ({"rings": {"attn": None}}, r"rings\['attn'\] must be a regex string or a list of strings, got None"),
        ({"rings": {"": ".*"}}, r"rings: ring name '' must be 1-64 characters"),
    ],
)
def test_config_edge_values(kwargs, message):
    with pytest.raises(RPGConfigError, match=message):
        RPGConfig(**kwargs)


def test_config_json_file_that_is_not_utf8_or_too_deep(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(RPGConfigError, match="is not valid JSON"):
        RPGConfig.from_json_file(path)
    path.write_text("[" * 100_000)
    with pytest.raises(RPGConfigError, match="is not valid JSON"):
        RPGConfig.from_json_file(path)


# ------------------------------------------------------------------------------- applying twice


def test_rpg_applied_twice_through_from_pretrained_is_refused(tmp_path):
    model = save_tiny(tmp_path / "ckpt")
    with pytest.raises(RPGStateError, match="already applied to base_model"):
        RPGModel.from_pretrained(tmp_path / "ckpt", base_model=model)
    with pytest.raises(RPGStateError, match="already applied to base_model"):
        RPGModel.from_pretrained(tmp_path / "ckpt", base_model=model.base_model)
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(RPGStateError, match="already applied"):
        apply_rpg(loaded, RPGConfig())


# ------------------------------------------------------------------------------- checkpoint files


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One saved checkpoint and its model's outputs; each test edits a copy."""
    path = tmp_path_factory.mktemp("pristine") / "ckpt"
    model = save_tiny(path)
    batch = MODELS["bert_mlm"].batch(1)
    return path, batch, model_outputs(model, batch)


@pytest.fixture
def ckpt(pristine, tmp_path):
    return copy_checkpoint(pristine[0], tmp_path / "ckpt")


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS])
def test_each_required_file_missing(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(RPGCheckpointError, match=rf"is not an hf_rpg checkpoint: it lacks {name}"):
        RPGModel.from_pretrained(ckpt)


def test_model_config_missing_needs_a_base_model(ckpt, pristine):
    (ckpt / "config.json").unlink()
    with pytest.raises(RPGCheckpointError, match=r"has no config\.json; pass base_model="):
        RPGModel.from_pretrained(ckpt)
    loaded = RPGModel.from_pretrained(ckpt, base_model=make_bert_mlm())
    assert torch.equal(model_outputs(loaded, pristine[1]), pristine[2])


def test_model_card_missing_is_fine(ckpt, pristine):
    (ckpt / "README.md").unlink()
    assert torch.equal(model_outputs(RPGModel.from_pretrained(ckpt), pristine[1]), pristine[2])


def test_malformed_model_config(ckpt):
    (ckpt / "config.json").write_text('{"hidden_size": "big"')
    with pytest.raises(RPGCheckpointError, match=r"cannot build BertForMaskedLM from .*config\.json"):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize("keep", [0, 4, 8, 60, -100, -1])
@pytest.mark.parametrize("checksum", ["recorded", "absent"])
def test_truncated_weights_file(ckpt, keep, checksum):
    if checksum == "absent":  # only the safetensors header parse can catch it
        edit_json(ckpt / CONFIG, lambda meta: meta.pop("files"))
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(data[:keep])
    message = r"is \d+ bytes but rpg_config\.json records \d+: the file is truncated"
    with pytest.raises(RPGCheckpointError, match=message if checksum == "recorded" else "not a readable safetensors"):
        RPGModel.from_pretrained(ckpt)


def test_corrupted_header_without_checksum(ckpt):
    edit_json(ckpt / CONFIG, lambda meta: meta.pop("files"))
    data = bytearray((ckpt / WEIGHTS).read_bytes())
    data[8:12] = b"\x00\xff\x00\xff"  # inside the JSON header
    (ckpt / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(RPGCheckpointError, match=r"is not a readable safetensors file \(header\)"):
        RPGModel.from_pretrained(ckpt)


def test_rpg_config_that_is_not_json(ckpt):
    (ckpt / CONFIG).write_text("{'format_version': 1}")
    with pytest.raises(RPGCheckpointError, match=r"rpg_config\.json is not a readable JSON file"):
        RPGModel.from_pretrained(ckpt)
    (ckpt / CONFIG).write_text("[1, 2]")
    with pytest.raises(RPGCheckpointError, match=r"must hold a JSON object, got \[1, 2\] \(list\)"):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize("field", ["format_version", "generator", "config", "manifest"])
def test_rpg_config_lacking_a_required_field(ckpt, field):
    edit_json(ckpt / CONFIG, lambda meta: meta.pop(field))
    with pytest.raises(
        RPGCheckpointError,
        match=rf"lacks the field '{field}' \(required: format_version, generator, config, manifest\)",
    ):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize("field", ["seed", "mode"])
def test_config_section_lacking_a_field_that_decides_the_weights(ckpt, field):
    # A default seed would silently generate other weights: refused, not defaulted.
    edit_json(ckpt / CONFIG, lambda meta: meta["config"].pop(field))
    with pytest.raises(RPGCheckpointError, match=rf"'config' lacks the field '{field}' \(required: seed, mode\)"):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        ("generator", "rpg-v2", RPGGeneratorVersionError, r"generator 'rpg-v2'; this hf_rpg .* implements rpg-v1"),
        ("generator", 1, RPGCheckpointError, r"'generator' must be a generator name such as 'rpg-v1', got 1 \(int\)"),
        ("format_version", 2, RPGCheckpointError, r"format_version 2, written by a newer hf_rpg; .* reads format 1"),
        ("format_version", "1", RPGCheckpointError, r"format_version must be the int 1, got '1' \(str\)"),
        ("format_version", True, RPGCheckpointError, r"format_version must be the int 1, got True \(bool\)"),
        ("config", "seed=3", RPGCheckpointError, r"'config' must be an object \(the RPGConfig\), got 'seed=3'"),
        ("mode", "delta", RPGCheckpointError, r"'mode' is 'delta' .* but 'config' says mode 'replace'"),
        ("base_model", ["Bert"], RPGCheckpointError, r"'base_model' must be an object with class, module"),
        ("hf_rpg_version", 1, RPGCheckpointError, r"'hf_rpg_version' must be a string or null, got 1"),
        ("files", "sha", RPGCheckpointError, r"'files' must map file names to"),
        ("dof", [1], RPGCheckpointError, r"'dof' must be an object \(the DoF report\)"),
        ("manifest", {"rings": []}, RPGManifestMismatchError, r"manifest must be an object with lists"),
    ],
)
def test_rpg_config_field_with_a_bad_value(ckpt, key, value, error, message):
    edit_json(ckpt / CONFIG, lambda meta: meta.__setitem__(key, value))
    with pytest.raises(error, match=message):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["base_model"].__setitem__("class", 7), r"base_model: 'class' must be a string or null, got 7"),
        (lambda m: m["base_model"].__setitem__("class", "AutoModel"), r"cannot rebuild the base model class"),
        (lambda m: m["files"][WEIGHTS].__setitem__("sha256", "abc"), r"sha256 must be 64 lowercase hex digits"),
        (lambda m: m["files"][WEIGHTS].__setitem__("bytes", -1), r"bytes must be a non-negative int, got -1"),
        (lambda m: m["dof"].__setitem__("ring_dof", "many"), r"dof\['ring_dof'\] must be a number, got 'many'"),
        (lambda m: m["config"].__setitem__("seed", "3"), r"rpg_config\.json: 'config': seed must be an int"),
        (lambda m: m["manifest"].__setitem__("targets", []), r"manifest must list at least one ring and one target"),
        (
            lambda m: m["manifest"]["targets"][0].__setitem__("offset", 0.0),
            r"manifest target 'bert\.embeddings\.word_embeddings\.weight': 'offset' must be a non-negative int, "
            r"got 0\.0 \(float\)",
        ),
        (
            lambda m: m["manifest"]["targets"][0].__setitem__("shape", "99x32"),
            r"'shape' must be a list of non-negative ints, got '99x32' \(str\)",
        ),
        (lambda m: m["manifest"]["targets"][0].__setitem__("gain", 1e999), r"'gain' must be a finite number"),
        (lambda m: m["manifest"]["rings"][0].__setitem__("size", 0), r"need a name .* and 1 <= size <= elements"),
        (lambda m: m["manifest"]["rings"][0].pop("elements"), r"manifest ring 'default' lacks the field 'elements'"),
    ],
)
def test_rpg_config_nested_field_with_a_bad_value(ckpt, edit, message):
    edit_json(ckpt / CONFIG, edit)
    with pytest.raises(RPGError, match=message):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("int8", r"'ring_storage' must map ring names to objects such as"),
        ({}, r"'ring_storage' must map ring names to objects"),
        ({"attention": {"format": "int8", "block_size": 256}}, r"names ring 'attention', which the manifest does not"),
        ({"default": "int8"}, r"ring_storage\['default'\] must be an object"),
        ({"default": {"format": "int4"}}, r"ring_storage\['default'\]\.format must be one of 'float32', .*'int4'"),
        ({"default": {"format": "int8"}}, r"ring_storage\['default'\]\.block_size must be an int in \[1, .*None"),
        ({"default": {"format": "int8", "block_size": 0}}, r"block_size must be an int in \[1, 1048576\].*got 0"),
        ({"default": {"format": "float16", "bits": 4}}, r"ring_storage\['default'\] has unknown keys \['bits'\]"),
        ({"default": {"format": "sparse", "nonzero": -3}}, r"\.nonzero must be a non-negative int, got -3"),
    ],
)
def test_rpg_config_with_a_bad_ring_storage(ckpt, storage, message):
    edit_json(ckpt / CONFIG, lambda meta: meta.__setitem__("ring_storage", storage))
    with pytest.raises(RPGCheckpointError, match=message):
        RPGModel.from_pretrained(ckpt)


def test_ring_storage_that_does_not_match_the_weights_file(ckpt):
    # a float32 ring that rpg_config.json claims is int8: the binding catches the edited pair
    edit_json(
        ckpt / CONFIG, lambda m: m.__setitem__("ring_storage", {"default": {"format": "int8", "block_size": 256}})
    )
    with pytest.raises(RPGCheckpointError, match=r"was saved with another rpg_config\.json"):
        RPGModel.from_pretrained(ckpt)


def test_int8_checkpoint_with_its_scales_removed(tmp_path):
    model = save_tiny(tmp_path / "a")
    model.save_pretrained(tmp_path / "q", ring_storage="int8")
    rewrite_weights(tmp_path / "q", lambda t: t.pop("rpg_ring_storage.default.scales"))
    with pytest.raises(RPGCheckpointError, match=r"'rpg_rings\.default'.*needs a 'scales' tensor, the weights file"):
        RPGModel.from_pretrained(tmp_path / "q")


@pytest.mark.parametrize("storage", ["int4", "fp16", 8, "Int8"])
def test_save_with_a_bad_ring_storage(tmp_path, storage):
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.1))
    with pytest.raises(
        RPGConfigError, match=rf"ring_storage must be one of 'float32', 'float16', 'int8', 'sparse'; got {storage!r}"
    ):
        model.save_pretrained(tmp_path / "x", ring_storage=storage)
    assert not (tmp_path / "x").exists()


def test_unknown_top_level_and_config_keys_warn_and_load(ckpt, pristine):
    def add(meta):
        meta["written_by_the_future"] = {"x": 1}
        meta["config"]["future_option"] = True

    edit_json(ckpt / CONFIG, add)
    with pytest.warns(UserWarning) as record:
        loaded = RPGModel.from_pretrained(ckpt)
    messages = [str(w.message) for w in record]
    assert any("unknown top-level keys ['written_by_the_future']" in m for m in messages)
    assert any("future_option" in m for m in messages)
    assert torch.equal(model_outputs(loaded, pristine[1]), pristine[2])


def test_a_clean_checkpoint_loads_without_warnings(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RPGModel.from_pretrained(ckpt)


# ------------------------------------------------------------------------------- weights vs manifest


def test_ring_shape_that_does_not_match_the_manifest(ckpt):
    rewrite_weights(ckpt, lambda t: t.__setitem__("rpg_rings.default", t["rpg_rings.default"][:-1].clone()))
    size = json.loads((ckpt / CONFIG).read_text())["manifest"]["rings"][0]["size"]
    with pytest.raises(RPGManifestMismatchError, match=rf"ring 'default' has shape \[{size - 1}\], the manifest says"):
        RPGModel.from_pretrained(ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_a_ring(ckpt, bad):
    def poison(tensors):
        tensors["rpg_rings.default"][5] = bad

    rewrite_weights(ckpt, poison)
    with pytest.raises(RPGCheckpointError, match=r"ring 'default' holds 1 NaN or Inf value\(s\), the first at index 5"):
        RPGModel.from_pretrained(ckpt)


def test_ring_stored_as_integers(ckpt):
    rewrite_weights(ckpt, lambda t: t.__setitem__("rpg_rings.default", t["rpg_rings.default"].to(torch.int32)))
    with pytest.raises(RPGCheckpointError, match=r"ring 'default' is stored as torch\.int32; a ring is floating point"):
        RPGModel.from_pretrained(ckpt)


def test_stored_tensor_with_another_dtype_kind(ckpt):
    key = "bert.embeddings.LayerNorm.weight"
    rewrite_weights(ckpt, lambda t: t.__setitem__(key, t[key].to(torch.int64)), record_checksum=False)
    with pytest.raises(RPGManifestMismatchError, match=rf"'{key}' is stored as torch\.int64 but the model's tensor"):
        RPGModel.from_pretrained(ckpt)


def test_weights_from_another_save_are_caught_without_the_checksum(tmp_path, ckpt):
    # Same architecture, other seed: shapes all match, only the binding tells them apart.
    save_tiny(tmp_path / "other", seed=4)
    shutil.copy(tmp_path / "other" / WEIGHTS, ckpt / WEIGHTS)
    edit_json(ckpt / CONFIG, lambda meta: meta.pop("files"))
    with pytest.raises(RPGCheckpointError, match=r"was saved with another rpg_config\.json: the generator, seed"):
        RPGModel.from_pretrained(ckpt)


def test_an_edited_seed_is_caught(ckpt):
    edit_json(ckpt / CONFIG, lambda meta: meta["config"].__setitem__("seed", 4))
    with pytest.raises(RPGCheckpointError, match=r"was saved with another rpg_config\.json"):
        RPGModel.from_pretrained(ckpt)


def test_weights_without_a_binding_still_load(ckpt, pristine):
    """Checkpoints written before the binding existed load as before."""
    tensors, metadata = read_weights(ckpt / WEIGHTS)
    del metadata["hf_rpg_binding"]
    save_file(tensors, ckpt / WEIGHTS, metadata=metadata)
    edit_json(ckpt / CONFIG, lambda meta: meta.pop("files"))
    assert torch.equal(model_outputs(RPGModel.from_pretrained(ckpt), pristine[1]), pristine[2])


# ------------------------------------------------------------------------------- model vs manifest


def test_model_whose_targets_differ_from_the_manifest(ckpt):
    config = _bert_config()
    config.num_hidden_layers = 1
    fewer_layers = transformers.BertForMaskedLM(config)
    with pytest.raises(RPGManifestMismatchError, match=r"has no module 'bert\.encoder\.layer\.1\.attention"):
        RPGModel.from_pretrained(ckpt, base_model=fewer_layers)
    untied = transformers.BertForMaskedLM(_bert_config(tie_word_embeddings=False))
    with pytest.raises(
        RPGManifestMismatchError,
        match=r"'bert\.embeddings\.word_embeddings\.weight' is tied to 'cls\.predictions\.decoder\.weight', but in "
        r"the model that is not the same parameter",
    ):
        RPGModel.from_pretrained(ckpt, base_model=untied)


def test_a_failed_load_gives_the_callers_base_model_back_unchanged(ckpt, pristine):
    rewrite_weights(ckpt, lambda t: t["rpg_rings.default"].__setitem__(0, float("nan")))
    base = make_bert_mlm()
    base.bert.embeddings.LayerNorm.weight.requires_grad_(False)
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in base.named_parameters()}
    classes = {n: type(m) for n, m in base.named_modules()}
    with pytest.raises(RPGCheckpointError, match="NaN or Inf"):
        RPGModel.from_pretrained(ckpt, base_model=base)
    assert {n: type(m) for n, m in base.named_modules()} == classes
    after = dict(base.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, value, flag) in before.items():
        assert after[name] is param and torch.equal(param, value) and param.requires_grad == flag, name
    assert base.cls.predictions.decoder.weight is base.bert.embeddings.word_embeddings.weight
    apply_rpg(base, RPGConfig(dof=0.1))  # a plain model again


# ------------------------------------------------------------------------------- the error classes


def test_every_library_error_derives_from_rpg_error_and_is_exported():
    errors = [
        obj
        for obj in vars(hf_rpg.errors).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == "hf_rpg.errors"
    ]
    assert len(errors) >= 7
    for error in errors:
        assert issubclass(error, RPGError)
        assert getattr(hf_rpg, error.__name__) is error
