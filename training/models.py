"""The model a run trains: ProtoSeg, or the linear-classifier baseline, on the chosen encoder."""

from __future__ import annotations

import dataclasses

from torch import nn
from transformers import SegformerConfig

from training.config import TrainingConfig
from training.presets import EncoderSpec


def segmentation_model_of(model: nn.Module) -> nn.Module:
    """The segmentation model a training wrapper holds (its `segmentation_model` attribute, e.g. pixel contrast's
    `PixelContrastTrainingModel`); any other model as it is. The loop unwraps plug-ins through this, without
    importing them."""
    return getattr(model, "segmentation_model", model)


def build_model(config: TrainingConfig, encoder: EncoderSpec, id2label: dict[int, str]) -> nn.Module:
    """ProtoSeg, or the linear-classifier baseline, on the chosen encoder. ProtoSeg takes every method knob of
    `config.method` (the `ProtoSegConfig` parameters) as it is."""
    label2id = {name: index for index, name in id2label.items()}
    if config.model.head == "linear":
        return build_linear_baseline(config, encoder, id2label, label2id)

    from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation

    config_kwargs = dict(
        **dataclasses.asdict(config.method),
        id2label=id2label,
        label2id=label2id,
        semantic_loss_ignore_index=config.data.ignore_index,
    )
    if encoder.is_pretrained:
        return ProtoSegForSemanticSegmentation.from_pretrained_encoder(encoder.pretrained_name_or_path, **config_kwargs)
    return ProtoSegForSemanticSegmentation(ProtoSegConfig(encoder_config=encoder.config, **config_kwargs))


def encoder_model_type(encoder: EncoderSpec) -> str:
    """ "segformer", "swin", "protoseg_efficientnet_lite", ... of a named or pretrained encoder."""
    if not encoder.is_pretrained:
        return encoder.config.model_type
    from modeling_protoseg.encoders import pretrained_encoder_model_type

    return pretrained_encoder_model_type(encoder.pretrained_name_or_path)


def build_linear_baseline(
    config: TrainingConfig, encoder: EncoderSpec, id2label: dict[int, str], label2id: dict[str, int]
) -> nn.Module:
    """The same encoder and all-MLP decoder as ProtoSeg with a 1x1-conv classifier: `SegformerForSemanticSegmentation`
    on MiT encoders (a plain transformers model), `ProtoSegLinearHeadForSemanticSegmentation` on every other one."""
    head_kwargs = dict(id2label=id2label, label2id=label2id, semantic_loss_ignore_index=config.data.ignore_index)
    if "decoder_hidden_size" in config.chosen or not encoder.is_pretrained:  # else: the checkpoint's own width
        head_kwargs["decoder_hidden_size"] = config.method.decoder_hidden_size
    if encoder_model_type(encoder) == "segformer":
        from transformers import SegformerForSemanticSegmentation

        if encoder.is_pretrained:
            return SegformerForSemanticSegmentation.from_pretrained(
                encoder.pretrained_name_or_path, ignore_mismatched_sizes=True, **head_kwargs
            )
        return SegformerForSemanticSegmentation(SegformerConfig(**{**encoder.config.to_dict(), **head_kwargs}))

    from modeling_protoseg import ProtoSegLinearHeadConfig, ProtoSegLinearHeadForSemanticSegmentation

    if encoder.is_pretrained:
        return ProtoSegLinearHeadForSemanticSegmentation.from_pretrained_encoder(
            encoder.pretrained_name_or_path, **head_kwargs
        )
    return ProtoSegLinearHeadForSemanticSegmentation(ProtoSegLinearHeadConfig(encoder_config=encoder.config, **head_kwargs))
