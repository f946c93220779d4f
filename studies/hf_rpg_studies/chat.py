"""Chat fine-tuning on one-word answers: prompts through the chat template, the loss on the answer
tokens only, and grading by exact match of the greedy generation.

Shared by ``examples/finetune_causal_lm.py``, its notebook and ``benchmarks/llm_quality``.

Grading in one forward pass: greedy decoding reproduces the answer tokens (word and stop token)
exactly when, under teacher forcing, the argmax at every answer position is the answer's token
(while the generated prefix equals the answer's prefix, teacher forcing *is* greedy decoding).
So ``answer_hits`` scores prompt plus answer once instead of decoding token by token;
``tests/test_smollm2.py`` checks it against ``model.generate`` on real prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_TEXT_TOKENS = 48  # longer texts are cut (rt-polarity: 95% of reviews fit)


@dataclass
class Example:
    """One chat as token ids: the prompt (what the model reads) and the answer (what it should say)."""

    prompt: list[int]  # chat template up to and including the assistant header
    answer: list[int]  # the answer word's tokens and the end-of-turn token


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
def answer_hits(
    model: torch.nn.Module,
    examples: list[Example],
    pad_id: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> tuple[list[bool], float]:
    """``(hits, loss)``: per example, whether its greedy generation is exactly the answer (see
    the module docstring); and the mean answer-token cross-entropy."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(e.prompt) for e in examples], kind="stable")
    hits = [False] * len(examples)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        logits, targets, mask = answer_logits(model, batch)
        hit = ((logits.argmax(-1) == targets) | ~mask).all(-1)
        for i, h in zip(rows, hit.tolist(), strict=True):
            hits[i] = h
        loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum"))
        tokens += int(mask.sum())
    model.train(was_training)
    return hits, loss_sum / tokens


def exact_match(
    model: torch.nn.Module,
    examples: list[Example],
    pad_id: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """``(accuracy, loss)``: the share of exact greedy answers and the answer-token cross-entropy."""
    hits, loss = answer_hits(model, examples, pad_id, batch_size=batch_size, device=device)
    return sum(hits) / len(examples), loss


def encode_chat(
    tokenizer, system: str, question: str, text: str, answer: str, max_text_tokens: int = MAX_TEXT_TOKENS
) -> Example:
    """The chat ``system`` / ``question.format(text=text)`` with ``answer`` and the end-of-turn
    token as the assistant's reply; ``text`` is cut at ``max_text_tokens`` tokens first."""
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens]
    text = tokenizer.decode(text_ids)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question.format(text=text)}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(list(prompt["input_ids"]), answer_ids)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module, tokenizer, examples: list[Example], *, batch_size: int = 16, max_new_tokens: int = 4
) -> list[str]:
    """The greedy answer to every chat's prompt, as text (``model.generate``, left-padded batches;
    decoding stops at the end-of-turn token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = [""] * len(examples)
    order = np.argsort([len(e.prompt) for e in examples], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(examples[i].prompt) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[r, width - len(examples[i].prompt) :] = torch.tensor(examples[i].prompt)
            mask[r, width - len(examples[i].prompt) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        for r, i in enumerate(rows):
            answers[i] = tokenizer.decode(out[r, width:], skip_special_tokens=True)
    model.train(was_training)
    return answers
