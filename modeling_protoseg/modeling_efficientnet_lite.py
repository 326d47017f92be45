"""EfficientNet-Lite as a transformers backbone (`AutoBackbone`), pure torch.

Architecture of TF's EfficientNet-Lite and of timm's `tf_efficientnet_lite*`: a stride-2 3x3 stem, MBConv blocks
(1x1 expansion, depthwise k x k, 1x1 projection, each followed by BatchNorm; ReLU6 after the first two; a residual
connection when shape allows), no squeeze-excitation, TensorFlow "same" padding. The classification head
(1x1 conv to 1280 channels, pooling, classifier) feeds no feature map and is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from .configuration_efficientnet_lite import ProtoSegEfficientNetLiteConfig


def tf_same_padding(hidden: torch.Tensor, *, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) as TensorFlow's "SAME": output size ceil(H / stride), extra pixel at bottom/right."""
    padding = []
    for size in (hidden.shape[-1], hidden.shape[-2]):  # F.pad order: width first
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        padding += [total // 2, total - total // 2]
    if not any(padding):
        return hidden
    return F.pad(hidden, padding)


class ProtoSegEfficientNetLiteConvNorm(nn.Module):
    """Convolution (TF "same" padding, no bias) + BatchNorm, optionally + ReLU6."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int,
        activation: bool,
        config: ProtoSegEfficientNetLiteConfig,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        # A stride-1 odd kernel pads symmetrically, so it is static; strided convs pad by the input size.
        static_padding = kernel_size // 2 if stride == 1 else 0
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=static_padding, groups=groups, bias=False
        )
        self.batch_norm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        if self.stride > 1:
            hidden = tf_same_padding(hidden, kernel_size=self.kernel_size, stride=self.stride)
        return self.activation(self.batch_norm(self.convolution(hidden)))


class ProtoSegEfficientNetLiteBlock(nn.Module):
    """MBConv without squeeze-excitation: [1x1 expand + ReLU6] -> depthwise k x k + ReLU6 -> 1x1 project (+ input)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_path_rate: float,
        config: ProtoSegEfficientNetLiteConfig,
    ) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.expand = None
        if expand_ratio != 1:
            self.expand = ProtoSegEfficientNetLiteConvNorm(
                in_channels=in_channels, out_channels=hidden_channels, kernel_size=1, stride=1, groups=1,
                activation=True, config=config,
            )  # fmt: skip
        self.depthwise = ProtoSegEfficientNetLiteConvNorm(
            in_channels=hidden_channels, out_channels=hidden_channels, kernel_size=kernel_size, stride=stride,
            groups=hidden_channels, activation=True, config=config,
        )  # fmt: skip
        self.project = ProtoSegEfficientNetLiteConvNorm(
            in_channels=hidden_channels, out_channels=out_channels, kernel_size=1, stride=1, groups=1,
            activation=False, config=config,
        )  # fmt: skip
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        output = hidden if self.expand is None else self.expand(hidden)
        output = self.project(self.depthwise(output))
        if not self.has_residual:
            return output
        if self.training and self.drop_path_rate > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_path_rate
            mask = torch.empty(output.shape[0], 1, 1, 1, device=output.device, dtype=output.dtype).bernoulli_(keep)
            output = output * mask / keep
        return output + hidden


class ProtoSegEfficientNetLitePreTrainedModel(PreTrainedModel):
    config: ProtoSegEfficientNetLiteConfig
    config_class = ProtoSegEfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"  # the attribute a wrapping model would use, as "resnet" for ResNetBackbone
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # BatchNorm: weight 1, bias 0, running statistics reset
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class ProtoSegEfficientNetLiteBackbone(BackboneMixin, ProtoSegEfficientNetLitePreTrainedModel):
    """EfficientNet-Lite returning `BackboneOutput(feature_maps=...)`, one (B, C_i, H / s_i, W / s_i) map per
    entry of `config.out_features` (by default the last four stages: strides 4, 8, 16, 32)."""

    has_attentions = False

    def __init__(self, config: ProtoSegEfficientNetLiteConfig) -> None:
        super().__init__(config)
        layout = config.block_layout
        self.stem = ProtoSegEfficientNetLiteConvNorm(
            in_channels=config.num_channels, out_channels=config.stem_channels, kernel_size=3, stride=2, groups=1,
            activation=True, config=config,
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            ProtoSegEfficientNetLiteBlock(
                **block, drop_path_rate=config.drop_path_rate * index / len(layout), config=config
            )
            for index, block in enumerate(layout)
        )
        self.stage_ends = [block_range[-1] for block_range in config.stage_block_ranges]  # last block of each stage
        self.num_features = [config.stem_channels] + [layout[end]["out_channels"] for end in self.stage_ends]
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        r"""
        Arguments:
            pixel_values: (B, num_channels, H, W), normalised as `(x - config.image_mean) / config.image_std`.
        Returns:
            `BackboneOutput` with `feature_maps` (the `out_features` stages) and, if asked, `hidden_states`
            (every stage, stem first).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        hidden = self.stem(pixel_values)  # (B, stem_channels, H/2, W/2)
        stage_outputs = [hidden]
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if index in self.stage_ends:
                stage_outputs.append(hidden)
        feature_maps = tuple(stage_outputs[self.stage_names.index(name)] for name in self.out_features)
        hidden_states = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden_states,) if hidden_states is not None else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


# Registered here, not only in the package's __init__.py: remote code runs this copied file without the package.
AutoBackbone.register(ProtoSegEfficientNetLiteConfig, ProtoSegEfficientNetLiteBackbone, exist_ok=True)

__all__ = [
    "ProtoSegEfficientNetLiteBackbone",
    "ProtoSegEfficientNetLiteBlock",
    "ProtoSegEfficientNetLiteConvNorm",
    "ProtoSegEfficientNetLitePreTrainedModel",
    "tf_same_padding",
]
