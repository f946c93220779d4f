"""Target selection: defaults, PEFT matching rules, raw parameters, ties, parametrizations."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import make_bert_cls, make_bert_mlm, make_gpt2, make_resnet, make_vit, model_outputs
from torch import nn

from hf_rpg import RPGConfig, RPGModel, RPGStateError, RPGTargetError, apply_rpg


def _targets(model) -> list[str]:
    return [t.name for t in model.layout.targets]


def test_default_targets_bert_skip_head_and_norms():
    model = apply_rpg(make_bert_cls(), RPGConfig(dof=0.1))
    names = _targets(model)
    assert "bert.embeddings.word_embeddings.weight" in names
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "bert.pooler.dense.weight" in names
    assert not any("classifier" in n or "LayerNorm" in n or n.endswith(".bias") for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.classifier.weight" in trainable
    assert "base_model.bert.embeddings.LayerNorm.weight" in trainable
    assert "base_model.bert.encoder.layer.0.attention.self.query.bias" in trainable


@pytest.mark.parametrize(
    ("build", "head"),
    [(make_vit, "classifier.weight"), (make_resnet, "classifier.1.weight"), (make_bert_cls, "classifier.weight")],
)
def test_heads_stay_ordinary_parameters(build, head):
    model = apply_rpg(build(), RPGConfig(dof=0.1))
    assert head not in _targets(model)
    assert isinstance(model.base_model.get_parameter(head), nn.Parameter)


def test_resnet_convolutions_are_targeted_and_batchnorm_is_not():
    model = apply_rpg(make_resnet(), RPGConfig(dof=0.1))
    names = _targets(model)
    assert "resnet.embedder.embedder.convolution.weight" in names
    assert all("normalization" not in n for n in names)
    assert {t.kind for t in model.layout.targets} == {"conv"}


def test_regex_string_must_match_the_full_module_name():
    full = apply_rpg(make_bert_cls(), RPGConfig(target_modules=r".*\.(query|value)"))
    assert {n.rsplit(".", 2)[-2] for n in _targets(full)} == {"query", "value"}
    with pytest.raises(RPGTargetError, match="no module matched"):
        apply_rpg(make_bert_cls(), RPGConfig(target_modules="query"))  # a regex, not a suffix


def test_list_matches_exact_names_and_suffixes():
    by_suffix = apply_rpg(make_bert_cls(), RPGConfig(target_modules=["query", "value"]))
    assert len(_targets(by_suffix)) == 4
    exact = apply_rpg(
        make_bert_cls(), RPGConfig(target_modules=["bert.encoder.layer.1.attention.self.key", "pooler.dense"])
    )
    assert _targets(exact) == ["bert.encoder.layer.1.attention.self.key.weight", "bert.pooler.dense.weight"]


def test_explicit_target_modules_may_include_heads_and_exclude_wins():
    model = apply_rpg(
        make_bert_cls(),
        RPGConfig(target_modules=["classifier", "query"], exclude_modules=["layer.0.attention.self.query"]),
    )
    assert _targets(model) == ["bert.encoder.layer.1.attention.self.query.weight", "classifier.weight"]
    default = apply_rpg(make_bert_cls(), RPGConfig(exclude_modules=r".*embeddings.*"))
    assert not any("embeddings" in n for n in _targets(default))


def test_nothing_matched_is_a_clear_error():
    with pytest.raises(RPGTargetError, match=r"no module matched: target_modules=\['nonexistent'\]"):
        apply_rpg(make_bert_cls(), RPGConfig(target_modules=["nonexistent"]))


def test_raw_parameters_vit_cls_token_and_position_embeddings():
    base = make_vit()
    model = apply_rpg(base, RPGConfig(dof=0.2, target_parameters=["cls_token", "position_embeddings"]))
    names = _targets(model)
    assert "vit.embeddings.cls_token" in names and "vit.embeddings.position_embeddings" in names
    assert not isinstance(base.vit.embeddings.cls_token, nn.Parameter)
    out = model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert model.rpg_rings["default"].grad.abs().sum() > 0


def test_tied_embedding_and_lm_head_are_generated_once_bert():
    model = apply_rpg(make_bert_mlm(), RPGConfig(dof=0.2))
    entry = next(t for t in model.layout.targets if t.name == "bert.embeddings.word_embeddings.weight")
    assert entry.tied == ("cls.predictions.decoder.weight",)
    assert "cls.predictions.decoder.weight" not in _targets(model)
    base = model.base_model
    model.eval()
    with torch.no_grad():
        assert base.cls.predictions.decoder.weight is base.bert.embeddings.word_embeddings.weight
    dense = model.merge_and_unload()
    assert dense.cls.predictions.decoder.weight is dense.bert.embeddings.word_embeddings.weight
    assert dense.cls.predictions.decoder.bias is dense.cls.predictions.bias


def test_tied_gpt2_conv1d_and_lm_head():
    model = apply_rpg(make_gpt2(), RPGConfig(dof=0.2))
    kinds = {t.name: t.kind for t in model.layout.targets}
    assert kinds["transformer.h.0.attn.c_attn.weight"] == "conv1d_transposed"
    assert model.layout.targets[0].tied == ("lm_head.weight",)
    dense = model.merge_and_unload()
    assert dense.lm_head.weight is dense.transformer.wte.weight


def test_t5_four_owners_share_one_generated_weight(tmp_path):
    config = transformers.T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                   decoder_start_token_id=0, dropout_rate=0.0)  # fmt: skip
    torch.manual_seed(0)
    base = transformers.T5ForConditionalGeneration(config)
    model = apply_rpg(base, RPGConfig(dof=0.3))
    shared = next(t for t in model.layout.targets if t.name == "shared.weight")
    assert set(shared.tied) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    batch = {"input_ids": torch.randint(0, 64, (2, 6)), "labels": torch.randint(0, 64, (2, 5))}
    model(**batch).loss.backward()
    assert model.rpg_rings["default"].grad.abs().sum() > 0
    batch = {"input_ids": batch["input_ids"], "decoder_input_ids": batch["labels"]}
    expected = model_outputs(model, batch)
    model.save_pretrained(tmp_path)
    loaded = RPGModel.from_pretrained(tmp_path)
    assert torch.equal(model_outputs(loaded, batch), expected)
    dense = loaded.merge_and_unload()
    owners = [dense.shared, dense.encoder.embed_tokens, dense.decoder.embed_tokens, dense.lm_head]
    assert all(o.weight is dense.shared.weight for o in owners)
    assert torch.equal(model_outputs(dense, batch), expected)


def test_shared_bias_can_be_targeted_and_stays_shared():
    base = make_bert_mlm()
    model = apply_rpg(base, RPGConfig(dof=0.5, target_parameters=["cls.predictions.bias"], target_modules=["query"]))
    entry = next(t for t in model.layout.targets if t.name == "cls.predictions.bias")
    assert entry.tied == ("cls.predictions.decoder.bias",)
    dense = model.merge_and_unload()
    assert dense.cls.predictions.decoder.bias is dense.cls.predictions.bias


def test_weight_norm_parametrization_keeps_working(tmp_path):
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
        conv_kernel=(3, 3), conv_stride=(2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    base = transformers.Wav2Vec2ForCTC(config)
    model = apply_rpg(base, RPGConfig(dof=0.3))
    name = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    assert name in _targets(model)
    conv = base.wav2vec2.encoder.pos_conv_embed.conv
    assert isinstance(conv.parametrizations.weight.original0, nn.Parameter)  # the norm g stays trained
    audio = torch.randn(2, 400)
    out = model(audio).logits
    out.square().mean().backward()
    assert model.rpg_rings["default"].grad.abs().sum() > 0
    assert conv.parametrizations.weight.original0.grad is not None
    expected = model_outputs(model, {"input_values": audio})
    dense = model.merge_and_unload()
    assert isinstance(dense.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1, nn.Parameter)
    assert torch.equal(model_outputs(dense, {"input_values": audio}), expected)


def test_applying_twice_is_refused():
    model = apply_rpg(make_bert_cls(), RPGConfig())
    with pytest.raises(RPGStateError, match="already applied"):
        apply_rpg(model, RPGConfig())
    with pytest.raises(RPGStateError, match="already applied"):
        apply_rpg(model.base_model, RPGConfig())


def test_plain_torch_module_and_generated_weights_cannot_be_assigned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model = apply_rpg(net, RPGConfig(dof=0.5))
    assert _targets(model) == ["0.weight", "2.weight"]
    out = model(torch.randn(3, 8))
    assert out.shape == (3, 4)
    with pytest.raises(RPGStateError, match="cannot be assigned"):
        net[0].weight = torch.zeros(16, 8)
    with pytest.raises(RPGStateError, match="cannot be assigned"):
        net[0].weight = nn.Parameter(torch.zeros(16, 8))
    net[0].bias = nn.Parameter(torch.zeros(16))  # other attributes assign as usual
    assert isinstance(net[0].bias, nn.Parameter)
