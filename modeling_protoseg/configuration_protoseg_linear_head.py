"""Configuration of the parametric baseline: ProtoSeg's encoder and decoder with SegFormer's linear classifier."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .transformers_requirement import MINIMUM_TRANSFORMERS_VERSION  # noqa: F401 - first: checks the version
from .configuration_encoders import InputNormalization, check_model_input_normalization, encoder_kind
from .configuration_encoders import input_normalization, resolve_encoder_config
from .remote_code_encoders import RemoteCodeEncoderConfigMixin


class ProtoSegLinearHeadConfig(RemoteCodeEncoderConfigMixin, PretrainedConfig):
    r"""
    Configuration of [`ProtoSegLinearHeadForSemanticSegmentation`]: the ProtoSeg encoder and decoder with
    SegFormer's linear classifier, the parametric baseline on any encoder.

    Arguments:
        encoder_config (`PretrainedConfig` or `dict`, *optional*): as in `ProtoSegConfig` (default MiT-B0).
        decoder_hidden_size (`int`): width of the all-MLP decoder that fuses the four feature maps.
        classifier_dropout_prob (`float`): dropout before the classifier, as SegFormer's.
        semantic_loss_ignore_index (`int`): label value of pixels that do not count in the loss.
        initializer_range (`float`): std of the normal init of the decoder and classifier weights.
        image_mean, image_std (`list[float]`, *optional*): the input normalisation, as in `ProtoSegConfig` (left
            unset: the encoder's own, else ImageNet's).

    `num_labels=1` (one entry in `id2label`) is SegFormer's binary case: one logit per pixel, a binary
    cross-entropy loss on 0/1 labels.
    """

    model_type = "protoseg_linear_head"
    sub_configs = {"encoder_config": AutoConfig}
    # `Trainer.evaluate` / `predict` hand `compute_metrics` the logits alone.
    keys_to_ignore_at_inference = ["hidden_states", "attentions"]

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        decoder_hidden_size: int = 256,
        classifier_dropout_prob: float = 0.1,
        semantic_loss_ignore_index: int = 255,
        initializer_range: float = 0.02,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.encoder_config = resolve_encoder_config(encoder_config)
        if image_mean is None and image_std is None:  # the encoder's own, else ImageNet's
            image_mean, image_std = input_normalization(self.encoder_config)
        self.image_mean = list(image_mean) if isinstance(image_mean, tuple) else image_mean
        self.image_std = list(image_std) if isinstance(image_std, tuple) else image_std
        self.decoder_hidden_size = decoder_hidden_size
        self.classifier_dropout_prob = classifier_dropout_prob
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        if self.id2label is not None and not self.label2id:  # transformers 5 leaves it None
            self.label2id = {label: index for index, label in self.id2label.items()}
        check_model_input_normalization(self)
        if self.decoder_hidden_size < 1:
            raise ValueError(f"decoder_hidden_size must be >= 1, got {self.decoder_hidden_size!r}")
        label_values = max(self.num_labels, 2)  # one class (binary) still takes labels 0 and 1
        if 0 <= self.semantic_loss_ignore_index < label_values:
            raise ValueError(
                f"semantic_loss_ignore_index ({self.semantic_loss_ignore_index}) collides with a label value "
                f"(num_labels = {self.num_labels}); use a value outside [0, {label_values})"
            )

    @property
    def encoder_kind(self) -> str:
        """ "segformer" for MiT encoders, "backbone" for AutoBackbone encoders."""
        return encoder_kind(self.encoder_config)

    @property
    def input_normalization(self) -> InputNormalization:
        """(mean, std) of the `(x - mean) / std` input normalisation, from `image_mean` / `image_std`."""
        return input_normalization(self)


__all__ = ["ProtoSegLinearHeadConfig"]
