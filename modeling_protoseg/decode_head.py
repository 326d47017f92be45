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


def eval_batch_norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of shape (C,) in float32 with `norm(x) == x * scale + shift` per channel, when the BatchNorm
    normalises with its running statistics (eval mode); None when it uses the batch's (training mode, or no
    running statistics), or when the norm is not a BatchNorm (a user's replacement)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_var is None:
        return None
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    shift = -norm.running_mean.float() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.float()
    return scale, shift


def relu_unless_recorded(values: torch.Tensor) -> torch.Tensor:
    """ReLU, in place when no autograd records it (no fresh (B, h, w, 256) block at stride 4)."""
    return F.relu(values, inplace=not values.requires_grad)


class ProtoSegDecodeHead(nn.Module):
    """SegFormer's all-MLP decoder without its classifier: fuse 4 maps at stride 4.

    Computes `linear_fuse(concat_i(upsample(linear_projection_i(map_i))))` exactly as SegFormer defines
    it, in a cheaper order: the 1x1 projection and the fusion act on channels only and the bilinear
    upsampling on space only (its weights sum to 1, so it commutes with the affine maps). So each map is
    taken straight to the output width by the folded matrix `fuse_block_i @ projection_i` at its own
    resolution and then upsampled, and the (hidden x 4*hidden) fusion at stride 4 is never run.
    All activations are channels-last, (B, h, w, C), so no layout copies are made. In eval mode the BatchNorm
    (then a fixed per-channel affine map) is folded into the same matrices, so no pass at stride 4 applies it.
    """

    def __init__(self, *, in_channels: list[int], hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        # 1x1 convolutions = SegFormer's per-pixel linear projections to a common width
        self.linear_projections = nn.ModuleList(nn.Conv2d(c, hidden_size, kernel_size=1) for c in in_channels)
        self.linear_fuse = nn.Conv2d(hidden_size * len(in_channels), hidden_size, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_i, H_i, W_i) maps -> (B, hidden, H/4, W/4), a channels-last view."""
        hidden_size = self.linear_fuse.out_channels
        num_maps = len(feature_maps)
        target_size = feature_maps[0].shape[-2:]  # (H/4, W/4)
        fuse_weight = self.linear_fuse.weight.flatten(1)  # (hidden, num_maps * hidden); maps concatenated in reverse
        eval_affine = eval_batch_norm_affine(self.batch_norm)
        if eval_affine is not None:  # BatchNorm(sum_i W_i x_i + b_i) = sum_i (s * W_i) x_i + (s * b_i) + t
            scale, shift = eval_affine
            fuse_weight = fuse_weight * scale.to(fuse_weight.dtype)[:, None]
        fused = None
        for index, (feature_map, projection) in enumerate(zip(feature_maps, self.linear_projections)):
            block = fuse_weight[:, (num_maps - 1 - index) * hidden_size : (num_maps - index) * hidden_size]
            folded_weight = block @ projection.weight.flatten(1)  # (hidden, C_i)
            folded_bias = block @ projection.bias  # (hidden,)
            if eval_affine is not None and index == 0:
                folded_bias = folded_bias + shift.to(folded_bias.dtype)  # the BatchNorm's shift, added once
            mapped = F.linear(feature_map.permute(0, 2, 3, 1), folded_weight, folded_bias)  # (B, H_i, W_i, hidden)
            if mapped.shape[1:3] != target_size:
                mapped = F.interpolate(
                    mapped.permute(0, 3, 1, 2), size=target_size, mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            # in place: neither the product nor the resize needs its output for backward
            fused = mapped if fused is None else fused.add_(mapped)
        normalised = fused if eval_affine is not None else channels_last_norm(self.batch_norm, fused)
        decoded = self.dropout(relu_unless_recorded(normalised))  # (B, h, w, hidden)
        return decoded.permute(0, 3, 1, 2)


__all__ = ["ProtoSegDecodeHead", "channels_last_norm", "eval_batch_norm_affine", "relu_unless_recorded"]
