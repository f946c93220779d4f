"""Ring quantization and pruning, measured: bytes on disk and test accuracy of a trained
checkpoint saved with each ``ring_storage`` and after one-shot magnitude pruning.

Takes the checkpoints the examples write (``examples/train_image_classification.py`` on
Fashion-MNIST in replace mode, ``examples/finetune_text_classification.py`` on rt-polarity
in delta mode), re-saves each ring as float32 / float16 / int8, and after pruning 25%,
50% and 75% of the ring by magnitude (one shot, no retraining) as ``sparse`` and as
``int8``; reloads every copy in this process and evaluates it on the full test split. Writes
``benchmarks/results/ring-storage.json`` (or ``--output``) and prints a markdown table (docs/results.md)::

    python -m benchmarks ring_storage --image runs/q-fmnist/rpg --text runs/q-rt/rpg
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS
from hf_rpg import RPGModel, prune_ring
from hf_rpg.api.checkpoint import checkpoint_bytes
from hf_rpg.format.files import WEIGHTS_NAME

STORAGES = ("float32", "float16", "int8")
PRUNE_FRACTIONS = (0.25, 0.5, 0.75)


@torch.no_grad()
def image_accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Accuracy on ``(pixel_values, labels)``, in batches of 1,000."""
    model.eval()
    images, labels = data
    correct = 0
    for start in range(0, len(images), 1000):
        correct += int(
            (model(pixel_values=images[start : start + 1000]).logits.argmax(-1) == labels[start : start + 1000]).sum()
        )
    return correct / len(images)


@torch.no_grad()
def text_accuracy(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Accuracy over tokenized batches holding ``labels``."""
    model.eval()
    correct = total = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        correct += int((model(**inputs).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / total


def fashion_mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 Fashion-MNIST test images at 28 x 28, as the image example feeds them."""
    from hf_rpg_studies.data import image_tensors, load_image_dataset

    return image_tensors(load_image_dataset("fashion_mnist")["test"], 28)


def rt_polarity_test(tokenizer_path: str, max_length: int = 64) -> list[dict[str, torch.Tensor]]:
    """The 1,066 rt-polarity test sentences, tokenized as the text example does."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_rpg_studies.data import load_rt_polarity

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    test = load_rt_polarity()["test"]
    test = test.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    test = test.remove_columns(["text"]).rename_column("label", "labels")
    collate = DataCollatorWithPadding(tokenizer)
    return [collate([test[i] for i in range(s, min(s + 128, len(test)))]) for s in range(0, len(test), 128)]


def study(checkpoint: Path, evaluate, scratch: Path) -> dict[str, Any]:
    """Every storage and pruning variant of ``checkpoint``: bytes and accuracy."""
    rows = []

    def measure(label: str, model: RPGModel, storage: str | None, pruned: float = 0.0) -> None:
        out = scratch / label
        start = time.perf_counter()
        model.save_pretrained(out, ring_storage=storage)
        loaded = RPGModel.from_pretrained(out)
        ring = torch.cat([r.detach().flatten() for r in model.rpg_rings.values()])
        back = torch.cat([loaded.rpg_rings[n].detach().flatten() for n in model.rpg_rings])
        rows.append({
            "variant": label, "ring_storage": storage, "pruned_fraction": pruned,
            "weights_file_bytes": (out / WEIGHTS_NAME).stat().st_size, "checkpoint_bytes": checkpoint_bytes(out),
            "ring_max_abs_error": float((back - ring).abs().max()), "accuracy": evaluate(loaded),
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        print(f"  {label}: {rows[-1]['weights_file_bytes']:,} bytes, accuracy {rows[-1]['accuracy']:.4f}", flush=True)

    original = RPGModel.from_pretrained(checkpoint)
    report = original.dof_report()
    for storage in STORAGES:
        measure(storage, original, storage)
    for fraction in PRUNE_FRACTIONS:
        model = RPGModel.from_pretrained(checkpoint)
        prune_ring(model, fraction=fraction)
        measure(f"pruned {fraction:.0%}, sparse", model, "sparse", fraction)
        measure(f"pruned {fraction:.0%}, int8", model, "int8", fraction)
    return {"checkpoint": str(checkpoint), "mode": original.rpg_config.mode, "ring_dof": report.ring_dof,
            "dof_fraction": report.dof_fraction, "rows": rows}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The table of one study for docs/results.md."""
    base = next(r for r in result["rows"] if r["variant"] == "float32")
    lines = [
        "| ring stored as | weights file bytes | vs float32 | max ring error | test accuracy | vs float32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        size, delta = r["weights_file_bytes"] / base["weights_file_bytes"], 100 * (r["accuracy"] - base["accuracy"])
        lines.append(
            f"| {r['variant']} | {r['weights_file_bytes']:,} | {size:.2f}x | {r['ring_max_abs_error']:.2e} "
            f"| {r['accuracy']:.4f} | {delta:+.2f} pt |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the studies the arguments name and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None, help="Fashion-MNIST image-example checkpoint (rpg/)")
    parser.add_argument("--text", type=Path, default=None, help="rt-polarity text-example checkpoint (rpg/)")
    parser.add_argument("--output", type=Path, default=RESULTS / "ring-storage.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": f"{platform.machine()}, torch {torch.__version__}, "
                               f"{torch.get_num_threads()} thread(s)"}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        if args.image is not None:
            print(f"image: {args.image}", flush=True)
            data = fashion_mnist_test()
            results["fashion_mnist"] = study(args.image, lambda m: image_accuracy(m, data), Path(scratch) / "image")
        if args.text is not None:
            print(f"text: {args.text}", flush=True)
            meta = json.loads((args.text / "rpg_config.json").read_text())
            batches = rt_polarity_test(meta["base_model"]["name_or_path"])
            results["rt_polarity"] = study(args.text, lambda m: text_accuracy(m, batches), Path(scratch) / "text")
    args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for name in ("fashion_mnist", "rt_polarity"):
        if name in results:
            head = f"{name} ({results[name]['mode']}, ring DoF {results[name]['ring_dof']:,})"
            print(f"\n{head}:\n{markdown(results[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
