"""The LLM tasks: real data asked and answered through SmolLM2's chat template.

Every example is a chat (a short system line, the user's question) whose answer is one word
followed by the end-of-turn token; ``hf_rpg_studies.chat`` encodes, batches, trains
(loss on the answer tokens only) and grades them (exact match of the greedy generation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_rpg_studies.chat import (  # noqa: F401  (re-exported for the runner and tests)
    Example,
    answer_hits,
    answer_loss,
    collate,
    encode_chat,
    exact_match,
)

TREC_DIR = Path(__file__).resolve().parent / "data" / "trec"
TREC_SHA256 = {
    "train_5500.label": "f96f211c9d180d3fa25b1841febd9be6f0a6fc65e5b6a99344b5946163b35009",
    "TREC_10.label": "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
}
TREC_WORDS = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}
SYSTEM = "Answer with one word."
SENTIMENT_QUESTION = "Is the sentiment of this movie review positive or negative?\nReview: {text}"
TREC_QUESTION = (
    "What type of answer does this question ask for: abbreviation, description, entity, human, "
    "location or number?\nQuestion: {text}"
)


@dataclass
class LLMTask:
    """One task: its examples per split, the batch size, and what the report says of it."""

    name: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    batch_size: int
    pad_id: int
    settings: dict[str, Any] = field(default_factory=dict)

    def train_batches(self, seed: int) -> list[list[int]]:
        """Batches of training indices for one epoch: a seeded permutation cut into buckets
        of 20 batches, each sorted by length (less padding), then the batches shuffled."""
        rng = np.random.default_rng(seed)
        lengths = np.asarray([len(e.prompt) + len(e.answer) for e in self.train])
        perm = rng.permutation(len(self.train))
        batches: list[list[int]] = []
        bucket = self.batch_size * 20
        for start in range(0, len(perm), bucket):
            chunk = perm[start : start + bucket]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]


def _split_sizes(smoke: bool, train: int, val: int, test: int) -> tuple[int, int, int]:
    return (24, 16, 16) if smoke else (train, val, test)


def load_sentiment(tokenizer, *, smoke: bool = False, train: int = 512, val: int = 200, test: int = 400) -> LLMTask:
    """rt-polarity as a generated answer ("positive" / "negative")."""
    from hf_rpg_studies import data as example_data

    data = example_data.load_rt_polarity()
    n_train, n_val, n_test = _split_sizes(smoke, train, val, test)
    order = np.random.default_rng(0).permutation(len(data["train"]))
    test_order = np.random.default_rng(1).permutation(len(data["test"]))[:n_test]
    words = ["negative", "positive"]

    def encode(split: str, ids: np.ndarray) -> list[Example]:
        rows = data[split].select(ids.tolist())
        return [
            encode_chat(tokenizer, SYSTEM, SENTIMENT_QUESTION, t, words[y])
            for t, y in zip(rows["text"], rows["label"], strict=True)
        ]

    return LLMTask(
        name="sentiment",
        train=encode("train", order[:n_train]),
        val=encode("train", order[n_train : n_train + n_val]),
        test=encode("test", test_order),
        batch_size=8,
        pad_id=tokenizer.pad_token_id,
        settings={
            "data": "rt-polarity (Pang & Lee 2005), train split 9,596 / test 1,066",
            "train": n_train,
            "val": n_val,
            "test": n_test,
            "answers": words,
        },
    )


def read_trec(name: str) -> list[tuple[str, str]]:
    """``(coarse label, question)`` pairs of a committed TREC file, its sha256 checked first."""
    path = TREC_DIR / name
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TREC_SHA256[name]:
        raise ValueError(f"{path}: sha256 {digest} differs from the recorded {TREC_SHA256[name]}")
    pairs = []
    for line in raw.decode("latin-1").splitlines():
        label, _, question = line.strip().partition(" ")
        pairs.append((label.split(":")[0], question))
    return pairs


def load_trec(tokenizer, *, smoke: bool = False, train: int = 512, val: int = 200, test: int = 400) -> LLMTask:
    """TREC question classification (6 coarse classes) as a generated one-word answer."""
    pool = read_trec("train_5500.label")
    test_pairs = read_trec("TREC_10.label")
    n_train, n_val, n_test = _split_sizes(smoke, train, val, test)
    order = np.random.default_rng(0).permutation(len(pool))

    def encode(pairs: list[tuple[str, str]]) -> list[Example]:
        return [encode_chat(tokenizer, SYSTEM, TREC_QUESTION, q, TREC_WORDS[label]) for label, q in pairs]

    return LLMTask(
        name="trec",
        train=encode([pool[i] for i in order[:n_train]]),
        val=encode([pool[i] for i in order[n_train : n_train + n_val]]),
        test=encode(test_pairs[:n_test]),
        batch_size=8,
        pad_id=tokenizer.pad_token_id,
        settings={
            "data": "TREC question classification (Li & Roth 2002), train_5500 / TREC_10, 6 coarse classes",
            "train": n_train,
            "val": n_val,
            "test": n_test,
            "answers": list(TREC_WORDS.values()),
        },
    )


TASKS: dict[str, Callable[..., LLMTask]] = {"sentiment": load_sentiment, "trec": load_trec}
