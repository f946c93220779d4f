"""Quickstart: apply RPG to a BERT classifier, train a few steps, save, load, merge.

Runs offline with a small BERT built from a config (pass --model NAME_OR_PATH to start
from a pretrained checkpoint instead).

    python examples/quickstart.py --dof 0.1 --steps 20 --output-dir /tmp/rpg-quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg_studies.threads import use_threads


def build_model(name_or_path: str | None) -> torch.nn.Module:
    if name_or_path:
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=2)
    config = BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, num_labels=2
    )
    return BertForSequenceClassification(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pretrained model name or path (default: a small BERT)")
    parser.add_argument("--dof", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", type=Path, default=Path("rpg-quickstart"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: chosen)")
    args = parser.parse_args()
    print(use_threads(args.threads))

    torch.manual_seed(0)
    model = apply_rpg(build_model(args.model), RPGConfig(dof=args.dof, seed=0))
    model.print_trainable_parameters()

    # a toy task: is the first token id even?
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (64, 16), generator=generator)
    labels = (ids[:, 0] % 2).long()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(args.steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    model.save_pretrained(args.output_dir / "rpg")
    loaded = RPGModel.from_pretrained(args.output_dir / "rpg")
    dense = loaded.merge_and_unload()
    dense.save_pretrained(args.output_dir / "dense")
    model.eval()
    with torch.no_grad():
        same = torch.equal(model(input_ids=ids).logits, dense(input_ids=ids).logits)
    sizes = {d: sum(f.stat().st_size for f in (args.output_dir / d).iterdir()) for d in ("rpg", "dense")}
    print(f"compact checkpoint {sizes['rpg']:,} bytes, dense {sizes['dense']:,} bytes; merged logits identical: {same}")


if __name__ == "__main__":
    main()
