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

logger = logging.get_logger(__name__)


def _backbone_class(encoder_config: PretrainedConfig) -> type[PreTrainedModel]:
    """The AutoBackbone class of a backbone config: built into transformers or registered (this package's
    EfficientNet-Lite registers itself; as remote code, `remote_code_encoders.load_encoder_code` registers it)."""
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


def encoder_class(encoder_config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class `build_encoder` instantiates for an encoder config (nothing is built): `SegformerModel` or the
    config's AutoBackbone class."""
    if encoder_kind(encoder_config) == "segformer":
        return SegformerModel
    return _backbone_class(encoder_config)


def encoder_has_attentions(encoder: nn.Module | type[nn.Module]) -> bool:
    """True when an encoder (or encoder class) computes attention maps it can return: MiT, Swin. Convolutional
    backbones (ResNet, ConvNeXt, EfficientNet-Lite) say `has_attentions = False`, transformers' backbone flag."""
    return bool(getattr(encoder, "has_attentions", True))


def build_encoder(encoder_config: PretrainedConfig) -> nn.Module:
    """A randomly initialised encoder returning 4 feature maps: `SegformerModel` or an `AutoBackbone`."""
    if encoder_kind(encoder_config) == "segformer":
        return SegformerModel(encoder_config)
    backbone = encoder_class(encoder_config)(four_stage_backbone_config(encoder_config))
    freeze_unused_final_norm(backbone)
    return backbone


def load_pretrained_encoder(encoder_name_or_path: str) -> nn.Module:
    """An encoder as `build_encoder` makes it, with the weights of a checkpoint (Hub id or local folder).

    Reads SegFormer/MiT checkpoints (also `SegformerForSemanticSegmentation` ones: the `segformer.` prefix is
    stripped), any AutoBackbone's model or backbone checkpoint (`SwinModel`, `SwinBackbone`, ...), and folders
    written by `python -m protoseg_tools.convert_efficientnet_lite0`.
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
    return encoder_outputs(encoder, pixel_values)[0]


def encoder_outputs(
    encoder: nn.Module, pixel_values: torch.Tensor, *, output_attentions: bool = False
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """(feature maps, attentions) of an encoder from `build_encoder`.

    Returns:
        feature_maps: the 4 maps, strides 4..32, each (B, C_i, H_i, W_i).
        attentions: when `output_attentions` and the encoder has attention layers, the encoder's own attention
            maps as transformers returns them (MiT: one (B, heads, N_i, N_i / sr_i^2) map per block; Swin: one per
            stage). Under `attn_implementation="sdpa"` transformers computes none and returns `()` with a warning,
            as for SegFormer: ask for `"eager"`. None when not asked, or for an encoder without attention.
    """
    with_attentions = bool(output_attentions) and encoder_has_attentions(encoder)
    if output_attentions and not with_attentions:
        logger.warning_once(
            f"output_attentions=True: the {encoder.config.model_type!r} encoder ({type(encoder).__name__}) has no "
            "attention layers, so `attentions` is None (as for transformers' convolutional models)"
        )
    if isinstance(encoder, SegformerModel):
        # the decoder needs all 4 stage outputs: always captured, whatever the encoder config says
        output = encoder(pixel_values, output_hidden_states=True, output_attentions=with_attentions)
        feature_maps = tuple(output.hidden_states)
    elif encoder_has_attentions(encoder):
        output = encoder(pixel_values, output_attentions=with_attentions)
        feature_maps = tuple(output.feature_maps)
    else:  # convolutional backbones: no attention argument to pass
        output = encoder(pixel_values)
        feature_maps = tuple(output.feature_maps)
    attentions = tuple(output.attentions) if with_attentions and output.attentions is not None else None
    return feature_maps, attentions


NUM_FEATURE_MAPS = 4  # every encoder from `build_encoder` gives maps at strides 4, 8, 16, 32


def hidden_state_indices(
    output_hidden_states: bool | int | list[int] | tuple[int, ...] | None, num_maps: int = NUM_FEATURE_MAPS
) -> frozenset[int] | None:
    """Which of the encoder's maps an `output_hidden_states` request selects, read as transformers 5 reads it.

    Falsy (None, False, 0, []): None, no hidden states. True: all. An int or a list of ints: the maps at those
    indices of the full tuple (negative ones count from the end, out-of-range ones select nothing). A ValueError
    for anything else, raised before the forward runs.
    """
    if not output_hidden_states:
        return None
    if isinstance(output_hidden_states, bool):
        return frozenset(range(num_maps))
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else output_hidden_states
    if not isinstance(indices, (list, tuple)) or not all(
        isinstance(index, int) and not isinstance(index, bool) for index in indices
    ):
        raise ValueError(
            f"output_hidden_states must be a bool, an int or a list of ints (indices of the {num_maps} encoder "
            f"maps), got {output_hidden_states!r}"
        )
    return frozenset(index % num_maps for index in indices if -num_maps <= index < num_maps)


def select_hidden_states(
    feature_maps: tuple[torch.Tensor, ...], indices: frozenset[int] | None
) -> tuple[torch.Tensor | None, ...] | None:
    """The `hidden_states` output: None when `indices` is None, else a tuple as long as `feature_maps` holding the
    selected maps and None in place of the others (the form transformers 5 returns for a list of indices)."""
    if indices is None:
        return None
    return tuple(feature_map if index in indices else None for index, feature_map in enumerate(feature_maps))


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


# The attention-support flags transformers reads, and the `attn_implementation` names that need each.
ATTENTION_IMPLEMENTATION_FLAGS = {"sdpa": "_supports_sdpa", "flash_attention": "_supports_flash_attn",
                                  "flex_attention": "_supports_flex_attn"}  # fmt: skip


def _attention_flag(attn_implementation: str) -> str | None:
    """The `_supports_*` flag an `attn_implementation` needs; None for "eager" and names left to transformers."""
    name = attn_implementation.removeprefix("paged|")
    for prefix, flag in ATTENTION_IMPLEMENTATION_FLAGS.items():
        if name.startswith(prefix):
            return flag
    return None


class _FollowsEncoder:
    """A transformers attention-support flag (`_supports_sdpa`, ...) that follows the encoder. Read on a model: the
    flag of the class `build_encoder` makes for its `config.encoder_config` (the config is set before transformers
    checks the flags in `__init__`). Read on the class: the default encoder's (MiT, `SegformerModel`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: nn.Module | None, owner: type | None = None) -> bool:
        config = None if model is None else model.__dict__.get("config")
        encoder = SegformerModel if config is None else encoder_class(config.encoder_config)
        return bool(getattr(encoder, self.name, False))


class ProtoSegEncoderAttentionMixin:
    """Declares the attention implementations of the model's encoder, and hands a request to it.

    `attn_implementation` ("eager", "sdpa", "flash_attention_2", "flex_attention") changes only the encoder's
    attention layers: decoder and heads have none. The `_supports_*` flags are the encoder's (MiT: all four;
    Swin: eager and sdpa; convolutional backbones: eager only, as transformers' ResNet), the default is the
    encoder's (sdpa where supported, else eager), and an explicit request reaches the encoder through
    `config.encoder_config`, a registered sub-config. A request the encoder cannot honour raises a ValueError
    naming the encoder. `_supports_attention_backend` stays False: `forward` takes no attention kwargs.
    """

    _supports_sdpa = _FollowsEncoder()
    _supports_flash_attn = _FollowsEncoder()
    _supports_flex_attn = _FollowsEncoder()

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        flag = None if requested_attention is None else _attention_flag(requested_attention)
        if flag is not None and not getattr(self, flag):
            encoder_config = self.config.encoder_config
            encoder = encoder_class(encoder_config)
            if encoder_has_attentions(encoder):
                supported = ["eager"] + [
                    name for name, support in ATTENTION_IMPLEMENTATION_FLAGS.items() if getattr(encoder, support, False)
                ]
                reason = f"supports only {', '.join(supported)}"
            else:
                reason = "has no attention layers: leave attn_implementation unset or use 'eager'"
            raise ValueError(
                f"attn_implementation={requested_attention!r} is not available for this {type(self).__name__}: its "
                f"{encoder_config.model_type!r} encoder ({encoder.__name__}) {reason}"
            )
        return super().get_correct_attn_implementation(requested_attention, is_init_check)


__all__ = [
    "ProtoSegEncoderAttentionMixin",
    "ProtoSegEncoderCheckpointMixin",
    "build_encoder",
    "encoder_channels",
    "encoder_class",
    "encoder_feature_maps",
    "encoder_has_attentions",
    "encoder_outputs",
    "four_stage_backbone_config",
    "freeze_unused_final_norm",
    "hidden_state_indices",
    "load_pretrained_encoder",
    "minimum_input_size",
    "model_from_pretrained_encoder",
    "pretrained_encoder_model_type",
    "select_hidden_states",
]
