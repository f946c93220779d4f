"""The one collection of tiny models of the tests and fixtures, built offline from small configs.

The architecture matrix (``ARCHITECTURES``): tiny configs of the models people fine-tune.

Each entry builds a real transformers model from a small config (random weights, seeded by
the caller) and a batch for it. The decoder LMs carry the quirks that break adapters:
learned positional embeddings with their own forward (OPT, BART), scaled embeddings
(Gemma3, BART), tied and untied LM heads, GQA, rotary embeddings, T5's shared embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

VOCAB = 99


@dataclass(frozen=True)
class Architecture:
    """A tiny model factory, its batch builder and what kind of task it is."""

    name: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[int], dict[str, torch.Tensor]]
    kind: str  # causal, seq2seq, classification, image, audio
    auto_class: type


def _ids(shape: tuple[int, ...], seed: int, low: int = 3) -> torch.Tensor:
    return torch.randint(low, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _causal_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = _ids((2, 10), seed)
    return {"input_ids": ids, "labels": ids}


def _seq2seq_batch(seed: int) -> dict[str, torch.Tensor]:
    return {"input_ids": _ids((2, 10), seed), "labels": _ids((2, 6), seed + 1)}


def _classification_batch(seed: int) -> dict[str, torch.Tensor]:
    return {"input_ids": _ids((2, 10), seed), "labels": _ids((2,), seed + 1, low=0) % 3}


def _image_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "labels": torch.randint(0, 3, (2,), generator=g)}


def _audio_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_values": torch.randn(2, 1600, generator=g), "labels": torch.randint(0, 3, (2,), generator=g)}


_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def llama() -> torch.nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_DECODER, tie_word_embeddings=False))


def mistral() -> torch.nn.Module:
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(**_DECODER, sliding_window=None, tie_word_embeddings=False)
    )


def qwen2() -> torch.nn.Module:
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_DECODER, tie_word_embeddings=True))


def _gemma3(tied: bool) -> torch.nn.Module:
    config = transformers.Gemma3TextConfig(
        **_DECODER, head_dim=8, sliding_window=8, query_pre_attn_scalar=8, tie_word_embeddings=tied
    )
    return transformers.Gemma3ForCausalLM(config)


def gemma3_tied() -> torch.nn.Module:
    return _gemma3(True)


def gemma3_untied() -> torch.nn.Module:
    return _gemma3(False)


def opt() -> torch.nn.Module:
    config = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.OPTForCausalLM(config)


def gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(config)


def gpt_neox() -> torch.nn.Module:
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return transformers.GPTNeoXForCausalLM(config)


def bart() -> torch.nn.Module:
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        scale_embedding=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return transformers.BartForConditionalGeneration(config)


def t5() -> torch.nn.Module:
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(config)


def _bert_like(config_class: type, model_class: type, **extra) -> torch.nn.Module:
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
        **extra,
    )
    return model_class(config)


def bert() -> torch.nn.Module:
    return _bert_like(transformers.BertConfig, transformers.BertForSequenceClassification)


def roberta() -> torch.nn.Module:
    return _bert_like(transformers.RobertaConfig, transformers.RobertaForSequenceClassification, pad_token_id=1)


def vit() -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.ViTForImageClassification(config)


def swin() -> torch.nn.Module:
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return transformers.SwinForImageClassification(config)


def convnext() -> torch.nn.Module:
    config = transformers.ConvNextConfig(
        num_channels=3,
        num_stages=2,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=3,
        image_size=32,
        drop_path_rate=0.0,
    )
    return transformers.ConvNextForImageClassification(config)


def wav2vec2() -> torch.nn.Module:
    config = transformers.Wav2Vec2Config(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_labels=3,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        classifier_proj_size=16,
    )
    return transformers.Wav2Vec2ForSequenceClassification(config)


_T = transformers
ARCHITECTURES = {
    a.name: a
    for a in [
        Architecture("llama", llama, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("mistral", mistral, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("qwen2", qwen2, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("gemma3_tied", gemma3_tied, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("gemma3_untied", gemma3_untied, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("opt", opt, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("gpt2", gpt2, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("gpt_neox", gpt_neox, _causal_batch, "causal", _T.AutoModelForCausalLM),
        Architecture("bart", bart, _seq2seq_batch, "seq2seq", _T.AutoModelForSeq2SeqLM),
        Architecture("t5", t5, _seq2seq_batch, "seq2seq", _T.AutoModelForSeq2SeqLM),
        Architecture("bert", bert, _classification_batch, "classification", _T.AutoModelForSequenceClassification),
        Architecture(
            "roberta", roberta, _classification_batch, "classification", _T.AutoModelForSequenceClassification
        ),
        Architecture("vit", vit, _image_batch, "image", _T.AutoModelForImageClassification),
        Architecture("swin", swin, _image_batch, "image", _T.AutoModelForImageClassification),
        Architecture("convnext", convnext, _image_batch, "image", _T.AutoModelForImageClassification),
        Architecture("wav2vec2", wav2vec2, _audio_batch, "audio", _T.AutoModelForAudioClassification),
    ]
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model ``name`` with weights drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return ARCHITECTURES[name].build().eval()


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits on ``batch`` (labels passed too, so seq2seq models get decoder inputs)."""
    return model(**batch).logits


