"""SegFormer's all-MLP decoder without its classifier, shared by ProtoSeg and the linear-head baseline.

Its own module so that the linear head's saved code does not carry ProtoSeg's prototype modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channels_last_norm(norm: nn.Module, channels_last: torch.Tensor) -> torch.Tensor:
    """A BatchNorm2d on (B, h, w, C) values, through a free NCHW view (SyncBatchNorm-compatible)."""
    return norm(channels_last.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ProtoSegDecodeHead(nn.Module):
    """SegFormer's all-MLP decoder without its classifier: fuse 4 maps at stride 4.

    Computes `linear_fuse(concat_i(upsample(linear_projection_i(map_i))))` exactly as SegFormer defines
    it, in a cheaper order: the 1x1 projection and the fusion act on channels only and the bilinear
    upsampling on space only (its weights sum to 1, so it commutes with the affine maps). So each map is
    taken straight to the output width by the folded matrix `fuse_block_i @ projection_i` at its own
    resolution and then upsampled, and the (hidden x 4*hidden) fusion at stride 4 is never run.
    All activations are channels-last, (B, h, w, C), so no layout copies are made.
    """

    def __init__(self, *, in_channels: list[int], hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        # 1x1 convolutions = SegFormer's per-pixel linear projections to a common width
        self.linear_projections = nn.ModuleList(nn.Conv2d(c, hidden_size, kernel_size=1) for c in in_channels)
        self.linear_fuse = nn.Conv2d(hidden_size * len(in_channels), hidden_size, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_i, H_i, W_i) maps -> (B, hidden, H/4, W/4), a channels-last view."""
        hidden_size = self.linear_fuse.out_channels
        num_maps = len(feature_maps)
        target_size = feature_maps[0].shape[-2:]  # (H/4, W/4)
        fuse_weight = self.linear_fuse.weight.flatten(1)  # (hidden, num_maps * hidden); maps concatenated in reverse
        fused = None
        for index, (feature_map, projection) in enumerate(zip(feature_maps, self.linear_projections)):
            block = fuse_weight[:, (num_maps - 1 - index) * hidden_size : (num_maps - index) * hidden_size]
            folded_weight = block @ projection.weight.flatten(1)  # (hidden, C_i)
            folded_bias = block @ projection.bias  # (hidden,)
            mapped = F.linear(feature_map.permute(0, 2, 3, 1), folded_weight, folded_bias)  # (B, H_i, W_i, hidden)
            if mapped.shape[1:3] != target_size:
                mapped = F.interpolate(
                    mapped.permute(0, 3, 1, 2), size=target_size, mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            fused = mapped if fused is None else fused + mapped
        decoded = self.dropout(self.activation(channels_last_norm(self.batch_norm, fused)))  # (B, h, w, hidden)
        return decoded.permute(0, 3, 1, 2)


__all__ = ["ProtoSegDecodeHead", "channels_last_norm"]
