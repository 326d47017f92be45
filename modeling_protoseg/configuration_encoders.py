"""Which encoder configs ProtoSeg models accept, and how a config argument becomes a config object.

Config side of the encoder adapter (`encoders.py` builds and runs the encoders): kept free of modeling imports so
configuration modules stay light.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from transformers import AutoConfig, PretrainedConfig, SegformerConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING, MODEL_FOR_BACKBONE_MAPPING_NAMES


def encoder_kind(encoder_config: PretrainedConfig) -> str:
    """ "segformer" for a SegFormer (MiT) config, "backbone" for an AutoBackbone config (built into transformers or
    registered with `AutoBackbone.register`); a ValueError naming the supported types otherwise."""
    if encoder_config.model_type == "segformer":
        return "segformer"
    if (
        encoder_config.model_type in MODEL_FOR_BACKBONE_MAPPING_NAMES
        or type(encoder_config) in MODEL_FOR_BACKBONE_MAPPING  # registered backbones
    ):
        return "backbone"
    supported = ["segformer", *sorted(MODEL_FOR_BACKBONE_MAPPING_NAMES)]
    raise ValueError(
        f"encoder_config: unsupported encoder type {encoder_config.model_type!r}; expected a SegFormer (MiT) "
        f"config or a transformers AutoBackbone config (or one registered with AutoBackbone.register), one of: "
        f"{', '.join(supported)}"
    )


# The mean and std (RGB, pixel values in [0, 1]) transformers' image processors use for MiT, Swin, ResNet, ConvNeXt ...
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class InputNormalization(NamedTuple):
    """Per-channel `(x - mean) / std` of RGB images with x = pixel / 255 in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """The 8-bit colour that normalises to 0 (what padded image borders are filled with)."""
        return tuple(round(255 * channel_mean) for channel_mean in self.mean)


IMAGENET_NORMALIZATION = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)


def checked_input_normalization(mean: Any, std: Any, *, where: str = "") -> InputNormalization:
    """`mean` and `std` as an `InputNormalization`; a ValueError naming `where` + `image_mean`/`image_std` unless each
    holds 3 finite numbers (R, G, B) and every std is > 0."""
    if mean is None or std is None:
        raise ValueError(f"{where}image_mean and image_std go together, got image_mean={mean!r}, image_std={std!r}")
    for name, values in (("image_mean", mean), ("image_std", std)):
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(isinstance(value, numbers.Real) and not isinstance(value, bool) for value in values)
            or not all(math.isfinite(value) for value in values)
        ):
            raise ValueError(f"{where}{name} must hold 3 finite numbers (R, G, B), got {values!r}")
    if not all(value > 0 for value in std):
        raise ValueError(f"{where}image_std must be > 0 in every channel, got {std!r}")
    return InputNormalization(tuple(float(value) for value in mean), tuple(float(value) for value in std))


def input_normalization(config: PretrainedConfig) -> InputNormalization:
    """The normalisation a model's inputs need, read from its config: the config's own `image_mean`/`image_std` when
    it carries them, else ImageNet's (what MiT, Swin, ResNet, ... weights expect).

    The one definition every consumer reads (training augmentation, evaluation, the saved image processor, class
    enrolment, visualisation). A `ProtoSegConfig` or `ProtoSegLinearHeadConfig` always carries them (saved in
    config.json, taken from its encoder config when built); an EfficientNet-Lite encoder config carries (0.5, 0.5),
    as its weights expect `(x - 0.5) / 0.5`; a plain `SegformerConfig` (MiT, or the transformers linear baseline)
    carries none unless set, so ImageNet's.
    """
    mean = getattr(config, "image_mean", None)
    std = getattr(config, "image_std", None)
    if mean is None and std is None:
        return IMAGENET_NORMALIZATION
    return checked_input_normalization(mean, std, where=f"{config.model_type} config: ")