# ---------------------------------------------------------------------------- the tests' workhorses
# Small BERT / GPT-2 / ViT / ResNet models most tests use (``MODELS``, also through conftest).


@dataclass
class TinyModel:
    """A tiny model factory with a batch builder and its Auto class for dense reloads."""

    name: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[int], dict[str, torch.Tensor]]
    auto_class: type


def _token_ids(vocab: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _bert_config(**overrides):
    return transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **overrides,
    )


def make_vit() -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.ViTForImageClassification(config)


def make_resnet() -> torch.nn.Module:
    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=5,
    )
    return transformers.ResNetForImageClassification(config)


def make_bert_cls() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(_bert_config(num_labels=3))


def make_bert_mlm() -> torch.nn.Module:
    return transformers.BertForMaskedLM(_bert_config())


def make_gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=99,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def _image_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(4, 3, 16, 16, generator=g), "labels": torch.randint(0, 5, (4,), generator=g)}


def _text_cls_batch(seed: int) -> dict[str, torch.Tensor]:
    return {"input_ids": _token_ids(99, (4, 12), seed), "labels": _token_ids(3, (4,), seed + 1)}


def _lm_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = _token_ids(99, (4, 12), seed)
    return {"input_ids": ids, "labels": ids}


MODELS = {
    "vit": TinyModel("vit", make_vit, _image_batch, transformers.AutoModelForImageClassification),
    "resnet": TinyModel("resnet", make_resnet, _image_batch, transformers.AutoModelForImageClassification),
    "bert_cls": TinyModel("bert_cls", make_bert_cls, _text_cls_batch, transformers.AutoModelForSequenceClassification),
    "bert_mlm": TinyModel("bert_mlm", make_bert_mlm, _lm_batch, transformers.AutoModelForMaskedLM),
    "gpt2": TinyModel("gpt2", make_gpt2, _lm_batch, transformers.AutoModelForCausalLM),
}


# ---------------------------------------------------------------------------- compatibility fixtures
# The models the committed checkpoints of tests/fixtures/compat_v1 were made from
# (tests/fixtures/make_compat_fixture.py); their configs must never change.


def compat_bert_mlm() -> torch.nn.Module:
    """BERT with tied word embeddings and decoder, two rings (local RPG)."""
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForMaskedLM(config)


def compat_resnet() -> torch.nn.Module:
    """A ResNet with BatchNorm buffers that training updates."""
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4
    )
    return transformers.ResNetForImageClassification(config)


def compat_bert_cls() -> torch.nn.Module:
    config = compat_bert_mlm().config
    config.num_labels = 3
    return transformers.BertForSequenceClassification(config)
