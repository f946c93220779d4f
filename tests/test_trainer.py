"""transformers Trainer: an RPGModel trains as any model; RPGTrainer checkpoints are compact
hf_rpg checkpoints and resuming from one continues exactly."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from conftest import make_bert_cls, model_outputs
from safetensors import safe_open
from transformers import Trainer, TrainingArguments

from hf_rpg import RPGConfig, RPGModel, RPGTrainer, apply_rpg

STEPS = 6


def _dataset(n: int = 48) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 99, (n, 10), generator=g)
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "labels": (ids[:, 0] % 3).tolist(),
            "unused_column": ["x"] * n,  # Trainer drops columns the forward signature lacks
        }
    )


def _args(tmp_path, name: str, **overrides) -> TrainingArguments:
    options = {
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "max_steps": STEPS,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "save_steps": 3,
        "logging_steps": 1,
        "report_to": [],
        "seed": 0,
        "data_seed": 0,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    options.update(overrides)
    return TrainingArguments(**options)


def _model(mode: str = "replace") -> RPGModel:
    torch.manual_seed(0)
    return apply_rpg(make_bert_cls(), RPGConfig(dof=300, mode=mode))


def test_plain_trainer_trains_an_rpg_model_without_dense_weights(tmp_path):
    model = _model("delta")
    trainer = Trainer(model=model, args=_args(tmp_path, "plain"), train_dataset=_dataset())
    result = trainer.train()
    assert result.global_step == STEPS
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    with safe_open(tmp_path / "plain" / f"checkpoint-{STEPS}" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    # the state dict of a delta model holds the ring and the trained head only
    assert keys == {"rpg_rings.default", "base_model.classifier.weight", "base_model.classifier.bias"}


@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_rpg_trainer_checkpoints_are_compact_hf_rpg_checkpoints(tmp_path, mode):
    model = _model(mode)
    trainer = RPGTrainer(model=model, args=_args(tmp_path, mode), train_dataset=_dataset())
    trainer.train()
    checkpoint = tmp_path / mode / "checkpoint-3"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"rpg_config.json", "rpg_model.safetensors", "config.json", "optimizer.pt"} <= files
    assert "model.safetensors" not in files
    trainer.save_model(str(tmp_path / "final"))
    torch.manual_seed(0)  # delta mode: the same base model as _model's, which the checkpoint does not store
    base = make_bert_cls() if mode == "delta" else None
    batch = {"input_ids": torch.randint(0, 99, (3, 10))}
    untrained = model_outputs(_model(mode), batch)
    loaded = RPGModel.from_pretrained(tmp_path / "final", base_model=base)
    assert torch.equal(model_outputs(loaded, batch), model_outputs(model, batch))
    assert not torch.allclose(model_outputs(model, batch), untrained)  # the comparison is of trained outputs
    assert torch.equal(loaded.rpg_rings["default"], model.rpg_rings["default"])
    size = (tmp_path / "final" / "rpg_model.safetensors").stat().st_size
    assert size < 4 * model.dof_report().trainable + 64 * 1024


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    uninterrupted = _model()
    RPGTrainer(model=uninterrupted, args=_args(tmp_path, "full"), train_dataset=_dataset()).train()

    # a second run, interrupted after the checkpoint at step 3, resumes from it
    resumed = _model()
    with torch.no_grad():
        resumed.rpg_rings["default"].add_(1.0)  # whatever it holds is overwritten by the checkpoint
    trainer = RPGTrainer(model=resumed, args=_args(tmp_path, "resumed"), train_dataset=_dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert trainer.state.global_step == STEPS
    torch.testing.assert_close(resumed.rpg_rings["default"], uninterrupted.rpg_rings["default"], rtol=0, atol=0)
    for name, param in uninterrupted.base_model.named_parameters():
        torch.testing.assert_close(resumed.base_model.get_parameter(name), param, rtol=0, atol=0)


def test_load_best_model_at_end(tmp_path):
    # The best checkpoint must not be the last step, or a _load_best_model that does nothing
    # would pass. The evaluation rows are the first 16 training rows, whose loss falls as
    # training goes on; with greater_is_better=True the best is therefore the step-3 checkpoint.
    model = _model()
    args = _args(
        tmp_path,
        "best",
        eval_strategy="steps",
        eval_steps=3,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
    )
    trainer = RPGTrainer(model=model, args=args, train_dataset=_dataset(), eval_dataset=_dataset(16))
    trainer.train()
    evals = {log["step"]: log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log}
    assert set(evals) == {3, STEPS} and evals[3] > evals[STEPS]
    best = trainer.state.best_model_checkpoint
    assert best is not None and Path(best).name == "checkpoint-3"
    at_best = RPGModel.from_pretrained(best)
    at_end = RPGModel.from_pretrained(tmp_path / "best" / f"checkpoint-{STEPS}")
    assert not torch.equal(at_best.rpg_rings["default"], at_end.rpg_rings["default"])  # training went on
    torch.testing.assert_close(model.rpg_rings["default"], at_best.rpg_rings["default"], rtol=0, atol=0)
    batch = {"input_ids": torch.randint(0, 99, (3, 10))}
    assert torch.equal(model_outputs(model, batch), model_outputs(at_best, batch))
