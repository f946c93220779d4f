"""transformers ``Trainer`` integration: compact hf_rpg checkpoints and exact resumption.

A plain ``Trainer`` already trains an ``RPGModel`` like any model (its ``forward`` shows the
base model's signature, and its ``state_dict`` holds only what is trained, so Trainer's
own checkpoints hold no dense weights). Trainer only calls ``save_pretrained`` on
``PreTrainedModel`` and PEFT models, though; ``RPGTrainer`` makes every checkpoint and
``save_model`` an hf_rpg checkpoint (``rpg_config.json`` + ``rpg_model.safetensors``...)
and resumes from one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Trainer

from ..errors import RPGManifestMismatchError
from ..format.files import CONFIG_NAME, WEIGHTS_NAME
from ..format.manifest import Layout
from ..format.metadata import binding_digest, read_metadata
from .checkpoint_reading import check_weights_file, load_tensors
from .config import RPGConfig
from .model import RPGModel

TRAINING_ARGS_NAME = "training_args.bin"  # the name transformers' Trainer uses


def is_rpg_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds an hf_rpg checkpoint."""
    return (Path(directory) / CONFIG_NAME).is_file() and (Path(directory) / WEIGHTS_NAME).is_file()


def load_weights_into(model: RPGModel, directory: str | Path) -> None:
    """Load the rings, parameters and buffers of a checkpoint into an existing ``model``.

    The same checks as ``RPGModel.from_pretrained``: the generator version, the weights
    file's size and SHA-256, the binding between the two files, and the seed and mode
    against the model's; the checkpoint's manifest must equal the model's layout (same
    targets, offsets, gains, rings). Otherwise an ``RPGError`` names the first difference
    and nothing is loaded.
    """
    directory = Path(directory)
    meta = read_metadata(directory / CONFIG_NAME)
    check_weights_file(directory / WEIGHTS_NAME, meta)
    saved_config = RPGConfig.from_dict(meta["config"])
    for field in ("seed", "mode"):
        saved_value, value = getattr(saved_config, field), getattr(model.rpg_config, field)
        if saved_value != value:
            raise RPGManifestMismatchError(
                f"{directory}: the checkpoint was saved with {field}={saved_value!r}, the model has {field}={value!r}"
            )
    saved = Layout.from_dict(meta["manifest"])
    if saved.rings != model.layout.rings:
        raise RPGManifestMismatchError(
            f"{directory}: rings {list(saved.rings.values())} differ from the model's "
            f"{list(model.layout.rings.values())}"
        )
    for saved_target, target in zip(saved.targets, model.layout.targets, strict=False):
        if saved_target != target:
            raise RPGManifestMismatchError(
                f"{directory}: manifest target {saved_target.to_dict()} differs from the model's {target.to_dict()}"
            )
    if len(saved.targets) != len(model.layout.targets):
        raise RPGManifestMismatchError(
            f"{directory}: the manifest has {len(saved.targets)} targets, the model {len(model.layout.targets)}"
        )
    load_tensors(model, directory / WEIGHTS_NAME, binding=binding_digest(meta), ring_storage=meta.get("ring_storage"))


class RPGTrainer(Trainer):
    """A ``transformers.Trainer`` whose checkpoints are compact hf_rpg checkpoints.

    Use it exactly like ``Trainer``. For an ``RPGModel``, ``save_model`` and every
    checkpoint write ``RPGModel.save_pretrained`` files (plus Trainer's optimizer,
    scheduler and RNG states), ``resume_from_checkpoint`` and ``load_best_model_at_end``
    read them back, and resumed training continues exactly. Other models behave as with
    ``Trainer``.
    """

    def _rpg_model(self, model: torch.nn.Module | None = None) -> RPGModel | None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        return unwrapped if isinstance(unwrapped, RPGModel) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._rpg_model()
        if model is None:
            super()._save(output_dir, state_dict=state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=True)
        tokenizer = self.processing_class
        if tokenizer is None and getattr(self.data_collator, "tokenizer", None) is not None:
            tokenizer = self.data_collator.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        rpg = self._rpg_model(model)
        if rpg is not None and is_rpg_checkpoint(resume_from_checkpoint):
            load_weights_into(rpg, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        rpg = self._rpg_model()
        best = self.state.best_model_checkpoint
        if rpg is not None and best is not None and is_rpg_checkpoint(best):
            load_weights_into(rpg, best)
            return
        super()._load_best_model()


__all__ = ["RPGTrainer", "is_rpg_checkpoint", "load_weights_into"]
