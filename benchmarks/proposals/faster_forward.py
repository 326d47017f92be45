"""Proposed faster exact formulations of ProtoSeg's forward, for the model maintainers to port.

Each proposal is a plain function over the package's public model parts (the reference it must equal is
the package's public forward, or the package's public `sinkhorn_assign_pixels`); nothing here patches the
package. `benchmarks/proposals/proposal_gain.py` checks the exactness and measures the gain of each.

Already ported into the package from earlier versions of this file (their code is gone from here): the
decoder fold (no hidden x 4*hidden fusion at stride 4), channels-last heads and logits without layout
copies, the channels-last cross-entropy, the chunked class scores at inference (commit daea8ec, now
`modeling_protoseg.class_scores.nearest_prototype_scores`), and the fused class scores + PPC + PPD autograd
function (commit 80df072, `modeling_protoseg.losses.class_scores_and_prototype_losses`). Still proposed:

`sinkhorn_assign_pixels_exp_domain`: the Sinkhorn-Knopp iterations on exp((S - 1) / kappa) directly instead
of in the log domain. A constant factor (here exp(-1 / kappa)) cancels in the first normalisation; for
cosine similarities (S <= 1) every entry then lies in [exp(-2 / kappa), 1] = [e^-40, 1] at kappa = 0.05,
inside float32's normal range (down to e^-87), and later values stay bounded by 1, so nothing overflows or
underflows and the plan is the same. The shift is a constant, not a data maximum, so processes need no
extra reduction to agree on it (the per-group MAX all-reduce of the log-domain version disappears).
Per iteration: 1 index_add + 1 index_select + 2 divisions instead of about 15 ops with an exp and a log
each. (A fp16/bf16 input is cast to float32 first, as in the package.) To port: the body replaces that of
`modeling_protoseg.prototypes.sinkhorn_assign_pixels`.

`folded_inference_logits` (inference only): in eval mode both BatchNorms are fixed per-channel affine maps
right after a linear map (the decoder's after the sum of its folded per-stage maps, the projection head's
after its first 1x1 map), so their scale and shift fold into those weights and biases: two passes over the
(N, 256) activations disappear, nothing else changes. To port: the eval branch of the two heads' forwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from benchmarks.common import mit_feature_maps
from modeling_protoseg.class_scores import nearest_prototype_scores


def _eval_affine(norm: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with norm(x) == x * scale + shift per channel, in eval mode."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def decode_eval_folded(head, feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """`model.decode_head` in eval mode with its BatchNorm folded in: (B, h, w, hidden) channels-last."""
    hidden_size = head.linear_fuse.out_channels
    num_maps = len(feature_maps)
    target_size = feature_maps[0].shape[-2:]
    scale, shift = _eval_affine(head.batch_norm)
    fuse_weight = head.linear_fuse.weight.flatten(1) * scale[:, None]  # BN scale folded into every block
    fused = None
    for index, (feature_map, projection) in enumerate(zip(feature_maps, head.linear_projections)):
        block = fuse_weight[:, (num_maps - 1 - index) * hidden_size : (num_maps - index) * hidden_size]
        bias = block @ projection.bias + (shift if index == 0 else 0.0)  # the BN shift, added once
        mapped = F.linear(feature_map.permute(0, 2, 3, 1), block @ projection.weight.flatten(1), bias)
        if mapped.shape[1:3] != target_size:
            mapped = F.interpolate(
                mapped.permute(0, 3, 1, 2), size=target_size, mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        fused = mapped if fused is None else fused + mapped
    return head.activation(fused)  # dropout is the identity in eval mode


def project_eval_folded(head, decoded: torch.Tensor) -> torch.Tensor:
    """`model.projection_head` in eval mode with its BatchNorm folded into the first 1x1 map: (B, h, w, D)."""
    scale, shift = _eval_affine(head.batch_norm)
    hidden = F.linear(decoded, head.hidden.weight.flatten(1) * scale[:, None], head.hidden.bias * scale + shift)
    embeddings = head.layer_norm(F.linear(head.activation(hidden), head.output.weight.flatten(1), head.output.bias))
    return F.normalize(embeddings, dim=-1)


def folded_inference_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """`model(pixel_values).logits` of an eval-mode ProtoSeg model on a MiT encoder, with both BatchNorms
    folded: (B, C, H/4, W/4), a channels-last view as the package returns."""
    feature_maps = list(mit_feature_maps(model.encoder, pixel_values))
    embeddings = project_eval_folded(model.projection_head, decode_eval_folded(model.decode_head, feature_maps))
    batch_size, height, width, embedding_dim = embeddings.shape
    num_classes = model.config.num_labels
    pixel_embeddings = embeddings.reshape(-1, embedding_dim)  # (N, D)
    flat_prototypes = model.prototypes.to(pixel_embeddings.dtype).reshape(-1, embedding_dim)  # (C*K, D)
    class_scores = nearest_prototype_scores(pixel_embeddings, flat_prototypes, num_classes)
    pixel_logits = model.class_score_norm(class_scores.to(pixel_embeddings.dtype))
    return pixel_logits.view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)


def _all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place when torch.distributed is initialised (as the package's Sinkhorn does)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sinkhorn_assign_pixels_exp_domain(
    similarities: torch.Tensor, pixel_groups: torch.Tensor, num_groups: int, *, iterations: int = 3,
    epsilon: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`modeling_protoseg.sinkhorn_assign_pixels` (same arguments, same plan) computed in the exp domain.

    Arguments:
        similarities: (N, K) cosine similarities of each pixel to its own class's prototypes, in [-1, 1]
            (the exponent is clamped at -80, a no-op for such inputs, so no row can underflow to 0).
        pixel_groups: (N,) long group (class) of each pixel, in [0, num_groups).
    Returns:
        assignments (N,) long, plan (N, K) float32 with rows summing to 1.
    """
    with torch.autocast(device_type=similarities.device.type, enabled=False):
        similarities = similarities.float()
        # exp((S - 1) / epsilon): the constant factor cancels in the first column normalisation.
        plan = torch.sub(similarities, 1.0).div_(epsilon).clamp_(min=-80.0).exp_()
        num_prototypes = plan.shape[1]
        for _ in range(iterations):
            column_sums = plan.new_zeros((num_groups, num_prototypes)).index_add_(0, pixel_groups, plan)
            _all_reduce_sum_(column_sums)
            plan.div_(column_sums.index_select(0, pixel_groups))  # each prototype: equal mass per class
            plan.div_(plan.sum(dim=1, keepdim=True))  # each pixel: mass 1
    return plan.argmax(dim=1), plan


__all__ = [
    "decode_eval_folded",
    "folded_inference_logits",
    "project_eval_folded",
    "sinkhorn_assign_pixels_exp_domain",
]
