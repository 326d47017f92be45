"""The encoder adapter: every encoder as "pixels -> 4 feature maps at strides 4, 8, 16, 32".

In the spirit of transformers' `load_backbone`, one place decides how an encoder config becomes a module,
which channels its maps have, how it runs and how pretrained weights load:
    SegFormer (MiT)      `SegformerModel`, its 4 hidden states
    any AutoBackbone     built-in (Swin, ResNet, ConvNeXt, ...) or registered (`ProtoSegEfficientNetLiteBackbone`),
                         with `out_features` set to its last 4 stages
The encoder module is stored as is (no wrapper), so checkpoint keys are `encoder.<the encoder's own keys>`.
"""

from __future__ import annotations

import copy
import os
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, SegformerModel
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING
from transformers.utils import logging

from .configuration_encoders import encoder_kind
from .modeling_efficientnet_lite import ProtoSegEfficientNetLiteBackbone

# This package's backbones, found by model_type rather than by config class: loaded as remote code, the
# configuration and modeling files are imported into two module folders, so the config object's class is a
# different copy from the one the modeling copy registered with AutoBackbone.
logger = logging.get_logger(__name__)

PACKAGE_BACKBONES: dict[str, type[PreTrainedModel]] = {
    ProtoSegEfficientNetLiteBackbone.config_class.model_type: ProtoSegEfficientNetLiteBackbone,
}


def _backbone_class(encoder_config: PretrainedConfig) -> type[PreTrainedModel]:
    """The AutoBackbone class of a backbone config (this package's, built in, or registered)."""
    if encoder_config.model_type in PACKAGE_BACKBONES:
        return PACKAGE_BACKBONES[encoder_config.model_type]
    try:
        return MODEL_FOR_BACKBONE_MAPPING[type(encoder_config)]
    except KeyError as error:
        raise ValueError(
            f"encoder_config: no AutoBackbone class is registered for {type(encoder_config).__name__} "
            f"(model_type {encoder_config.model_type!r}); register one with AutoBackbone.register"
        ) from error


def four_stage_backbone_config(encoder_config: PretrainedConfig) -> PretrainedConfig:
    """Copy of a backbone config whose `out_features` are its last four stages (strides 4..32)."""
    stage_names = getattr(encoder_config, "stage_names", None)
    if stage_names is None or len(stage_names) < 5:
        raise ValueError(
            f"encoder_config: a {encoder_config.model_type!r} backbone must have a stem and at least 4 stages, "
            f"got stage_names={stage_names}"
        )
    if list(getattr(encoder_config, "out_features", None) or []) == list(stage_names[-4:]):
        return encoder_config
    config = copy.deepcopy(encoder_config)
    config.out_indices = None
    config.out_features = list(stage_names[-4:])
    if hasattr(config, "_out_features"):  # keep out_indices consistent with out_features
        config.out_indices = [stage_names.index(name) for name in config.out_features]
    return config


def freeze_unused_final_norm(backbone: nn.Module) -> None:
    """SwinBackbone runs a whole SwinModel, whose final LayerNorm feeds no feature map: freeze it, so that
    it never waits for a gradient (DistributedDataParallel would fail without find_unused_parameters)."""
    final_norm = getattr(getattr(backbone, "swin", None), "layernorm", None)
    if isinstance(final_norm, nn.LayerNorm):
        final_norm.requires_grad_(False)


def build_encoder(encoder_config: PretrainedConfig) -> nn.Module:
    """A randomly initialised encoder returning 4 feature maps: `SegformerModel` or an `AutoBackbone`."""
    if encoder_kind(encoder_config) == "segformer":
        return SegformerModel(encoder_config)
    backbone = _backbone_class(encoder_config)(four_stage_backbone_config(encoder_config))
    freeze_unused_final_norm(backbone)
    return backbone


def load_pretrained_encoder(encoder_name_or_path: str) -> nn.Module:
    """An encoder as `build_encoder` makes it, with the weights of a checkpoint (Hub id or local folder).

    Reads SegFormer/MiT checkpoints (also `SegformerForSemanticSegmentation` ones: the `segformer.` prefix is
    stripped), any AutoBackbone's model or backbone checkpoint (`SwinModel`, `SwinBackbone`, ...), and folders
    written by `python -m modeling_protoseg.convert_efficientnet_lite0`.
    """
    encoder_config = AutoConfig.from_pretrained(encoder_name_or_path)
    if encoder_kind(encoder_config) == "segformer":
        return SegformerModel.from_pretrained(encoder_name_or_path)
    # The backbone class itself, not AutoBackbone.from_pretrained, which tries the network for local folders.
    backbone = _backbone_class(encoder_config).from_pretrained(
        encoder_name_or_path, config=four_stage_backbone_config(encoder_config)
    )
    freeze_unused_final_norm(backbone)
    return backbone


def pretrained_encoder_model_type(encoder_name_or_path: str) -> str:
    """ "segformer", "swin", "protoseg_efficientnet_lite", ... of a checkpoint (reads only its config)."""
    return AutoConfig.from_pretrained(encoder_name_or_path).model_type


def encoder_channels(encoder: nn.Module) -> list[int]:
    """Channel counts of the 4 feature maps an encoder from `build_encoder` returns."""
    if isinstance(encoder, SegformerModel):
        return list(encoder.config.hidden_sizes)
    return list(encoder.channels)


