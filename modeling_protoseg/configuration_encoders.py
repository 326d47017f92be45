"""Which encoder configs ProtoSeg models accept, and how a config argument becomes a config object.

Config side of the encoder adapter (`encoders.py` builds and runs the encoders): kept free of modeling imports so
configuration modules stay light.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, SegformerConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING, MODEL_FOR_BACKBONE_MAPPING_NAMES

from .configuration_efficientnet_lite import ProtoSegEfficientNetLiteConfig

# Backbones defined in this package: accepted even before their modeling module has registered them with
# AutoBackbone (a remote-code checkpoint builds its config before it loads the modeling files).
PACKAGE_BACKBONE_MODEL_TYPES = (ProtoSegEfficientNetLiteConfig.model_type,)


def encoder_kind(encoder_config: PretrainedConfig) -> str:
    """ "segformer" for a SegFormer (MiT) config, "backbone" for an AutoBackbone config (built into transformers or
    registered with `AutoBackbone.register`); a ValueError naming the supported types otherwise."""
    if encoder_config.model_type == "segformer":
        return "segformer"
    if (
        encoder_config.model_type in MODEL_FOR_BACKBONE_MAPPING_NAMES
        or encoder_config.model_type in PACKAGE_BACKBONE_MODEL_TYPES
        or type(encoder_config) in MODEL_FOR_BACKBONE_MAPPING  # registered backbones
    ):
        return "backbone"
    supported = ["segformer", *sorted({*MODEL_FOR_BACKBONE_MAPPING_NAMES, *PACKAGE_BACKBONE_MODEL_TYPES})]
    raise ValueError(
        f"encoder_config: unsupported encoder type {encoder_config.model_type!r}; expected a SegFormer (MiT) "
        f"config or a transformers AutoBackbone config (or one registered with AutoBackbone.register), one of: "
        f"{', '.join(supported)}"
    )


def resolve_encoder_config(encoder_config: PretrainedConfig | dict[str, Any] | None) -> PretrainedConfig:
    """The encoder config object for a config, a dict carrying its `model_type`, or None (MiT-B0); validated."""
    if encoder_config is None:
        encoder_config = SegformerConfig()
    elif isinstance(encoder_config, dict):
        encoder_config = dict(encoder_config)
        if "model_type" not in encoder_config:
            raise ValueError("encoder_config: a dict encoder config must contain its 'model_type'")
        model_type = encoder_config.pop("model_type")
        try:
            encoder_config = AutoConfig.for_model(model_type, **encoder_config)
        except ValueError as error:
            raise ValueError(f"encoder_config: unknown encoder model_type {model_type!r}") from error
    elif not isinstance(encoder_config, PretrainedConfig):
        raise ValueError(f"encoder_config: expected a PretrainedConfig or a dict, got {type(encoder_config).__name__}")
    encoder_kind(encoder_config)
    return encoder_config


__all__ = ["encoder_kind", "resolve_encoder_config"]