def check_model_input_normalization(config: PretrainedConfig) -> None:
    """ValueError unless a model config's `image_mean`/`image_std` are valid and, when its `encoder_config` carries its
    own (EfficientNet-Lite), equal to those: the encoder's weights expect one normalisation."""
    model_normalization = checked_input_normalization(config.image_mean, config.image_std)
    encoder_config = config.encoder_config
    if getattr(encoder_config, "image_mean", None) is None and getattr(encoder_config, "image_std", None) is None:
        return
    encoder_normalization = input_normalization(encoder_config)
    if not all(
        math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-7)
        for ours, theirs in zip((*model_normalization.mean, *model_normalization.std),
                                (*encoder_normalization.mean, *encoder_normalization.std))
    ):  # fmt: skip
        raise ValueError(
            f"image_mean/image_std {list(model_normalization.mean)} / {list(model_normalization.std)} differ from the "
            f"{encoder_config.model_type} encoder config's {list(encoder_normalization.mean)} / "
            f"{list(encoder_normalization.std)}, the normalisation its weights expect; leave image_mean/image_std "
            "unset to take the encoder's"
        )


# Bounds on the encoder a config describes, checked before anything is built: a typo in config.json (depths
# [1, 1, 1, 10**6], a width of 10**5) otherwise builds for minutes or asks for tens of GB.
MAX_ENCODER_LAYERS = 1000  # blocks over all stages (MiT-B5: 52, Swin-L: 24, ResNet-152: 50)
MAX_ENCODER_WIDTH = 65536  # channels of any stage
MAX_MODEL_BYTES = 8 * 1024**3  # float32 parameters and prototypes of the whole model, estimated before building


def _integer_list(value: Any) -> list[int] | None:
    """`value` as a list of ints (one int: a list of one), or None when it is neither."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if values and all(isinstance(item, int) and not isinstance(item, bool) for item in values):
        return list(values)
    return None


def encoder_stage_layout(encoder_config: PretrainedConfig) -> list[tuple[int, int, float]]:
    """(blocks, width, expansion ratio) per stage, read from the config alone (nothing built); [] for an encoder
    whose config names no depths and widths this function knows. A ValueError naming the field when the depths
    or widths exceed `MAX_ENCODER_LAYERS` / `MAX_ENCODER_WIDTH`."""
    config = encoder_config
    if callable(getattr(config, "stage_layout", None)):  # a config that describes its own stages (EfficientNet-Lite)
        depths, widths, ratios = (list(values) for values in zip(*config.stage_layout()))
        depth_field, width_field = config.stage_layout_fields
    else:
        depth_field = "depths" if getattr(config, "depths", None) is not None else "num_hidden_layers"
        depths = _integer_list(getattr(config, depth_field, None))
        if depths is None:
            return []
        widths = None
        for width_field in ("hidden_sizes", "embed_dim", "hidden_size"):
            widths = _integer_list(getattr(config, width_field, None))
            if widths is not None:
                break
        if widths is None:
            return []
        if width_field == "embed_dim":  # Swin-like: the width doubles at every stage
            widths = [widths[0] * 2**stage for stage in range(len(depths))]
        if len(widths) == 1:
            widths = widths * len(depths)
        ratios = getattr(config, "mlp_ratios", None) or [getattr(config, "mlp_ratio", 4.0)] * len(depths)
        if not isinstance(ratios, (list, tuple)):
            ratios = [ratios] * len(depths)
    if any(depth < 0 for depth in depths) or sum(depths) > MAX_ENCODER_LAYERS:
        raise ValueError(
            f"encoder_config.{depth_field}: {sum(depths)} blocks in all ({depths if len(depths) < 10 else '...'}); "
            f"at most {MAX_ENCODER_LAYERS} are allowed, each stage >= 0"
        )
    if any(not 1 <= width <= MAX_ENCODER_WIDTH for width in widths):
        raise ValueError(f"encoder_config.{width_field}: stage widths {widths} must be in [1, {MAX_ENCODER_WIDTH}]")
    return [(depth, width, float(ratio)) for depth, width, ratio in zip(depths, widths, ratios)]


def estimate_encoder_parameters(encoder_config: PretrainedConfig) -> int:
    """A rough count of the encoder's parameters from its config: per block (4 + 2 * expansion ratio) * width^2,
    an attention block's projections plus its MLP (an over-estimate for convolutional blocks). 0 when unknown."""
    return int(sum(depth * (4 + 2 * ratio) * width**2 for depth, width, ratio in encoder_stage_layout(encoder_config)))


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
    encoder_stage_layout(encoder_config)  # bounded depths and widths, before anything is built
    return encoder_config


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_NORMALIZATION",
    "IMAGENET_STD",
    "InputNormalization",
    "check_model_input_normalization",
    "checked_input_normalization",
    "encoder_kind",
    "encoder_stage_layout",
    "estimate_encoder_parameters",
    "input_normalization",
    "resolve_encoder_config",
]
