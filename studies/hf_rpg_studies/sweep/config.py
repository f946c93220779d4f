"""What a sweep runs: its settings (``SweepConfig``), the built-in models and datasets, the
ablations, and its points."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hf_rpg import RPGConfig
from hf_rpg.describe import is_int as _is_int
from hf_rpg.errors import RPGConfigError

DATASETS = {"digits": 16, "fashion_mnist": 28, "rt_polarity": None}  # name -> image size (None: text)


BUILT_IN_MODELS = ("resnet", "vit", "minilm")


IMAGE_MODELS = ("resnet", "vit")


TEXT_MAX_LENGTH = 64  # tokens per sentence, as the text example (the longest has 78)


# (replace-mode lr, delta-mode lr, dense lr) when not given: the examples' recipes
DEFAULT_LR = {"image": (1e-2, 1e-2, 1e-2), "text": (5e-5, 5e-4, 5e-5)}


INDEX_ABLATIONS = ("no_permutation", "no_sign", "plain_tiling")


ABLATIONS = (*INDEX_ABLATIONS, "local_rings")


LOCAL_RINGS = {
    "resnet": {"stem": r"resnet\.embedder\..*", "stage1": r"resnet\.encoder\.stages\.0\..*"},  # default: stage 2
    "vit": {"layer0": r"vit\.layers\.0\..*", "layer1": r"vit\.layers\.1\..*"},  # default: the patch embedding
}


# Settings that change every result: a resumed sweep must have the same ones.
RESULT_SETTINGS = (
    "model", "dataset", "mode", "epochs", "lr", "dense_lr", "batch_size", "max_train_samples", "max_eval_samples",
)  # fmt: skip


RUNS_NAME = "runs.jsonl"


CSV_COLUMNS = (
    "key",
    "kind",
    "variant",
    "dof",
    "seed",
    "ring_dof",
    "trainable",
    "model_parameters",
    "widths",
    "accuracy",
    "final_loss",
    "steps",
    "train_seconds",
)


@dataclass
class SweepConfig:
    """What a sweep runs. Every field is checked by ``validate`` (``RPGConfigError``).

    Args:
        model: ``"resnet"``, ``"vit"`` or ``"module:function"`` (a factory, see the module doc).
        dataset: ``"digits"`` or ``"fashion_mnist"`` (``data_dir``: its IDX folder).
        dofs: RPG DoF values (``RPGConfig.dof``: an int ring size or a fraction in (0, 1]).
        seeds: One run per seed and point (model init, ring seed and data order).
        mode: RPG mode; None: ``"delta"`` for ``minilm``, ``"replace"`` otherwise.
        epochs, lr, batch_size: The recipe (AdamW, one-cycle schedule, no weight decay);
            ``lr`` None: 1e-2 for images, 5e-4 (delta) or 5e-5 (replace) for text.
        dense_lr: lr of the dense and narrow runs; None: ``lr`` for images, 5e-5 for text.
        max_train_samples, max_eval_samples: Use the first N of each split.
        dense: Train the dense reference (per seed).
        equal_dof: Train, per RPG point of the plain variant, a narrow dense network (widths
            scaled down) whose parameter count is closest to the RPG model's trainable count.
        ablations: Any of ``ABLATIONS``, run at every DoF and seed.
        log_every: Record the mean training loss every this many steps.
    """

    model: str = "resnet"
    dataset: str = "digits"
    dofs: Sequence[int | float] = (0.01, 0.1, 0.5)
    seeds: Sequence[int] = (0,)
    mode: str | None = None
    epochs: int = 2
    lr: float | None = None
    dense_lr: float | None = None
    batch_size: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dense: bool = True
    equal_dof: bool = False
    ablations: Sequence[str] = ()
    log_every: int = 10
    data_dir: str | None = None

    def validate(self) -> SweepConfig:
        """Check every field; return ``self``."""
        if self.model not in BUILT_IN_MODELS and ":" not in str(self.model):
            raise RPGConfigError(f"model must be 'resnet', 'vit' or 'module:function', got {self.model!r}")
        if self.dataset not in DATASETS:
            raise RPGConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        text = DATASETS[self.dataset] is None
        if (self.model == "minilm" and not text) or (self.model in IMAGE_MODELS and text):
            raise RPGConfigError(
                f"model {self.model!r} does not fit dataset {self.dataset!r}: minilm is for rt_polarity, "
                "resnet and vit for digits and fashion_mnist"
            )
        if self.mode not in (None, "replace", "delta"):
            raise RPGConfigError(f"mode must be 'replace', 'delta' or None, got {self.mode!r}")
        if self.mode == "delta" and self.model in IMAGE_MODELS:
            raise RPGConfigError(f"mode 'delta' needs a pretrained model; {self.model!r} is trained from scratch")
        if self.equal_dof and self.model not in IMAGE_MODELS:
            raise RPGConfigError("equal_dof knows the widths of the resnet and vit only")
        if not self.dofs and not self.dense:
            raise RPGConfigError("nothing to run: give dofs or dense=True")
        for dof in self.dofs:
            RPGConfig(dof=dof)  # the same checks and messages as the library's
        if len(set(self.dofs)) != len(self.dofs) or len(set(self.seeds)) != len(self.seeds):
            raise RPGConfigError(
                f"dofs and seeds must not repeat a value, got {list(self.dofs)} and {list(self.seeds)}"
            )
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise RPGConfigError(f"seeds must be non-negative ints, got {list(self.seeds)}")
        for name in ("epochs", "batch_size", "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise RPGConfigError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise RPGConfigError(f"{name} must be a positive int or None, got {value!r}")
        for name in ("lr", "dense_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise RPGConfigError(f"{name} must be a positive number or None, got {value!r}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise RPGConfigError(f"ablations must be among {', '.join(ABLATIONS)}, got {bad}")
        if "local_rings" in self.ablations and self.model not in LOCAL_RINGS:
            raise RPGConfigError("the local_rings ablation knows the rings of the built-in models only (resnet, vit)")
        if self.ablations and not self.dofs:
            raise RPGConfigError("ablations need dofs")
        return self

    def rpg_mode(self) -> str:
        """The RPG mode the runs use."""
        return self.mode or ("delta" if self.model == "minilm" else "replace")

    def learning_rate(self, kind: str) -> float:
        """The peak learning rate of a run of ``kind`` (``"rpg"``, ``"dense"``, ``"narrow"``)."""
        defaults = DEFAULT_LR["text" if DATASETS[self.dataset] is None else "image"]
        if kind == "rpg":
            return self.lr or defaults[0 if self.rpg_mode() == "replace" else 1]
        return self.dense_lr or (self.lr if DATASETS[self.dataset] is not None and self.lr else defaults[2])

    def settings(self) -> dict[str, Any]:
        """The fields as JSON values, with the mode and learning rates the runs use."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        data.update(mode=self.rpg_mode(), lr=self.learning_rate("rpg"), dense_lr=self.learning_rate("dense"))
        return data


@dataclass(frozen=True)
class Point:
    """One run of a sweep: ``kind`` is ``"rpg"``, ``"dense"`` or ``"narrow"`` (equal-DoF dense)."""

    kind: str
    seed: int
    dof: int | float | None = None
    variant: str = "rpg-v1"

    @property
    def key(self) -> str:
        """A name unique within a sweep, the resume key."""
        if self.kind == "dense":
            return f"dense/seed{self.seed}"
        return f"{self.kind}/{self.variant}/dof={self.dof!r}/seed{self.seed}"


def sweep_points(config: SweepConfig) -> list[Point]:
    """Every run of ``config``, in the order they run (dense and small DoF first)."""
    points = []
    for seed in config.seeds:
        if config.dense:
            points.append(Point("dense", seed))
        for dof in config.dofs:
            points.append(Point("rpg", seed, dof))
            if config.equal_dof:
                points.append(Point("narrow", seed, dof))
            points += [Point("rpg", seed, dof, variant) for variant in config.ablations]
    return points
