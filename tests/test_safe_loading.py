"""Safe loading: nothing is unpickled, no remote code runs, and only the checkpoint's JSON and
safetensors files are requested from the Hub."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
import transformers
import transformers.dynamic_module_utils
import transformers.models.auto.auto_factory
from checkpoint_helpers import save_tiny
from conftest import MODELS, make_bert_cls, model_outputs
from test_checkpoint import populate_hub_cache

import hf_rpg
import hf_rpg.format.files
import hf_rpg.format.hub_resolve
from hf_rpg import RPGCheckpointError, RPGConfig, RPGModel, apply_rpg
from hf_rpg.format.files import CHECKPOINT_FILES

PACKAGE = Path(hf_rpg.__file__).parent
BATCH = MODELS["bert_mlm"].batch(3)
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"}


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    """Calls of ``dotted`` (e.g. ``torch.load``) spelled as an attribute chain."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            found.append(node)
    return found


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _unsafe_findings(tree: ast.AST) -> list[str]:
    """What in ``tree`` could unpickle or run code from a checkpoint: pickle-like imports,
    ``trust_remote_code`` / ``allow_pickle`` not literally False, ``torch.load`` without
    ``weights_only=True``, ``eval`` and ``exec``."""
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and {a.name.split(".")[0] for a in node.names} & UNSAFE_MODULES:
            findings.append(ast.unparse(node))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UNSAFE_MODULES:
            findings.append(ast.unparse(node))
        flag = isinstance(node, ast.keyword) and node.arg in ("trust_remote_code", "allow_pickle")
        if flag and not _is_false(node.value):
            findings.append(f"{node.arg}={ast.unparse(node.value)}")
    for call in _calls(tree, "torch.load"):
        flag = _keyword(call, "weights_only")
        if not (isinstance(flag, ast.Constant) and flag.value is True):
            findings.append(ast.unparse(call))
    findings += [ast.unparse(call) for call in _calls(tree, "eval") + _calls(tree, "exec")]
    return findings


@pytest.mark.parametrize("source", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_library_source_never_unpickles_or_trusts_remote_code(source):
    assert _unsafe_findings(ast.parse(source.read_text(encoding="utf-8"))) == [], source.name


def test_the_scan_would_catch_an_unsafe_call():
    """The static test above is only worth something if it fails on bad code."""
    bad = ast.parse(
        "import torch\nimport pickle\nfrom dill import loads\n"
        "torch.load(path)\ntorch.load(path, weights_only=False)\ntorch.load(path, weights_only=True)\n"
        "f(trust_remote_code=True)\nnp.load(p, allow_pickle=flag)\neval(text)\nexec(text)\n"
    )
    assert _unsafe_findings(bad) == [
        "import pickle",
        "from dill import loads",
        "trust_remote_code=True",
        "allow_pickle=flag",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "eval(text)",
        "exec(text)",
    ]
    good = ast.parse(
        "torch.load(path, weights_only=True)\nf(trust_remote_code=False)\nnp.load(p, allow_pickle=False)\n"
    )
    assert _unsafe_findings(good) == []


@pytest.fixture
def forbid_unpickling(monkeypatch):
    """Record (and refuse) every call of the unpickling entry points."""
    calls = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while loading an hf_rpg checkpoint")

        return call

    for owner, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))

    class RefusingUnpickler(pickle.Unpickler):  # a subclass: lazily imported modules subclass it too
        def __init__(self, *args, **kwargs):
            refuse("pickle.Unpickler")()

    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    # Remote code is only ever reached through this function (imported by name in the auto classes).
    for owner in (transformers.dynamic_module_utils, transformers.models.auto.auto_factory):
        monkeypatch.setattr(owner, "get_class_from_dynamic_module", refuse("get_class_from_dynamic_module"))
    return calls


def test_local_load_unpickles_nothing_and_runs_no_remote_code(tmp_path, forbid_unpickling):
    model = save_tiny(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    # A config.json that asks for remote code is read as data: the class comes from rpg_config.json.
    config["auto_map"] = {"AutoModelForMaskedLM": "evil.EvilModel"}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    loaded = RPGModel.from_pretrained(tmp_path / "ckpt")
    assert type(loaded.base_model).__name__ == "BertForMaskedLM"
    assert torch.equal(model_outputs(loaded, BATCH), model_outputs(model, BATCH))
    assert forbid_unpickling == []


def test_hub_load_requests_only_json_and_safetensors(tmp_path, forbid_unpickling, monkeypatch):
    model = save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "optimizer.pt").write_bytes(b"not for loading")
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"not for loading")
    populate_hub_cache(tmp_path / "hub", "someone/tiny", tmp_path / "ckpt")
    requested = []
    real = hf_rpg.format.hub_resolve.snapshot_download

    def recording(repo_id, **kwargs):
        requested.extend(kwargs["allow_patterns"])
        return real(repo_id, **kwargs)

    monkeypatch.setattr(hf_rpg.format.hub_resolve, "snapshot_download", recording)
    loaded = RPGModel.from_pretrained("someone/tiny", cache_dir=tmp_path / "hub")
    assert torch.equal(model_outputs(loaded, BATCH), model_outputs(model, BATCH))
    assert requested and set(requested) <= set(CHECKPOINT_FILES)
    assert all(name.endswith((".json", ".safetensors")) for name in requested)
    assert forbid_unpickling == []


def test_delta_base_model_is_read_from_safetensors_only(tmp_path, forbid_unpickling):
    base_dir = tmp_path / "base"
    make_bert_cls().save_pretrained(base_dir)
    base = transformers.BertForSequenceClassification.from_pretrained(base_dir)
    model = apply_rpg(base, RPGConfig(mode="delta", dof=300))
    model.save_pretrained(tmp_path / "delta")
    batch = MODELS["bert_cls"].batch(0)
    assert torch.equal(model_outputs(RPGModel.from_pretrained(tmp_path / "delta"), batch), model_outputs(model, batch))
    # The same base offered only as a pickle: refused without unpickling it.
    state = {k: v.clone() for k, v in base.state_dict().items()}
    (base_dir / "model.safetensors").unlink()
    torch.save(state, base_dir / "pytorch_model.bin")  # pickles (allowed); loading it would unpickle
    with pytest.raises(RPGCheckpointError, match=r"cannot load the base model .* from safetensors weights"):
        RPGModel.from_pretrained(tmp_path / "delta")
    assert forbid_unpickling == []
