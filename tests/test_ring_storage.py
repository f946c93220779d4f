"""Ring storage (float32, float16, int8 with per-block scales, sparse) and ring pruning:
round trips, bytes on disk, old checkpoints, training on from a quantized checkpoint, info."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_helpers import CONFIG, WEIGHTS, read_weights
from conftest import MODELS, forward_backward, make_bert_cls, model_outputs

from hf_rpg import RPGConfig, RPGConfigError, RPGModel, apply_rpg, prune_ring
from hf_rpg.api.cli import main
from hf_rpg.format.ring_storage import INT8_BLOCK_SIZE, decode_ring, encode_ring


def _model(dof: float = 0.5) -> RPGModel:
    torch.manual_seed(0)
    return apply_rpg(make_bert_cls(), RPGConfig(dof=dof, seed=1))


def test_int8_codes_are_within_half_a_step_of_each_block():
    ring = torch.randn(1000) * torch.linspace(0.01, 3.0, 1000)  # scales that differ per block
    ring[300:556] = 0.0  # an all-zero block decodes to zeros
    main, extras, description = encode_ring(ring, "int8")
    assert main.dtype == torch.int8 and extras["scales"].shape == (-(-1000 // INT8_BLOCK_SIZE),)
    decoded = decode_ring(main, extras, description, 1000, "test")
    step = extras["scales"].repeat_interleave(INT8_BLOCK_SIZE)[:1000]
    assert bool(((decoded - ring).abs() <= step / 2 + 1e-7).all())
    assert torch.equal(decoded[300:556], torch.zeros(256))
    assert torch.equal(decoded.abs().max(), ring.abs().max())  # absmax is exact


@pytest.mark.parametrize("storage", ["float32", "float16", "int8", "sparse"])
def test_round_trip_and_bytes(tmp_path, storage):
    model = _model()
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / storage, ring_storage=storage)
    meta = json.loads((tmp_path / storage / CONFIG).read_text())
    assert meta["ring_storage"]["default"]["format"] == storage
    assert "ring_storage" not in json.loads((tmp_path / "plain" / CONFIG).read_text())

    loaded = RPGModel.from_pretrained(tmp_path / storage, is_trainable=True)
    ring, back = model.rpg_rings["default"].detach(), loaded.rpg_rings["default"]
    assert back.dtype == ring.dtype and back.requires_grad
    if storage in ("float32", "sparse"):
        assert torch.equal(back, ring)
    elif storage == "float16":
        assert torch.equal(back, ring.half().float())
    else:
        assert (back - ring).abs().max() <= ring.abs().max() / 254 + 1e-7
    batch = MODELS["bert_cls"].batch(0)
    torch.testing.assert_close(model_outputs(loaded, batch), model_outputs(model, batch), atol=0.05, rtol=0.05)

    plain = (tmp_path / "plain" / WEIGHTS).stat().st_size
    size = (tmp_path / storage / WEIGHTS).stat().st_size
    ring_bytes = 4 * ring.numel()
    expected = {"float32": 0, "float16": ring_bytes // 2, "int8": ring_bytes * 3 // 4, "sparse": -ring_bytes}[storage]
    # the rest of the file is the same: the saved bytes are the ring's (headers aside)
    assert abs((plain - size) - expected) < 0.03 * ring_bytes + 512


def test_pruned_ring_stored_sparse_is_smaller(tmp_path):
    model = _model()
    counts = prune_ring(model, fraction=0.75)
    ring = model.rpg_rings["default"]
    assert counts["default"] == round(0.75 * ring.numel()) == int((ring == 0).sum())
    model.save_pretrained(tmp_path / "dense", ring_storage="float32")
    model.save_pretrained(tmp_path / "sparse", ring_storage="sparse")
    saved = (tmp_path / "dense" / WEIGHTS).stat().st_size - (tmp_path / "sparse" / WEIGHTS).stat().st_size
    assert saved > 0.45 * 4 * ring.numel()  # 4 bytes per entry -> 8 per remaining quarter
    assert torch.equal(RPGModel.from_pretrained(tmp_path / "sparse").rpg_rings["default"], ring.detach())


def test_prune_ring_zeroes_the_smallest_magnitudes_and_the_weights_follow():
    model = _model()
    ring = model.rpg_rings["default"].detach().clone()
    model.eval()
    batch = MODELS["bert_cls"].batch(0)
    before = model_outputs(model, batch)  # fills the inference cache
    assert prune_ring(model, amount=100) == {"default": 100}
    after = model.rpg_rings["default"].detach()
    zeroed = after == 0
    assert int(zeroed.sum()) == 100
    assert ring.abs()[zeroed].max() <= ring.abs()[~zeroed].min()
    assert torch.equal(after[~zeroed], ring[~zeroed])
    assert not torch.equal(model_outputs(model, batch), before)  # the cached weights were regenerated
    for bad, message in [
        ({"fraction": 1.5}, r"fraction must be a number in \[0, 1\], got 1\.5"),
        ({"amount": -1}, r"amount must be an int in \[0, \d+\]"),
        ({}, "exactly one of fraction= .* or amount="),
        ({"fraction": 0.1, "amount": 3}, "exactly one of"),
        ({"fraction": 0.1, "rings": ["nope"]}, r"rings must name rings of the model \(default\), got \['nope'\]"),
    ]:
        with pytest.raises(RPGConfigError, match=message):
            prune_ring(model, **bad)


def test_training_continues_from_an_int8_checkpoint(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "q", ring_storage="int8")
    loaded = RPGModel.from_pretrained(tmp_path / "q", is_trainable=True)
    loaded.train()
    start = loaded.rpg_rings["default"].detach().clone()
    optimizer = torch.optim.SGD([p for p in loaded.parameters() if p.requires_grad], lr=0.1)
    forward_backward(loaded, MODELS["bert_cls"].batch(0))
    optimizer.step()
    assert not torch.equal(loaded.rpg_rings["default"].detach(), start)
    loaded.save_pretrained(tmp_path / "again")  # as is: float32
    again = RPGModel.from_pretrained(tmp_path / "again")
    assert torch.equal(again.rpg_rings["default"], loaded.rpg_rings["default"].detach())
    tensors, _ = read_weights(tmp_path / "again" / WEIGHTS)
    assert tensors["rpg_rings.default"].dtype == torch.float32


def test_bfloat16_ring_dequantises_to_its_dtype(tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls().to(torch.bfloat16), RPGConfig(dof=0.5, seed=1, ring_dtype="bfloat16"))
    model.save_pretrained(tmp_path / "q", ring_storage="int8")
    assert json.loads((tmp_path / "q" / CONFIG).read_text())["ring_storage"]["default"]["dtype"] == "bfloat16"
    loaded = RPGModel.from_pretrained(tmp_path / "q")  # the config's ring_dtype: bfloat16
    assert loaded.rpg_rings["default"].dtype == torch.bfloat16


def test_info_shows_how_the_ring_is_stored(tmp_path, capsys):
    model = _model()
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "q", ring_storage="int8")
    assert main(["info", str(tmp_path / "q")]) == 0
    assert (
        f"ring storage: default: int8, symmetric absmax scales per block of {INT8_BLOCK_SIZE}"
        in capsys.readouterr().out
    )
    assert main(["info", str(tmp_path / "plain")]) == 0
    assert "ring storage: default: as trained (no ring_storage field" in capsys.readouterr().out


def test_local_rings_each_get_their_own_storage(tmp_path):
    torch.manual_seed(0)
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.3, rings={"attention": r".*attention.*"}))
    model.save_pretrained(tmp_path / "q", ring_storage="int8")
    meta = json.loads((tmp_path / "q" / CONFIG).read_text())
    assert set(meta["ring_storage"]) == {"attention", "default"}
    loaded = RPGModel.from_pretrained(tmp_path / "q")
    for name, ring in model.rpg_rings.items():
        assert (loaded.rpg_rings[name] - ring.detach()).abs().max() <= ring.abs().max() / 254 + 1e-7
