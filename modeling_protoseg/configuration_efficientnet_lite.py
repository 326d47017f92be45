"""Configuration of the EfficientNet-Lite backbone (Tan & Le, 2019; the "Lite" variants of TF's model garden).

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and the stem (32 channels),
the head and the first and last block stages are not scaled with width/depth. The defaults are Lite0.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .transformers_requirement import MINIMUM_TRANSFORMERS_VERSION  # noqa: F401 - first: checks the version

from transformers.backbone_utils import BackboneConfigMixin  # noqa: E402 - transformers >= 5 only

# Lite0's seven MBConv block stages (TF's efficientnet_lite_builder "r1_k3_s11_e1_i32_o16", ...).
LITE0_KERNEL_SIZES = [3, 3, 5, 3, 5, 5, 3]
LITE0_STRIDES = [1, 2, 2, 2, 1, 2, 1]
LITE0_EXPAND_RATIOS = [1, 6, 6, 6, 6, 6, 6]
LITE0_OUT_CHANNELS = [16, 24, 40, 80, 112, 192, 320]
LITE0_NUM_REPEATS = [1, 2, 2, 3, 3, 4, 1]


def round_channels(channels: int, width_coefficient: float, divisor: int) -> int:
    """TF EfficientNet's `round_filters`: scale by width, round to a multiple of `divisor`, lose at most 10%."""
    scaled = channels * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """TF EfficientNet's `round_repeats`: ceil(depth * repeats)."""
    return int(math.ceil(depth_coefficient * repeats))