def encoder_feature_maps(encoder: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The 4 feature maps of an encoder from `build_encoder`, strides 4..32, each (B, C_i, H_i, W_i)."""
    if isinstance(encoder, SegformerModel):
        return tuple(encoder(pixel_values, output_hidden_states=True).hidden_states)
    return tuple(encoder(pixel_values).feature_maps)


def minimum_input_size(encoder_config: PretrainedConfig) -> int:
    """The smallest image height/width an encoder runs on.

    MiT: every stage's map must be at least as large as the kernel of its efficient-attention reduction
    (`sr_ratios`, 8 / 4 / 2 / 1 for MiT-B0..B5: 29 pixels). AutoBackbones here (Swin, ResNet, ConvNeXt,
    EfficientNet-Lite) pad: 1 pixel.
    """
    if encoder_kind(encoder_config) != "segformer":
        return 1
    stages = list(zip(encoder_config.patch_sizes, encoder_config.strides, encoder_config.sr_ratios))

    def runs(size: int) -> bool:
        for patch_size, stride, reduction in stages:
            size = (size + 2 * (patch_size // 2) - patch_size) // stride + 1  # the overlapping patch embedding
            if size < max(reduction, 1):
                return False
        return True

    size = 1
    while not runs(size):
        size += 1
    return size


ModelT = TypeVar("ModelT", bound=PreTrainedModel)


def model_from_pretrained_encoder(model_class: type[ModelT], encoder_name_or_path: str, **config_kwargs) -> ModelT:
    """A new `model_class` (whose config takes `encoder_config`) with the encoder weights of a checkpoint and
    everything else freshly initialised. `config_kwargs` go to `model_class.config_class`."""
    pretrained_encoder = load_pretrained_encoder(encoder_name_or_path)
    model = model_class(model_class.config_class(encoder_config=pretrained_encoder.config, **config_kwargs))
    model.encoder.load_state_dict(pretrained_encoder.state_dict())
    return model


# `from_pretrained` keyword arguments that locate a checkpoint's config on the Hub or on disk.
_CONFIG_LOOKUP_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
# `from_pretrained` keyword arguments that an encoder checkpoint cannot honour: anything else is a config field.
_LOADING_ONLY_KWARGS = (
    *_CONFIG_LOOKUP_KWARGS,
    "config",
    "state_dict",
    "ignore_mismatched_sizes",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "quantization_config",
    "use_safetensors",
    "weights_only",
    "low_cpu_mem_usage",
    "output_loading_info",
    "from_tf",
    "from_flax",
    "key_mapping",
    "tp_plan",
    "variant",
    "gguf_file",
)


def checkpoint_model_type(name_or_path: str | os.PathLike, **lookup_kwargs: Any) -> str | None:
    """The `model_type` in a checkpoint's `config.json`, None when it cannot be read (left to `from_pretrained`)."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, **lookup_kwargs)
    except (OSError, ValueError):
        return None
    return config_dict.get("model_type")


def is_encoder_checkpoint_type(model_type: str | None) -> bool:
    """True when a checkpoint of this `model_type` is an encoder ProtoSeg can be built around (MiT, a backbone)."""
    if model_type is None:
        return False
    try:
        encoder_kind(AutoConfig.for_model(model_type))
    except ValueError:
        return False
    return True


class ProtoSegEncoderCheckpointMixin:
    """`from_pretrained(<encoder checkpoint>)` builds the model around that encoder (as `from_pretrained_encoder`)
    instead of loading its weights into a random encoder, and logs one line saying so."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if pretrained_model_name_or_path is None or kwargs.get("config") is not None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        lookup_kwargs = {key: kwargs[key] for key in _CONFIG_LOOKUP_KWARGS if kwargs.get(key) is not None}
        model_type = checkpoint_model_type(pretrained_model_name_or_path, **lookup_kwargs)
        if model_type == cls.config_class.model_type or not is_encoder_checkpoint_type(model_type):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

        unsupported = sorted(key for key in kwargs if key in _LOADING_ONLY_KWARGS and key not in lookup_kwargs)
        if model_args or unsupported:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a {model_type!r} encoder checkpoint, not a {cls.__name__} one; "
                f"build a new model around it with {cls.__name__}.from_pretrained_encoder(path, id2label=..., "
                f"<config fields>), which does not take {unsupported or 'positional arguments'}"
            )
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        kwargs.pop("trust_remote_code", None)
        for key in lookup_kwargs:
            kwargs.pop(key)
        logger.warning(
            f"{pretrained_model_name_or_path} is a {model_type!r} checkpoint: building a new {cls.__name__} around "
            f"its encoder (decoder, head and prototypes freshly initialised), as {cls.__name__}.from_pretrained_encoder"
        )
        model = model_from_pretrained_encoder(cls, str(pretrained_model_name_or_path), **kwargs)
        if dtype is not None and dtype != "auto":
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        return model


__all__ = [
    "ProtoSegEncoderCheckpointMixin",
    "build_encoder",
    "encoder_channels",
    "encoder_feature_maps",
    "four_stage_backbone_config",
    "freeze_unused_final_norm",
    "load_pretrained_encoder",
    "minimum_input_size",
    "model_from_pretrained_encoder",
    "pretrained_encoder_model_type",
]
