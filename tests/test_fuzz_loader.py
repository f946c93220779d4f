"""Fuzzing the loader: mutated rpg_config.json and safetensors headers make
RPGModel.from_pretrained raise only RPGErrors, never write anything, and never load a
model whose outputs differ from the saved one's while the SHA-256 entry is in place."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_helpers import CONFIG, WEIGHTS, edit_json, save_tiny, snapshot
from conftest import MODELS, model_outputs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hf_rpg import RPGError, RPGModel

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Workspace:
    pristine: Path
    work: Path
    batch: dict[str, torch.Tensor]
    outputs: torch.Tensor


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("fuzz")
    model = save_tiny(root / "pristine")
    batch = MODELS["bert_mlm"].batch(4)
    return Workspace(root / "pristine", root / "work", batch, model_outputs(model, batch))


def _fresh_copy(space: Workspace) -> Path:
    shutil.rmtree(space.work, ignore_errors=True)
    shutil.copytree(space.pristine, space.work)
    return space.work


def _without_checksum(space: Workspace) -> Workspace:
    """The same checkpoint with no SHA-256 entry, so that mutated weights reach the parser."""
    source = space.pristine.parent / "pristine-no-sha"
    if not source.exists():
        shutil.copytree(space.pristine, source)
        edit_json(source / CONFIG, lambda meta: meta.pop("files"))
    return Workspace(source, space.work, space.batch, space.outputs)


def _load(space: Workspace) -> RPGModel | None:
    """Load the mutated checkpoint: an RPGModel, or None when an RPGError refused it.
    Any other exception fails the test; so does any change to the files."""
    root = space.work.parent
    before = snapshot(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys warn, by design
            model = RPGModel.from_pretrained(space.work)
    except RPGError as err:
        event(f"refused: {type(err).__name__}")
        model = None
    else:
        event("loaded")
    assert snapshot(root) == before, "loading wrote into the checkpoint's directory"
    return model


# ------------------------------------------------------------------------------- JSON mutations

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _parent(doc: Any, path: tuple) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def json_mutation(draw, doc: dict[str, Any], extra_values: st.SearchStrategy | None = None) -> Any:
    """A copy of ``doc`` with one key dropped, one value replaced or one key added."""
    extra_values = st.nothing() if extra_values is None else extra_values
    doc = json.loads(json.dumps(doc))
    paths = _paths(doc)
    # Half the draws among short paths, so that top-level and config fields are hit
    # as often as the many manifest entries.
    path = draw(st.sampled_from([p for p in paths if len(p) <= 2]) | st.sampled_from(paths))
    action = draw(st.sampled_from(["drop", "set", "add"]))
    if not path:
        return draw(json_values | extra_values)
    parent = _parent(doc, path)
    if action == "drop":
        del parent[path[-1]]
    elif action == "set":
        parent[path[-1]] = draw(json_values | extra_values)
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=10))] = draw(json_values | extra_values)
    else:
        parent.insert(path[-1], draw(json_values | extra_values))
    return doc


@st.composite
def config_text(draw, text: str) -> bytes:
    """New rpg_config.json bytes: a structured mutation, a truncation or byte noise."""
    kind = draw(st.sampled_from(["json", "json", "json", "truncate", "splice", "bytes"]))
    data = text.encode()
    if kind == "json":
        return json.dumps(draw(json_mutation(json.loads(text)))).encode()
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at + 1 :]
    return draw(st.binary(max_size=200))


def test_fuzzing_rpg_config_json(workspace):
    pristine_text = (workspace.pristine / CONFIG).read_text()

    @FUZZ
    @given(new=config_text(pristine_text))
    def run(new: bytes) -> None:
        work = _fresh_copy(workspace)
        (work / CONFIG).write_bytes(new)
        model = _load(workspace)
        if model is not None:
            # Whatever survived the checks changed nothing that decides the outputs.
            assert torch.equal(model_outputs(model, workspace.batch), workspace.outputs)

    run()


# ------------------------------------------------------------------------------- safetensors mutations

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "C64", "Q4", ""]
header_values = (
    st.sampled_from(DTYPES)
    | st.lists(st.integers(-3, 2**40), max_size=4)  # shapes and data_offsets
    | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)  # __metadata__
)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


@st.composite
def weights_bytes(draw, data: bytes) -> bytes:
    """New rpg_model.safetensors bytes: a mutated JSON header, header byte noise, a wrong
    header length or a truncation."""
    header, body = _split(data)
    header_end = len(data) - len(body)
    kind = draw(st.sampled_from(["header", "header", "header", "flip", "length", "truncate"]))
    if kind == "header":
        text = json.dumps(draw(json_mutation(header, header_values))).encode()
        return struct.pack("<Q", len(text)) + text + body
    if kind == "flip":
        at = draw(st.integers(0, header_end - 1))
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if kind == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + data[8:]
    return data[: draw(st.integers(0, len(data) - 1))]


def test_fuzzing_the_safetensors_header(workspace):
    # Without the SHA-256 entry the header parse and the tensor checks are what stand guard.
    space = _without_checksum(workspace)
    pristine = (space.pristine / WEIGHTS).read_bytes()

    @FUZZ
    @given(new=weights_bytes(pristine))
    def run(new: bytes) -> None:
        work = _fresh_copy(space)
        (work / WEIGHTS).write_bytes(new)
        _load(space)

    run()
