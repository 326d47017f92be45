"""Batched clustering and momentum update against plain per-class references written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modeling_protoseg import momentum_update_prototypes, sinkhorn_assign_pixels


def reference_sinkhorn(similarities: torch.Tensor, iterations: int, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official code's per-class Sinkhorn-Knopp on one class's (N, K) similarities, in float64."""
    plan = torch.exp(similarities.double() / epsilon).t()  # (K, N)
    num_prototypes, num_pixels = plan.shape
    plan /= plan.sum()
    for _ in range(iterations):
        plan /= plan.sum(dim=1, keepdim=True)
        plan /= num_prototypes
        plan /= plan.sum(dim=0, keepdim=True)
        plan /= num_pixels
    plan *= num_pixels
    plan = plan.t()  # (N, K)
    return plan.argmax(dim=1), plan


def reference_update(prototypes, embeddings, classes, assignments, momentum):
    """Per-class, per-prototype loop version of paper eq. 14."""
    updated = prototypes.clone()
    for class_index in range(prototypes.shape[0]):
        for prototype_index in range(prototypes.shape[1]):
            members = (classes == class_index) & (assignments == prototype_index)
            if members.any():
                mean = F.normalize(embeddings[members].mean(dim=0), dim=0)
                moved = momentum * prototypes[class_index, prototype_index] + (1 - momentum) * mean
                updated[class_index, prototype_index] = F.normalize(moved, dim=0)
    return updated


def random_problem(num_pixels=300, num_classes=5, num_prototypes=4, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(num_pixels, dim, generator=generator), dim=1)
    prototypes = F.normalize(torch.randn(num_classes, num_prototypes, dim, generator=generator), dim=-1)
    classes = torch.randint(0, num_classes - 1, (num_pixels,), generator=generator)  # last class absent
    similarities = torch.einsum("nd,ckd->nck", embeddings, prototypes)
    own = similarities[torch.arange(num_pixels), classes]  # (N, K)
    return embeddings, prototypes, classes, own


def test_batched_sinkhorn_matches_per_class_reference():
    embeddings, prototypes, classes, own = random_problem()
    assignments, plan = sinkhorn_assign_pixels(own, classes, prototypes.shape[0], iterations=3, epsilon=0.05)
    for class_index in classes.unique():
        members = classes == class_index
        expected_assignments, expected_plan = reference_sinkhorn(own[members], 3, 0.05)
        assert torch.equal(assignments[members], expected_assignments)
        torch.testing.assert_close(plan[members].double(), expected_plan, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(len(classes)))


def test_sinkhorn_spreads_pixels_more_evenly_than_plain_argmax():
    # All pixels prefer prototype 0 a little; equipartition must still use every prototype.
    generator = torch.Generator().manual_seed(1)
    similarities = 0.5 + 0.01 * torch.randn(400, 4, generator=generator)
    similarities[:, 0] += 0.03
    classes = torch.zeros(400, dtype=torch.long)
    assignments, _ = sinkhorn_assign_pixels(similarities, classes, 1, iterations=3, epsilon=0.05)
    counts = torch.bincount(assignments, minlength=4)
    assert (similarities.argmax(dim=1) == 0).float().mean() > 0.8
    assert counts.min() >= 50, counts


def test_sinkhorn_is_finite_for_half_precision_inputs_and_tiny_epsilon():
    _, prototypes, classes, own = random_problem()
    for dtype in (torch.float16, torch.bfloat16):
        assignments, plan = sinkhorn_assign_pixels(own.to(dtype), classes, 5, iterations=3, epsilon=0.05)
        assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
        # exp(1 / 0.05) overflows float16: a naive implementation returns NaN here.
        assert torch.isinf(torch.exp(own.to(torch.float16) / 0.05)).any() or own.max() < 0.55
    assignments, plan = sinkhorn_assign_pixels(own, classes, 5, iterations=3, epsilon=1e-3)
    assert torch.isfinite(plan).all()


def test_batched_update_matches_per_class_reference_and_keeps_unused_prototypes():
    embeddings, prototypes, classes, own = random_problem()
    assignments, _ = sinkhorn_assign_pixels(own, classes, prototypes.shape[0], iterations=3, epsilon=0.05)
    updated = momentum_update_prototypes(prototypes, embeddings, classes, assignments, momentum=0.9)
    expected = reference_update(prototypes, embeddings, classes, assignments, 0.9)
    torch.testing.assert_close(updated, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(updated[-1], prototypes[-1])  # the absent class is untouched
    torch.testing.assert_close(updated.norm(dim=-1), torch.ones(prototypes.shape[:2]))


def test_update_weights_exclude_pixels_like_removing_them():
    embeddings, prototypes, classes, own = random_problem()
    assignments, _ = sinkhorn_assign_pixels(own, classes, prototypes.shape[0], iterations=3, epsilon=0.05)
    keep = torch.arange(len(classes)) % 3 != 0
    weighted = momentum_update_prototypes(
        prototypes, embeddings, classes, assignments, momentum=0.5, pixel_weights=keep.float()
    )
    subset = momentum_update_prototypes(prototypes, embeddings[keep], classes[keep], assignments[keep], momentum=0.5)
    torch.testing.assert_close(weighted, subset)


def test_momentum_zero_puts_prototype_on_the_mean_direction():
    embeddings = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    prototypes = F.normalize(torch.tensor([[[1.0, -1.0]]]), dim=-1)
    classes = torch.zeros(2, dtype=torch.long)
    updated = momentum_update_prototypes(prototypes, embeddings, classes, torch.zeros(2, dtype=torch.long), momentum=0.0)
    torch.testing.assert_close(updated[0, 0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
