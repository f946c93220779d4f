"""The LLM tasks: real data asked and answered through SmolLM2's chat template.

Every example is a chat (a short system line, the user's question) whose answer is one word
followed by the end-of-turn token. Training puts the loss on the answer tokens only; grading
is exact match of the greedy generation against those tokens.

Grading in one forward pass: greedy decoding reproduces the answer tokens (word and stop token)
exactly when, under teacher forcing, the argmax at every answer position is the answer's token
(while the generated prefix equals the answer's prefix, teacher forcing *is* greedy decoding).
So ``exact_match`` scores the prompt plus answer once instead of decoding token by token;
``tests/test_llm_quality.py`` checks it against ``model.generate`` on real prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
MAX_TEXT_TOKENS = 48  # a review longer than this is cut (rt-polarity: 95% of reviews fit)


@dataclass
class Example:
    prompt: list[int]  # chat template up to and including the assistant header
    answer: list[int]  # the answer word's tokens and the end-of-turn token


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


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt+answer rows (every answer ends at the last column), position ids that
    skip the padding, and ``keep``: how many final positions need logits."""
    seqs = [e.prompt + e.answer for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    answer_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (seq, e) in enumerate(zip(seqs, examples, strict=True)):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
        answer_mask[row, width - len(e.answer) :] = True
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(len(e.answer) for e in examples) + 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "answer_mask": answer_mask,
        "keep": keep,
    }


def answer_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, targets, mask)`` at the answer positions only: the LM head runs on the last
    ``keep`` positions (``logits_to_keep``), not on the whole sequence."""
    keep = int(batch["keep"])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    targets = batch["input_ids"][:, -keep + 1 :]
    mask = batch["answer_mask"][:, -keep + 1 :]
    return logits, targets, mask


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the batch."""
    logits, targets, mask = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits[mask], targets[mask])


@torch.no_grad()
def exact_match(
    model: torch.nn.Module,
    examples: list[Example],
    pad_id: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """``(accuracy, loss)``: the share of examples whose greedy generation is exactly the answer
    (see the module docstring), and the mean answer-token cross-entropy."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(e.prompt) for e in examples], kind="stable")
    correct, loss_sum, tokens = 0, 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        logits, targets, mask = answer_logits(model, batch)
        hit = (logits.argmax(-1) == targets) | ~mask
        correct += int(hit.all(-1).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum"))
        tokens += int(mask.sum())
    model.train(was_training)
    return correct / len(examples), loss_sum / tokens


def _encode(tokenizer, question: str, text: str, answer: str, max_text_tokens: int = MAX_TEXT_TOKENS) -> Example:
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens]
    text = tokenizer.decode(text_ids)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question.format(text=text)}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(list(prompt["input_ids"]), answer_ids)


def _split_sizes(smoke: bool, train: int, val: int, test: int) -> tuple[int, int, int]:
    return (24, 16, 16) if smoke else (train, val, test)


def load_sentiment(tokenizer, *, smoke: bool = False, train: int = 512, val: int = 200, test: int = 400) -> LLMTask:
    """rt-polarity as a generated answer ("positive" / "negative")."""
    from hf_rpg.examples_support import data as example_data

    data = example_data.load_rt_polarity()
    n_train, n_val, n_test = _split_sizes(smoke, train, val, test)
    order = np.random.default_rng(0).permutation(len(data["train"]))
    test_order = np.random.default_rng(1).permutation(len(data["test"]))[:n_test]
    words = ["negative", "positive"]

    def encode(split: str, ids: np.ndarray) -> list[Example]:
        rows = data[split].select(ids.tolist())
        return [
            _encode(tokenizer, SENTIMENT_QUESTION, t, words[y])
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
        return [_encode(tokenizer, TREC_QUESTION, q, TREC_WORDS[label]) for label, q in pairs]

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
