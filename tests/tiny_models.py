"""Tiny ProtoSeg configs for tests, in the manner of transformers' ModelTester."""

from __future__ import annotations

from transformers import ResNetConfig, SegformerConfig, SwinConfig

from modeling_protoseg import ProtoSegConfig, ProtoSegEfficientNetLiteConfig, ProtoSegLinearHeadConfig


def tiny_segformer_encoder_config(**overrides) -> SegformerConfig:
    values = dict(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    values.update(overrides)
    return SegformerConfig(**values)


def tiny_swin_encoder_config() -> SwinConfig:
    return SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2, image_size=32)


def tiny_resnet_encoder_config() -> ResNetConfig:
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])


def tiny_efficientnet_lite_encoder_config() -> ProtoSegEfficientNetLiteConfig:
    """Lite0's layout at a quarter width and depth: 7 blocks, maps of 8 / 16 / 32 / 80 channels."""
    return ProtoSegEfficientNetLiteConfig(
        width_coefficient=0.25, depth_coefficient=0.25, expand_ratios=[1, 2, 2, 2, 2, 2, 2]
    )


def tiny_protoseg_config(num_classes: int = 3, encoder_config=None, **overrides) -> ProtoSegConfig:
    values = dict(
        encoder_config=encoder_config if encoder_config is not None else tiny_segformer_encoder_config(),
        id2label={index: f"class_{index}" for index in range(num_classes)},
        num_prototypes_per_class=4,
        decoder_hidden_size=16,
        embedding_dim=8,
        classifier_dropout_prob=0.0,
    )
    values.update(overrides)
    return ProtoSegConfig(**values)


def tiny_linear_head_config(num_classes: int = 3, encoder_config=None, **overrides) -> ProtoSegLinearHeadConfig:
    """The linear-head baseline on the tiny MiT (by default), as `tiny_protoseg_config` builds ProtoSeg."""
    values = dict(
        encoder_config=encoder_config if encoder_config is not None else tiny_segformer_encoder_config(),
        id2label={index: f"class_{index}" for index in range(num_classes)},
        decoder_hidden_size=16,
        classifier_dropout_prob=0.0,
    )
    values.update(overrides)
    return ProtoSegLinearHeadConfig(**values)
