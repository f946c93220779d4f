"""hf_rpg_studies.data against the real local files: rt-polarity, Fashion-MNIST, digits, MiniLM.

rt-polarity and Fashion-MNIST must be present (CI installs them, see docs/examples.md):
a missing copy fails with the command that provides it instead of skipping.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINILM_HINT

from hf_rpg_studies import data


def test_rt_polarity_counts_and_split(rt_dir):
    for name in ("pos", "neg"):
        assert len(data._read_lines(rt_dir / f"rt-polarity.{name}")) == 5331
    rt = data.load_rt_polarity(rt_dir)
    assert (len(rt["train"]), len(rt["test"])) == (9596, 1066)
    assert rt["train"].features["label"].names == ["neg", "pos"]
    train, test = list(rt["train"]["text"]), list(rt["test"]["text"])
    labels = np.concatenate([rt["train"]["label"], rt["test"]["label"]])
    assert (labels == 1).sum() == (labels == 0).sum() == 5331
    # a shuffled split: both classes in the test set, every sentence in exactly one split
    assert 400 < sum(rt["test"]["label"]) < 666
    lines = data._read_lines(rt_dir / "rt-polarity.neg") + data._read_lines(rt_dir / "rt-polarity.pos")
    assert sorted(train + test) == sorted(lines)
    assert all(isinstance(t, str) and t == t.strip() and t for t in test)


def test_rt_polarity_split_is_fixed_by_seed(rt_dir):
    a, b = data.load_rt_polarity(rt_dir), data.load_rt_polarity(rt_dir)
    assert list(a["test"]["text"]) == list(b["test"]["text"])
    c = data.load_rt_polarity(rt_dir, seed=1, test_size=100)
    assert len(c["test"]) == 100 and list(c["test"]["text"]) != list(a["test"]["text"])[:100]


def test_rt_polarity_env_and_bad_location(rt_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(data.RT_POLARITY_ENV, str(rt_dir))
    assert data.find_rt_polarity() == rt_dir
    with pytest.raises(FileNotFoundError, match=r"rt-polarity\.neg"):
        data.load_rt_polarity(tmp_path)  # a given location without the files is an error, not the Hub
    monkeypatch.setenv(data.RT_POLARITY_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=data.RT_POLARITY_ENV):
        data.find_rt_polarity()


def test_latin1_lines(tmp_path):
    (tmp_path / "x").write_bytes("caf\xe9 , tr\xe8s bien . \n\nsecond\n".encode("latin-1"))
    assert data._read_lines(tmp_path / "x") == ["café , très bien .", "second"]


def _write_idx(path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_read_idx_roundtrip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", images, 0x08)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.gz", floats, 0x0D)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.gz"), floats)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="promises"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "text")


def test_fashion_mnist(fashion_dir):
    fm = data.load_fashion_mnist(fashion_dir)
    assert (len(fm["train"]), len(fm["test"])) == (60000, 10000)
    assert fm["train"].features["image"].shape == (28, 28)
    assert len(fm["train"].features["label"].names) == 10
    x, y = data.image_tensors(fm["test"])
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.bincount(y).tolist() == [1000] * 10  # the test set is balanced
    # the first test image is an ankle boot (class 9), the data set's documented first label
    assert y[0].item() == 9
    # image_tensors follows select(): the same rows as the datasets formatter gives
    sub = fm["train"].select([5, 0, 59999])
    xs, ys = data.image_tensors(sub)
    expected = np.stack(sub.with_format("numpy")[:]["image"]).astype(np.float32) * (2 / 255) - 1
    np.testing.assert_allclose(xs[:, 0].numpy(), expected, atol=1e-6)
    assert ys.tolist() == list(sub["label"])


def test_digits_match_the_demo_split():
    from hf_rpg_studies.demo import load_digits_split

    digits = data.load_digits()
    assert (len(digits["train"]), len(digits["test"])) == (1437, 360)
    x, y = data.image_tensors(digits["train"], size=16)
    demo = load_digits_split()
    assert x.shape == demo.train_x.shape
    assert torch.equal(y, demo.train_y)
    assert (x - demo.train_x).abs().max() < 0.01  # 0-16 rounded to 0-255


def test_minilm_path(monkeypatch, tmp_path):
    monkeypatch.delenv(data.MINILM_ENV, raising=False)
    path = Path(data.minilm_path())
    assert path.is_dir(), MINILM_HINT
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert data.minilm_path(tmp_path) == str(tmp_path)
    monkeypatch.setenv(data.MINILM_ENV, "some/where")
    assert data.minilm_path() == "some/where"


def test_hub_fallback_when_no_local_copy(monkeypatch, tmp_path):
    """Without an argument, variable or default copy the loaders ask the Hub, by its names."""
    import datasets
    from PIL import Image

    monkeypatch.delenv(data.RT_POLARITY_ENV, raising=False)
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "RT_POLARITY_DEFAULT", tmp_path / "absent")
    monkeypatch.setattr(data, "FASHION_MNIST_DEFAULT", tmp_path / "absent")
    asked = []

    def fake_hub(name):
        asked.append(name)
        if name == data.RT_POLARITY_HUB:
            labels = datasets.ClassLabel(names=["neg", "pos"])
            features = datasets.Features({"text": datasets.Value("string"), "label": labels})
            split = datasets.Dataset.from_dict({"text": ["good .", "bad ."], "label": [1, 0]}, features=features)
            return datasets.DatasetDict(train=split, validation=split, test=split)
        images = [Image.fromarray(np.full((28, 28), i, dtype=np.uint8)) for i in (0, 255)]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
        split = datasets.Dataset.from_dict({"image": images, "label": [0, 1]}, features=features)
        return datasets.DatasetDict(train=split, test=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    rt = data.load_rt_polarity()
    assert (len(rt["train"]), len(rt["test"])) == (4, 2)  # the Hub's train + validation, and its test
    fm = data.load_fashion_mnist()
    x, y = data.image_tensors(fm["train"])
    assert x.shape == (2, 1, 28, 28) and x[0].max() == -1 and x[1].min() == 1 and y.tolist() == [0, 1]
    assert asked == [data.RT_POLARITY_HUB, data.FASHION_MNIST_HUB]

    def offline(name):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=data.RT_POLARITY_ENV):
        data.load_rt_polarity()
    with pytest.raises(FileNotFoundError) as failure:
        data.load_fashion_mnist()
    message = str(failure.value)
    # one line that names every way to provide the data
    assert "\n" not in message and "offline" in message
    for way in (str(tmp_path / "absent"), data.FASHION_MNIST_ENV, "--data-dir", data.FASHION_MNIST_HUB, "apt-get"):
        assert way in message


def _fake_rotten_tomatoes(name):
    import datasets

    assert name == data.RT_POLARITY_HUB
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = {
        "train": {"text": ["a fine film .", "dull ,\ndull .", "great ."], "label": [1, 0, 1]},
        "validation": {"text": ["bad ."], "label": [0]},
        "test": {"text": ["good .", "awful ."], "label": [1, 0]},
    }
    return datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in splits.items()})


def test_rt_polarity_folder_writes_the_hub_copy_out(monkeypatch, tmp_path):
    """No local copy: the Hub's rotten_tomatoes becomes the two files the local loader reads."""
    import datasets

    monkeypatch.delenv(data.RT_POLARITY_ENV, raising=False)
    monkeypatch.setattr(data, "RT_POLARITY_DEFAULT", tmp_path / "absent")
    monkeypatch.setattr(datasets, "load_dataset", _fake_rotten_tomatoes)
    folder = data.rt_polarity_folder(tmp_path / "export")
    assert folder == tmp_path / "export"
    assert data._read_lines(folder / "rt-polarity.neg") == ["dull , dull .", "bad .", "awful ."]
    assert data._read_lines(folder / "rt-polarity.pos") == ["a fine film .", "great .", "good ."]
    rt = data.load_rt_polarity(folder, test_size=2)
    assert sorted([*rt["train"]["text"], *rt["test"]["text"]]) == sorted(
        ["dull , dull .", "bad .", "awful .", "a fine film .", "great .", "good ."]
    )


def test_rt_polarity_folder_prefers_the_local_copy(rt_dir, monkeypatch, tmp_path):
    import datasets

    def no_hub(name):
        raise AssertionError("the Hub was asked although a local copy exists")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setenv(data.RT_POLARITY_ENV, str(rt_dir))
    assert data.rt_polarity_folder(tmp_path / "unused") == rt_dir
    assert not (tmp_path / "unused").exists()


def test_rt_polarity_missing_everywhere_is_one_line(monkeypatch, tmp_path):
    import datasets

    def offline(name):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.delenv(data.RT_POLARITY_ENV, raising=False)
    monkeypatch.setattr(data, "RT_POLARITY_DEFAULT", tmp_path / "absent")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError) as failure:
        data.rt_polarity_folder(tmp_path / "export")
    message = str(failure.value)
    assert "\n" not in message and "OfflineModeIsEnabled" in message and "more detail" not in message
    for way in (str(tmp_path / "absent"), data.RT_POLARITY_ENV, "--data-dir", data.RT_POLARITY_HUB, "HF_HUB_OFFLINE"):
        assert way in message
