"""The main job: train a tiny ResNet or ViT on scikit-learn's digits, dense vs RPG.

Runs offline in well under two minutes on two CPU cores and prints accuracy, DoF and
checkpoint bytes side by side. ``hf-rpg demo`` calls ``run_digits_demo``.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hf_rpg import DoFReport, RPGConfig, apply_rpg
from hf_rpg.api.checkpoint import checkpoint_bytes
from hf_rpg.format.report import size_ratio, trainable_percent

from .data import DIGITS_TEST_SIZE, image_tensors, load_digits


@dataclass
class DigitsData:
    """Train and test tensors of the digits split (images N x 1 x H x W, labels N)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(seed: int = 0, upsample: int = 2) -> DigitsData:
    """scikit-learn's 1,797 8x8 digits as ``load_digits`` gives them (shuffled with ``seed``,
    the last 360 images are the test split), scaled to [-1, 1] and upsampled ``upsample`` times."""
    digits = load_digits(seed=seed)
    size = 8 * upsample if upsample > 1 else None
    train_x, train_y = image_tensors(digits["train"], size)
    test_x, test_y = image_tensors(digits["test"], size)
    return DigitsData(train_x, train_y, test_x, test_y)


RESNET_WIDTHS = (16, 32, 64)  # stem, stage 1, stage 2 channels
VIT_WIDTHS = (64, 128)  # hidden size, MLP size


def build_digits_model(
    kind: str = "resnet", image_size: int = 16, num_labels: int = 10, widths: tuple[int, ...] | None = None
) -> nn.Module:
    """A tiny transformers ResNet (73k parameters) or ViT (69k) for one-channel images
    (digits, Fashion-MNIST) of ``num_labels`` classes.

    ``widths`` makes it narrower or wider: for the ResNet ``(stem, stage1, stage2)``
    channels (default ``RESNET_WIDTHS``), for the ViT ``(hidden, mlp)`` sizes (default
    ``VIT_WIDTHS``; the hidden size must be a multiple of the 4 attention heads).
    """
    if kind not in ("resnet", "vit"):
        raise ValueError(f"model must be 'resnet' or 'vit', got {kind!r}")
    default = RESNET_WIDTHS if kind == "resnet" else VIT_WIDTHS
    widths = tuple(default if widths is None else widths)
    if len(widths) != len(default) or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"widths of the {kind} must be {len(default)} positive ints, got {widths!r}")
    if kind == "resnet":
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(
            num_channels=1,
            embedding_size=widths[0],
            hidden_sizes=list(widths[1:]),
            depths=[1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            num_labels=num_labels,
        )
        return ResNetForImageClassification(config)
    from transformers import ViTConfig, ViTForImageClassification

    if widths[0] % 4:
        raise ValueError(f"the ViT hidden size must be a multiple of its 4 attention heads, got {widths[0]}")
    config = ViTConfig(
        image_size=image_size,
        patch_size=4,
        num_channels=1,
        hidden_size=widths[0],
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=widths[1],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def train_classifier(
    model: nn.Module, data: DigitsData, *, epochs: int = 15, lr: float = 1e-2, batch_size: int = 64, seed: int = 0
) -> float:
    """AdamW with a one-cycle schedule; returns test accuracy."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps_per_epoch = -(-len(data.train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.train_x), generator=shuffle)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = model(pixel_values=data.train_x[batch], labels=data.train_y[batch]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return evaluate_classifier(model, data)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: DigitsData) -> float:
    """Test accuracy of an image classifier, in eval mode and without grad."""
    model.eval()
    logits = model(pixel_values=data.test_x).logits
    return (logits.argmax(-1) == data.test_y).float().mean().item()


@dataclass
class DemoResult:
    """What ``run_digits_demo`` measured: accuracies, DoF report, checkpoint bytes, seconds."""

    model: str
    dof: float | int
    dense_accuracy: float
    rpg_accuracy: float
    report: DoFReport
    dense_bytes: int
    rpg_bytes: int
    dense_seconds: float
    rpg_seconds: float

    def table(self) -> str:
        """The side-by-side table ``hf-rpg demo`` prints."""
        r = self.report
        return "\n".join(
            [
                f"digits, tiny {self.model}, dof={self.dof}: test accuracy on {DIGITS_TEST_SIZE} held-out images",
                f"{'':>6} {'accuracy':>9} {'trainable':>10} {'checkpoint bytes':>17} {'train s':>8}",
                f"{'dense':>6} {self.dense_accuracy:>9.4f} {r.model_parameters:>10,} {self.dense_bytes:>17,} "
                f"{self.dense_seconds:>8.1f}",
                f"{'rpg':>6} {self.rpg_accuracy:>9.4f} {r.trainable:>10,} {self.rpg_bytes:>17,} "
                f"{self.rpg_seconds:>8.1f}",
                f"ring DoF {r.ring_dof:,} ({r.dof_fraction:.1%} of the generated weights, {r.ring_fraction:.1%} "
                f"of all parameters), trainable {trainable_percent(r.trainable_fraction)}%; checkpoint "
                f"{size_ratio(self.rpg_bytes, self.dense_bytes)} dense",
            ]
        )


def run_digits_demo(
    *,
    model: str = "resnet",
    dof: float | int = 0.25,
    epochs: int = 15,
    lr: float = 1e-2,
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> DemoResult:
    """Train the same tiny model dense and with RPG under ``dof``; compare accuracy and bytes.

    Both start from the same initialisation (``torch.manual_seed(seed)``), use the same
    recipe, and are saved: the dense model with transformers' ``save_pretrained``, the RPG
    model as a compact hf_rpg checkpoint.
    """
    data = load_digits_split(seed)
    torch.manual_seed(seed)
    dense = build_digits_model(model, image_size=data.train_x.shape[-1])
    rpg = apply_rpg(copy.deepcopy(dense), RPGConfig(dof=dof, seed=seed))

    start = time.perf_counter()
    dense_accuracy = train_classifier(dense, data, epochs=epochs, lr=lr, seed=seed)
    dense_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rpg_accuracy = train_classifier(rpg, data, epochs=epochs, lr=lr, seed=seed)
    rpg_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(output_dir) if output_dir is not None else Path(scratch)
        dense.save_pretrained(root / "dense")
        rpg.save_pretrained(root / "rpg")
        dense_bytes = checkpoint_bytes(root / "dense")
        rpg_bytes = checkpoint_bytes(root / "rpg")
    return DemoResult(
        model, dof, dense_accuracy, rpg_accuracy, rpg.dof_report(), dense_bytes, rpg_bytes, dense_seconds, rpg_seconds
    )
