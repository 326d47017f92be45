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


def pixel_prototype_losses(
    prototype_similarities: torch.Tensor,
    target_prototypes: torch.Tensor,
    pixel_weights: torch.Tensor,
    *,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-prototype contrastive loss (PPC) and pixel-prototype distance loss (PPD).

    Arguments:
        prototype_similarities: (N, C*K) cosine similarity of every pixel to every prototype.
        target_prototypes: (N,) long, flat index `class * K + k` of each pixel's assigned prototype.
            Targets are real indices (no ignore value), so C*K may exceed 255 safely.
        pixel_weights: (N,) 1 for pixels that take part, 0 for ignored ones.
        temperature: tau of PPC.
    Returns:
        ppc: cross-entropy over all C*K prototypes of similarities / tau, target the assigned prototype.
        ppd: mean of (1 - similarity to the assigned prototype)^2.
    """
    similarities = prototype_similarities.float()
    ppc = F.cross_entropy(similarities / temperature, target_prototypes, reduction="none")
    assigned_similarity = similarities.gather(1, target_prototypes[:, None]).squeeze(1)
    ppd = (1.0 - assigned_similarity).pow(2)
    return _weighted_mean(ppc, pixel_weights), _weighted_mean(ppd, pixel_weights)


__all__ = ["pixel_cross_entropy", "pixel_prototype_losses"]
