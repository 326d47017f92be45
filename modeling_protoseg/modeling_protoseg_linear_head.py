"""The parametric baseline on any encoder: ProtoSeg's encoder and decoder with SegFormer's linear classifier.

    encoder (the same adapter as ProtoSeg)   -> 4 feature maps at strides 4, 8, 16, 32
    ProtoSegDecodeHead (SegFormer all-MLP)   -> (B, decoder_hidden_size, H/4, W/4), dropout included
    1x1 convolution to C classes             -> logits (B, C, H/4, W/4)
Loss: cross-entropy of the logits upsampled to label size, ignoring `semantic_loss_ignore_index`; with
`num_labels=1`, SegFormer's binary cross-entropy (labels 0/1). On an MiT encoder this is
`SegformerForSemanticSegmentation`; here it compares heads alone on any encoder (e.g. the
pretrained EfficientNet-Lite0 of `convert_efficientnet_lite0`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from .batch_norm_statistics import BatchNormStatisticsGuard
from .configuration_protoseg_linear_head import ProtoSegLinearHeadConfig
from .decode_head import ProtoSegDecodeHead
from .encoders import (
    ProtoSegEncoderAttentionMixin,
    ProtoSegEncoderCheckpointMixin,
    build_encoder,
    encoder_channels,
    encoder_outputs,
    hidden_state_indices,
    model_from_pretrained_encoder,
    select_hidden_states,
)
from .losses import pixel_binary_cross_entropy, pixel_cross_entropy
from .pipeline_registration import register_for_segmentation_pipeline


class ProtoSegLinearHeadPreTrainedModel(ProtoSegEncoderCheckpointMixin, ProtoSegEncoderAttentionMixin, PreTrainedModel):
    config: ProtoSegLinearHeadConfig
    config_class = ProtoSegLinearHeadConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True


class ProtoSegLinearHeadForSemanticSegmentation(ProtoSegLinearHeadPreTrainedModel):
    """Encoder + all-MLP decoder + a learned 1x1 classifier: the parametric baseline on any encoder."""

    def __init__(self, config: ProtoSegLinearHeadConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config.encoder_config)
        self.decode_head = ProtoSegDecodeHead(
            in_channels=encoder_channels(self.encoder),
            hidden_size=config.decoder_hidden_size,
            dropout_prob=config.classifier_dropout_prob,
        )
        self.classifier = nn.Conv2d(config.decoder_hidden_size, config.num_labels, kernel_size=1)
        self.post_init()

    @classmethod
    def from_pretrained_encoder(
        cls, encoder_name_or_path: str, **config_kwargs
    ) -> "ProtoSegLinearHeadForSemanticSegmentation":
        """A new model with the encoder weights of a checkpoint (Hub id or local folder) and a fresh decoder and
        classifier, as `ProtoSegForSemanticSegmentation.from_pretrained_encoder`. `config_kwargs` go to
        `ProtoSegLinearHeadConfig` (e.g. `id2label`)."""
        return model_from_pretrained_encoder(cls, encoder_name_or_path, **config_kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        Arguments:
            pixel_values: (B, 3, H, W) normalised images.
            labels: (B, H, W) class indices, `config.semantic_loss_ignore_index` for ignored pixels; with
                `num_labels=1`, 0 or 1 (SegFormer's binary case).
            output_hidden_states: True for the encoder's 4 maps, or the indices of the maps to return (a tuple of
                4 with None in place of the others); None reads `config.output_hidden_states`.
            output_attentions: the encoder's attention maps (MiT, Swin; under `attn_implementation="eager"`),
                None for convolutional encoders; None reads `config.output_attentions`.
        Returns:
            `SemanticSegmenterOutput` with `logits` (B, C, H/4, W/4), `loss` when labels are given, and the
            encoder's 4 feature maps as `hidden_states` and its `attentions` when asked.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None and tuple(labels.shape) != (pixel_values.shape[0], *pixel_values.shape[2:]):
            raise ValueError(
                f"labels must have shape (batch, height, width) = "
                f"{(pixel_values.shape[0], *pixel_values.shape[2:])} to match pixel_values, got {tuple(labels.shape)}"
            )
        binary = self.config.num_labels == 1
        if labels is not None and binary:
            self._check_binary_labels(labels)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        selected_maps = hidden_state_indices(output_hidden_states)  # a bad request fails before anything runs
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        batch_norm_guard = BatchNormStatisticsGuard(self) if self.training else None  # no NaN into running stats
        feature_maps, attentions = encoder_outputs(self.encoder, pixel_values, output_attentions=output_attentions)
        decoded = self.decode_head(list(feature_maps))  # (B, hidden, H/4, W/4), dropout applied
        if batch_norm_guard is not None:
            batch_norm_guard.restore_if_non_finite()
        logits = self.classifier(decoded)  # (B, C, H/4, W/4)
        loss = None
        if labels is not None:
            loss_function = pixel_binary_cross_entropy if binary else pixel_cross_entropy
            loss = loss_function(logits, labels, self.config.semantic_loss_ignore_index)
        output = SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=select_hidden_states(feature_maps, selected_maps),
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()

    def _check_binary_labels(self, labels: torch.Tensor) -> None:
        """With one class the labels are targets of a binary loss: 1 (the class), 0, or ignored (the ignore index,
        or negative, as SegFormer); anything else is a ValueError rather than a silently wrong target."""
        ignore_index = self.config.semantic_loss_ignore_index
        invalid = (labels > 1) & (labels != ignore_index)
        if invalid.any():  # one host synchronisation per step, for a clear error
            bad_values = torch.unique(labels[invalid]).tolist()[:10]
            raise ValueError(
                f"with num_labels=1 (a binary loss, as SegFormer) labels must be 0, 1 or the ignore index "
                f"{ignore_index}; got values {bad_values}"
            )


# pipeline("image-segmentation") checks class names against its own table (installed package and remote code)
register_for_segmentation_pipeline(
    ProtoSegLinearHeadForSemanticSegmentation.config_class.model_type, ProtoSegLinearHeadForSemanticSegmentation.__name__
)

__all__ = ["ProtoSegLinearHeadForSemanticSegmentation", "ProtoSegLinearHeadPreTrainedModel"]
