"""Delta mode's default targets: the attention's query and value projections, per architecture,
as PEFT's LoRA defaults; and the ``target_modules`` keywords ``"all-linear"`` and ``"all"``."""

from __future__ import annotations

from torch import nn

# Delta mode's default targets per architecture (``config.model_type``), as PEFT's LoRA
# defaults: the attention's query and value projections. Measured in benchmarks/results/quality.md:
# at the same ring size these beat every linear layer plus the embeddings. Architectures
# not listed (convolutional networks, unknown models) target every layer hf_rpg generates.
DELTA_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "electra", "albert", "ernie", "megatron-bert"),
        ("query", "value"),
    ),
    **dict.fromkeys(("vit", "deit", "vit_mae", "dinov2", "beit", "data2vec-vision"), ("q_proj", "v_proj")),
    "swin": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "deberta": ("in_proj",),
    "deberta-v2": ("query_proj", "value_proj"),
    **dict.fromkeys(("t5", "mt5", "umt5", "mpnet"), ("q", "v")),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), ("c_attn",)),
    **dict.fromkeys(("gpt_neox", "bloom", "falcon"), ("query_key_value",)),
    "mpt": ("Wqkv",),
    "phi3": ("qkv_proj",),
    **dict.fromkeys(
        (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
            "gemma3_text", "phi", "opt", "gptj", "stablelm", "starcoder2", "olmo", "olmo2", "cohere", "granite",
            "bart", "mbart", "marian", "pegasus", "whisper", "wav2vec2", "hubert", "siglip", "clip", "smollm3",
        ),
        ("q_proj", "v_proj"),
    ),
}  # fmt: skip
# Names tried, in order, for a transformers model whose type has no entry (or whose modules
# are named otherwise than its entry says, as transformers renames them across versions).
QUERY_VALUE_NAMES = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))
# target_modules keywords: PEFT's "all-linear", and hf_rpg's "all" (every layer it generates).
ALL_LINEAR = "all-linear"
ALL_LAYERS = "all"


def default_delta_targets(model: nn.Module) -> list[str] | None:
    """Delta mode's default ``target_modules`` for ``model``: its architecture's entry in
    ``DELTA_DEFAULT_TARGETS``, else the first of ``QUERY_VALUE_NAMES`` it has, for a
    transformers model; None (every layer hf_rpg generates) for any other model, or a
    transformers model without such modules (convolutional networks)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model_type, str):
        return None
    names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    entry = DELTA_DEFAULT_TARGETS.get(model_type)
    for candidate in ((entry,) if entry else ()) + QUERY_VALUE_NAMES:
        if all(t in names for t in candidate):
            return list(candidate)
    return None