class ProtoSegEfficientNetLiteConfig(BackboneConfigMixin, PretrainedConfig):
    r"""
    Configuration of [`ProtoSegEfficientNetLiteBackbone`], a transformers backbone (`AutoBackbone`).

    Stages (`stage_names`) are resolution levels: "stem" (stride 2), then one stage per run of MBConv blocks at
    one resolution. For Lite0: stem 32 ch @ 2, stage1 16 @ 2, stage2 24 @ 4, stage3 40 @ 8, stage4 112 @ 16,
    stage5 320 @ 32; `out_features` defaults to the last four (strides 4..32).

    Arguments:
        num_channels (`int`): input image channels.
        width_coefficient, depth_coefficient (`float`): EfficientNet's compound scaling (Lite0: 1.0, 1.0).
        stem_channels (`int`): output channels of the stem convolution (never scaled in Lite).
        kernel_sizes, strides, expand_ratios, out_channels, num_repeats (`list[int]`): one entry per block
            stage, before scaling (Lite0's by default). The first and last stages' repeats are never scaled.
        depth_divisor (`int`): channel counts are rounded to multiples of it.
        batch_norm_eps (`float`): TF's 1e-3; the pretrained weights need it.
        batch_norm_momentum (`float`): PyTorch convention (weight of the new batch statistics).
        drop_path_rate (`float`): stochastic depth of the residual blocks, growing linearly with block index.
        image_mean, image_std (`list[float]`): the normalisation these weights expect, `(x - 0.5) / 0.5`.
        out_features, out_indices: which stages the backbone returns (transformers' backbone convention).
        initializer_range (`float`): unused by the convolutions (Kaiming init), kept for transformers' defaults.
    """

    model_type = "protoseg_efficientnet_lite"

    def __init__(
        self,
        num_channels: int = 3,
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        stem_channels: int = 32,
        kernel_sizes: list[int] | None = None,
        strides: list[int] | None = None,
        expand_ratios: list[int] | None = None,
        out_channels: list[int] | None = None,
        num_repeats: list[int] | None = None,
        depth_divisor: int = 8,
        batch_norm_eps: float = 1e-3,
        batch_norm_momentum: float = 0.1,
        drop_path_rate: float = 0.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.num_channels = num_channels
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.stem_channels = stem_channels
        self.kernel_sizes = list(kernel_sizes if kernel_sizes is not None else LITE0_KERNEL_SIZES)
        self.strides = list(strides if strides is not None else LITE0_STRIDES)
        self.expand_ratios = list(expand_ratios if expand_ratios is not None else LITE0_EXPAND_RATIOS)
        self.out_channels = list(out_channels if out_channels is not None else LITE0_OUT_CHANNELS)
        self.num_repeats = list(num_repeats if num_repeats is not None else LITE0_NUM_REPEATS)
        self.depth_divisor = depth_divisor
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        self.drop_path_rate = drop_path_rate
        self.image_mean = list(image_mean if image_mean is not None else [0.5, 0.5, 0.5])
        self.image_std = list(image_std if image_std is not None else [0.5, 0.5, 0.5])
        self.initializer_range = initializer_range
        lengths = {
            len(values)
            for values in (self.kernel_sizes, self.strides, self.expand_ratios, self.out_channels, self.num_repeats)
        }
        if len(lengths) != 1:
            raise ValueError(
                "kernel_sizes, strides, expand_ratios, out_channels and num_repeats must have one entry per block "
                f"stage each, got lengths {sorted(lengths)}"
            )
        kwargs.pop("stage_names", None)  # derived from the block layout below
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, len(self.stage_block_ranges) + 1)]
        if out_features is None and out_indices is None:
            out_features = self.stage_names[-4:]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__init__(**kwargs)

    # The fields that set the depth and the width of a stage, as the ProtoSeg configs' size checks name them.
    stage_layout_fields = ("num_repeats / depth_coefficient", "out_channels / width_coefficient")

    def stage_layout(self) -> list[tuple[int, int, float]]:
        """(blocks, width, expansion ratio) of each block stage after scaling: what the ProtoSeg configs read to bound
        and estimate the encoder's size before anything is built (`configuration_encoders.encoder_stage_layout`)."""
        last = len(self.num_repeats) - 1
        stages = zip(self.num_repeats, self.out_channels, self.expand_ratios)
        return [
            (
                repeats if stage in (0, last) else round_repeats(repeats, self.depth_coefficient),
                round_channels(channels, self.width_coefficient, self.depth_divisor),
                float(ratio),
            )
            for stage, (repeats, channels, ratio) in enumerate(stages)
        ]

    @property
    def block_layout(self) -> list[dict[str, int]]:
        """One dict per MBConv block, after scaling: in_channels, out_channels, kernel_size, stride, expand_ratio."""
        blocks: list[dict[str, int]] = []
        in_channels = self.stem_channels  # Lite: the first stage always reads the unscaled stem
        last = len(self.out_channels) - 1
        for index, (kernel, stride, expand, out, repeats) in enumerate(
            zip(self.kernel_sizes, self.strides, self.expand_ratios, self.out_channels, self.num_repeats)
        ):
            out = round_channels(out, self.width_coefficient, self.depth_divisor)
            repeats = repeats if index in (0, last) else round_repeats(repeats, self.depth_coefficient)
            for repeat in range(repeats):
                blocks.append(
                    dict(
                        in_channels=in_channels,
                        out_channels=out,
                        kernel_size=kernel,
                        stride=stride if repeat == 0 else 1,
                        expand_ratio=expand,
                    )
                )
                in_channels = out
        return blocks

    @property
    def stage_block_ranges(self) -> list[range]:
        """The blocks of each resolution stage: a new stage starts at every strided block after the first."""
        strides = [block["stride"] for block in self.block_layout]
        starts = [0] + [index for index, stride in enumerate(strides) if stride > 1 and index > 0]
        ends = starts[1:] + [len(strides)]
        return [range(start, end) for start, end in zip(starts, ends)]


# Registered here, not only in the package's __init__.py: a checkpoint loaded as remote code runs this copied file
# without the package, and its ProtoSeg config must still resolve the nested "protoseg_efficientnet_lite" config.
AutoConfig.register(ProtoSegEfficientNetLiteConfig.model_type, ProtoSegEfficientNetLiteConfig, exist_ok=True)

__all__ = ["ProtoSegEfficientNetLiteConfig", "round_channels", "round_repeats"]
