"""The fused class-score/PPC/PPD function against plain autograd on the same formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modeling_protoseg.losses import class_scores_and_prototype_losses, pixel_cross_entropy


def test_fused_scores_and_losses_match_plain_autograd_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    num_pixels, num_classes, num_prototypes = 50, 6, 3
    similarities = torch.rand(num_pixels, num_classes * num_prototypes, generator=generator) * 2 - 1
    targets = torch.randint(0, num_classes * num_prototypes, (num_pixels,), generator=generator)
    weights = (torch.rand(num_pixels, generator=generator) > 0.2).float()
    upstream = torch.randn(num_pixels, num_classes, generator=generator)  # a gradient into the class scores

    fused_input = similarities.clone().requires_grad_(True)
    scores, ppc, ppd = class_scores_and_prototype_losses(
        fused_input, targets, weights, num_classes=num_classes, temperature=0.1
    )
    ((scores * upstream).sum() + 0.3 * ppc + 0.7 * ppd).backward()

    plain_input = similarities.clone().requires_grad_(True)
    plain_scores = plain_input.view(num_pixels, num_classes, num_prototypes).amax(dim=-1)
    plain_ppc = (F.cross_entropy(plain_input / 0.1, targets, reduction="none") * weights).sum() / weights.sum()
    assigned = plain_input.gather(1, targets[:, None]).squeeze(1)
    plain_ppd = ((1 - assigned) ** 2 * weights).sum() / weights.sum()
    ((plain_scores * upstream).sum() + 0.3 * plain_ppc + 0.7 * plain_ppd).backward()

    torch.testing.assert_close(scores, plain_scores)
    torch.testing.assert_close(ppc, plain_ppc)
    torch.testing.assert_close(ppd, plain_ppd)
    torch.testing.assert_close(fused_input.grad, plain_input.grad, rtol=1e-5, atol=1e-6)


def test_fused_losses_are_zero_and_finite_when_every_pixel_is_ignored():
    similarities = torch.rand(10, 8, requires_grad=True)
    scores, ppc, ppd = class_scores_and_prototype_losses(
        similarities, torch.zeros(10, dtype=torch.long), torch.zeros(10), num_classes=4, temperature=0.1
    )
    assert ppc.item() == 0.0 and ppd.item() == 0.0
    (ppc + ppd + scores.sum()).backward()
    assert torch.isfinite(similarities.grad).all()


def test_pixel_cross_entropy_matches_torch_with_ignore_index():
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 20, 24))
    labels[0, :3] = 255
    expected = F.cross_entropy(
        F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False), labels, ignore_index=255
    )
    torch.testing.assert_close(pixel_cross_entropy(logits, labels, 255), expected)
