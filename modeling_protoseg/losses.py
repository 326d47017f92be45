"""ProtoSeg training losses: pixel cross-entropy (eq. 7), PPC (eq. 11) and PPD (eq. 12).

Every loss is a weighted mean over the pixels that take part (weight 1) with ignored pixels at weight 0,
so a batch whose labels are all ignored gives a finite zero loss instead of 0 / 0 = NaN, and no
data-dependent indexing forces a host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy of (B, C, h, w) logits, upsampled bilinearly to the (B, H, W) labels.

    Works channels-last: the upsampled (B, H, W, C) logits are a free view of (B*H*W, C) rows, so the
    log-softmax runs over a contiguous class dimension.
    """
    channels_last = logits.contiguous(memory_format=torch.channels_last)  # a no-op for the model's logits
    upsampled = F.interpolate(channels_last, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    rows = upsampled.permute(0, 2, 3, 1).reshape(-1, upsampled.shape[1]).float()  # (B*H*W, C)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    per_pixel = F.cross_entropy(rows, flat_labels.masked_fill(~valid, 0), reduction="none")
    return _weighted_mean(per_pixel, valid.float())


def pixel_binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """SegFormer's loss for one class (`num_labels == 1`): binary cross-entropy with logits of the (B, 1, h, w)
    logits, upsampled bilinearly to the (B, H, W) labels (1 = the class, 0 = not).

    As `SegformerForSemanticSegmentation`, pixels labelled `ignore_index` or negative count 0 and the mean runs
    over all B*H*W pixels (not over the labelled ones only), so losses equal SegFormer's.
    """
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    upsampled = upsampled.squeeze(1).float()  # (B, H, W)
    valid = (labels >= 0) & (labels != ignore_index)
    targets = labels.float().masked_fill(~valid, 0.0)  # ignored targets out of [0, 1] never enter the loss
    per_pixel = F.binary_cross_entropy_with_logits(upsampled, targets, reduction="none")
    return (per_pixel * valid.float()).mean()


class _ClassScoresAndPrototypeLosses(torch.autograd.Function):
    """(N, C*K) similarities -> class scores (max over each class's K), PPC and PPD, in one autograd node.

    The same values as `amax` + cross-entropy of S / tau (PPC) + (1 - assigned S)^2 (PPD), but the backward writes the gradient of the
    similarities in one pass over N*C*K values plus two sparse scatters (the assigned prototype, and each
    class's best prototype), instead of the dozen full passes of log-softmax, division and amax backwards.
    """

    @staticmethod
    def forward(ctx, similarities, target_prototypes, pixel_weights, num_classes: int, temperature: float):
        num_pixels, num_columns = similarities.shape
        class_scores, best_prototype = similarities.view(num_pixels, num_classes, -1).max(dim=-1)  # (N, C)
        row_max = class_scores.amax(dim=1, keepdim=True)  # (N, 1): the max over all C*K
        exponentials = torch.sub(similarities, row_max).mul_(1.0 / temperature).exp_()  # (N, C*K), each <= 1
        row_sums = exponentials.sum(dim=1)  # (N,)
        log_normalisers = row_max.squeeze(1) / temperature + torch.log(row_sums)  # logsumexp(S / tau)
        assigned = similarities.gather(1, target_prototypes[:, None]).squeeze(1)  # (N,)
        total_weight = pixel_weights.sum().clamp(min=1.0)
        ppc = ((log_normalisers - assigned / temperature) * pixel_weights).sum() / total_weight
        ppd = ((1.0 - assigned).pow(2) * pixel_weights).sum() / total_weight
        ctx.save_for_backward(exponentials, row_sums, target_prototypes, pixel_weights, best_prototype, assigned)
        ctx.temperature, ctx.total_weight = temperature, total_weight
        ctx.mark_non_differentiable(best_prototype)
        return class_scores, best_prototype, ppc, ppd

    @staticmethod
    def backward(ctx, grad_class_scores, _grad_best_prototype, grad_ppc, grad_ppd):
        exponentials, row_sums, target_prototypes, pixel_weights, best_prototype, assigned = ctx.saved_tensors
        num_pixels, num_classes = best_prototype.shape
        pixel_share = pixel_weights / ctx.total_weight  # (N,)
        # d PPC / d S = share * (softmax(S / tau) - onehot(target)) / tau
        softmax_scale = grad_ppc * pixel_share / ctx.temperature  # (N,)
        grad = exponentials * (softmax_scale / row_sums)[:, None]  # (N, C*K), the one full pass
        target_grad = -softmax_scale - 2.0 * grad_ppd * (1.0 - assigned) * pixel_share  # PPC target term + PPD
        grad.scatter_add_(1, target_prototypes[:, None], target_grad[:, None])
        grad.view(num_pixels, num_classes, -1).scatter_add_(2, best_prototype[..., None], grad_class_scores[..., None])
        return grad, None, None, None, None


def class_scores_and_prototype_losses(
    similarities: torch.Tensor,
    target_prototypes: torch.Tensor,
    pixel_weights: torch.Tensor,
    *,
    num_classes: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class scores, PPC and PPD of the training forward, with a fused backward.

    Arguments:
        similarities: (N, C*K) cosine similarities (computed in float32 here).
        target_prototypes: (N,) long, flat index `class * K + k` of each pixel's assigned prototype (real
            indices, no ignore value, so C*K may exceed 255 safely).
        pixel_weights: (N,) 1 for pixels that take part, 0 for ignored ones.
        temperature: tau of PPC.
    Returns:
        class_scores: (N, C) max over each class's K prototypes.
        ppc: mean cross-entropy over all C*K prototypes of similarities / tau, target the assigned prototype.
        ppd: mean of (1 - similarity to the assigned prototype)^2.
    """
    class_scores, _, ppc, ppd = _ClassScoresAndPrototypeLosses.apply(
        similarities.float(), target_prototypes, pixel_weights.float(), num_classes, temperature
    )
    return class_scores, ppc, ppd


__all__ = ["class_scores_and_prototype_losses", "pixel_cross_entropy"]
