"""Within-class online clustering (Sinkhorn-Knopp) and the momentum update of the prototypes.

Pure tensor functions, batched over all classes at once: pixels carry their class index and every
per-class sum is a scatter (`index_add_` / `scatter_reduce_`) into a (num_groups, K) table, so the cost
grows with the number of pixels, never with a Python loop over classes, and nothing waits on the host.

When `torch.distributed` is initialised, the per-prototype marginals of the Sinkhorn iterations and the
per-prototype feature sums/counts of the update are all-reduced, so every process computes exactly what
one process would compute on the global batch, and all processes keep identical prototypes
(`sinkhorn_assign_pixels(..., local=True)` clusters one process's pixels alone, as class enrolment does).
All arithmetic here runs in float32 whatever the input dtype (autocast is disabled locally).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_(tensor: torch.Tensor, op: "dist.ReduceOp.RedOpType") -> torch.Tensor:
    """In-place all-reduce across processes when running distributed; a no-op otherwise."""
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


def _group_logsumexp(
    log_values: torch.Tensor, pixel_groups: torch.Tensor, num_groups: int, *, local: bool = False
) -> torch.Tensor:
    """log(sum over the pixels of each group of exp(log_values)), per prototype, across processes (this
    process's pixels only with `local`).

    Arguments:
        log_values: (N, K) log transport plan.
        pixel_groups: (N,) group (class) index of every pixel, in [0, num_groups).
    Returns:
        (num_groups, K); -inf where a group has no pixel on any process.
    """
    num_pixels, num_prototypes = log_values.shape
    index = pixel_groups[:, None].expand(num_pixels, num_prototypes)
    maxima = log_values.new_full((num_groups, num_prototypes), float("-inf"))
    maxima.scatter_reduce_(0, index, log_values, reduce="amax", include_self=True)
    if not local:
        _all_reduce_(maxima, dist.ReduceOp.MAX)
    # Groups absent everywhere have max -inf: shift them by 0 so exp() stays finite (their sum is 0).
    maxima = torch.where(torch.isfinite(maxima), maxima, torch.zeros_like(maxima))
    sums = log_values.new_zeros((num_groups, num_prototypes))
    sums.index_add_(0, pixel_groups, torch.exp(log_values - maxima[pixel_groups]))
    if not local:
        _all_reduce_(sums, dist.ReduceOp.SUM)
    return maxima + torch.log(sums)


@torch.no_grad()
def sinkhorn_assign_pixels(
    similarities: torch.Tensor,
    pixel_groups: torch.Tensor,
    num_groups: int,
    *,
    iterations: int = 3,
    epsilon: float = 0.05,
    local: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign each pixel to one of its class's K prototypes under an equipartition constraint.

    Solves the entropy-regularised transport of paper eq. 8-10 for every class at once, with
    `iterations` Sinkhorn-Knopp steps on exp(similarities / epsilon), in the log domain (no fp16/bf16
    overflow, no underflow for small epsilon). Each step first gives every prototype of a class the
    same total mass over that class's pixels, then gives every pixel a total mass of 1.

    Arguments:
        similarities: (N, K) cosine similarity of each pixel to the K prototypes of its own class.
        pixel_groups: (N,) long, class index of each pixel in [0, num_groups).
        num_groups: number of classes (rows of the marginal table).
        iterations: Sinkhorn-Knopp iterations (paper: 3).
        epsilon: entropy weight kappa (paper: 0.05).
        local: cluster this process's pixels alone, with no collective, even inside an initialised process group
            (e.g. class enrolment on one process); by default the marginals are all-reduced when distributed.
    Returns:
        assignments: (N,) long, index in [0, K) of the prototype each pixel is assigned to (argmax of the plan).
        plan: (N, K) float32 transport plan, each row summing to 1.
    """
    with torch.autocast(device_type=similarities.device.type, enabled=False):
        log_plan = similarities.float() / epsilon
        for _ in range(iterations):
            log_plan = log_plan - _group_logsumexp(log_plan, pixel_groups, num_groups, local=local)[pixel_groups]
            log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True)
        plan = torch.exp(log_plan)
    return plan.argmax(dim=1), plan


@torch.no_grad()
def assigned_pixel_sums(
    embeddings: torch.Tensor, flat_index: torch.Tensor, pixel_weights: torch.Tensor, num_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum and weight total of the pixels assigned to each prototype, across processes.

    Arguments:
        embeddings: (N, D) pixel embeddings; flat_index: (N,) long prototype slot `class * K + k`.
        pixel_weights: (N,) weights (0 for pixels that take no part).
        num_slots: C * K.
    Returns:
        feature_sums: (C*K, D) float32; counts: (C*K,) float32, both all-reduced when distributed.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        embeddings, pixel_weights = embeddings.float(), pixel_weights.float()
        feature_sums = embeddings.new_zeros((num_slots, embeddings.shape[1]))
        feature_sums.index_add_(0, flat_index, embeddings * pixel_weights[:, None])
        counts = embeddings.new_zeros(num_slots)
        counts.index_add_(0, flat_index, pixel_weights)
    _all_reduce_(feature_sums, dist.ReduceOp.SUM)
    _all_reduce_(counts, dist.ReduceOp.SUM)
    return feature_sums, counts


@torch.no_grad()
def update_pixel_sums(
    embeddings: torch.Tensor,
    flat_index: torch.Tensor,
    labelled: torch.Tensor,
    correct: torch.Tensor | None,
    use_all_pixels: torch.Tensor,
    num_slots: int,
    *,
    num_prototypes: int,
    fall_back_to_all: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prototype sums of the pixels that move each prototype, under a correct-pixels rule.

    A prototype is moved by its correctly classified labelled pixels; by all its labelled pixels where
    `use_all_pixels` (e.g. its first update) or, with `fall_back_to_all`, when none of its class's labelled
    pixels is classified right on any process (so a class that is never predicted right still moves its
    prototypes, while every class predicted right somewhere keeps the correct-pixels rule).
    One scatter into 2 * C*K slots (correct pixels to slot s, wrong ones to s + C*K), one collective.

    Arguments:
        embeddings: (N, D); flat_index: (N,) long prototype slot `class * K + k`; labelled: (N,) bool.
        correct: (N,) bool, the pixel's predicted class is its label; None: every labelled pixel counts.
        use_all_pixels: (C*K,) bool, prototypes that take all their labelled pixels.
        num_prototypes: K, prototypes per class (slot `class * K + k`).
    Returns:
        feature_sums: (C*K, D) float32; counts: (C*K,) float32, all-reduced when distributed.
    """
    if correct is None:
        return assigned_pixel_sums(embeddings, flat_index, labelled, num_slots)
    split_sums, split_counts = assigned_pixel_sums(
        embeddings, flat_index + num_slots * (~correct).long(), labelled, 2 * num_slots
    )
    correct_sums, correct_counts = split_sums[:num_slots], split_counts[:num_slots]
    all_sums, all_counts = correct_sums + split_sums[num_slots:], correct_counts + split_counts[num_slots:]
    if fall_back_to_all:
        class_without_correct = correct_counts.view(-1, num_prototypes).sum(dim=1) == 0  # (C,)
        use_all_pixels = use_all_pixels | class_without_correct.repeat_interleave(num_prototypes)
    feature_sums = torch.where(use_all_pixels[:, None], all_sums, correct_sums)
    return feature_sums, torch.where(use_all_pixels, all_counts, correct_counts)


@torch.no_grad()
def move_prototypes(
    prototypes: torch.Tensor,
    feature_sums: torch.Tensor,
    counts: torch.Tensor,
    momentum: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`p <- normalise(momentum * p + (1 - momentum) * normalise(sum))` for every prototype that received
    pixels (counts > 0) and whose sum is finite; the others are returned unchanged.

    A non-finite sum (a NaN/Inf pixel in the batch) never reaches a prototype. The sums are all-reduced,
    so every process takes the same decision.

    Arguments:
        prototypes: (C, K, D); feature_sums: (C*K, D); counts: (C*K,).
        momentum: mu in [0, 1), a float or a (C*K,) tensor (e.g. 0 for a prototype's first update).
    Returns:
        updated: (C, K, D) float32 (a new tensor); moved: (C*K,) bool, which prototypes moved.
    """
    shape = prototypes.shape
    with torch.autocast(device_type=prototypes.device.type, enabled=False):
        flat_prototypes = prototypes.float().reshape(-1, shape[-1])  # (C*K, D)
        if isinstance(momentum, torch.Tensor):
            momentum = momentum.float()[:, None]
        mean_directions = F.normalize(feature_sums, dim=-1)  # direction of the mean = direction of the sum
        moved_prototypes = F.normalize(momentum * flat_prototypes + (1.0 - momentum) * mean_directions, dim=-1)
        moved = (counts > 0) & torch.isfinite(feature_sums).all(dim=-1)
        updated = torch.where(moved[:, None], moved_prototypes, flat_prototypes)
    return updated.reshape(shape), moved


@torch.no_grad()
def momentum_update_prototypes(
    prototypes: torch.Tensor,
    embeddings: torch.Tensor,
    pixel_classes: torch.Tensor,
    assignments: torch.Tensor,
    *,
    momentum: float,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move every prototype towards the mean embedding of the pixels assigned to it (paper eq. 14).

    `p <- normalise(momentum * p + (1 - momentum) * normalise(mean of assigned embeddings))`; a prototype
    that received no pixel (on any process), or whose pixels are not finite, is returned unchanged.

    Arguments:
        prototypes: (C, K, D) current prototypes, L2-normalised.
        embeddings: (N, D) L2-normalised pixel embeddings.
        pixel_classes: (N,) long class of each pixel, in [0, C).
        assignments: (N,) long prototype index within the class, in [0, K).
        momentum: mu in [0, 1).
        pixel_weights: (N,) optional 0/1 weights; pixels with weight 0 take no part (ignored or
            misclassified pixels), which avoids data-dependent indexing and its host synchronisation.
    Returns:
        (C, K, D) float32 updated prototypes (a new tensor; the input is not modified).
    """
    num_classes, num_prototypes, _ = prototypes.shape
    if pixel_weights is None:
        pixel_weights = embeddings.new_ones(embeddings.shape[0])
    flat_index = pixel_classes * num_prototypes + assignments  # (N,) in [0, C*K)
    feature_sums, counts = assigned_pixel_sums(embeddings, flat_index, pixel_weights, num_classes * num_prototypes)
    updated, _ = move_prototypes(prototypes, feature_sums, counts, momentum)
    return updated


@dataclass
class PixelAssignment:
    """Result of the within-class clustering, all (N,) over the pixels at feature resolution."""

    pixel_labels: torch.Tensor  # class index or the ignore index
    labelled: torch.Tensor  # bool, not ignored
    pixel_classes: torch.Tensor  # class index, 0 for ignored pixels (which carry weight 0 everywhere)
    assignments: torch.Tensor  # prototype index within the class, in [0, K)
    own_class_similarities: torch.Tensor  # (N, K) float32 similarity to the K prototypes of the pixel's class
    pixel_groups: torch.Tensor  # class of each labelled pixel, C for ignored ones (a spare group of no class)
    target_prototypes: torch.Tensor  # flat index `class * K + k` of the assigned prototype, in [0, C*K)
    num_classes: int
    num_prototypes: int


@torch.no_grad()
def assign_pixels_to_prototypes(
    similarities: torch.Tensor,
    pixel_labels: torch.Tensor,
    num_prototypes: int,
    *,
    ignore_index: int,
    iterations: int = 3,
    epsilon: float = 0.05,
) -> PixelAssignment:
    """Within-class online clustering of a training step: each labelled pixel goes to one of its class's K
    prototypes (Sinkhorn over all classes at once; ignored pixels form a spare group C that weighs on no class).

    Arguments:
        similarities: (N, C*K) float32 similarity of every pixel to every prototype.
        pixel_labels: (N,) long labels at feature resolution (class index or `ignore_index`).
    """
    num_classes = similarities.shape[1] // num_prototypes
    labelled = pixel_labels != ignore_index
    pixel_classes = torch.where(labelled, pixel_labels, torch.zeros_like(pixel_labels))  # (N,) in [0, C)
    own_class_similarities = similarities.detach().view(-1, num_classes, num_prototypes)
    own_class_similarities = own_class_similarities.gather(
        1, pixel_classes[:, None, None].expand(-1, 1, num_prototypes)
    ).squeeze(1)  # (N, K)
    groups = torch.where(labelled, pixel_classes, torch.full_like(pixel_classes, num_classes))
    assignments, _ = sinkhorn_assign_pixels(
        own_class_similarities, groups, num_classes + 1, iterations=iterations, epsilon=epsilon
    )
    return PixelAssignment(
        pixel_labels, labelled, pixel_classes, assignments, own_class_similarities, groups,
        pixel_classes * num_prototypes + assignments, num_classes, num_prototypes,
    )  # fmt: skip


@torch.no_grad()
def update_prototype_bank_(
    bank: "torch.nn.Module",
    pixel_embeddings: torch.Tensor,
    pixel_logits: torch.Tensor,
    assignment: PixelAssignment,
    *,
    momentum: float,
    prototype_init: str,
    update_pixels: str,
) -> None:
    """The momentum update of a training step (paper eq. 14), in place on `bank`'s buffers (`prototypes`,
    `update_counts`, `idle_steps`, `skipped_nonfinite_updates`).

    Which pixels move a prototype: every labelled pixel for a prototype that never moved yet (with
    `prototype_init="data"`, at momentum 0: it starts at the mean of its first pixels), else as `update_pixels`
    says: its correctly classified pixels (`"correct"`, the paper), those or all its labelled pixels when none of
    its class's pixels is correct (`"correct_else_all"`), or all of them (`"all"`).

    Arguments:
        pixel_embeddings: (N, D) unit embeddings; pixel_logits: (N, C) logits of the step.
    """
    num_classes, num_prototypes = assignment.num_classes, assignment.num_prototypes
    num_slots = num_classes * num_prototypes
    first_update = (bank.update_counts == 0).reshape(-1)  # (C*K,)
    if prototype_init == "random":
        first_update = torch.zeros_like(first_update)
    correct = None if update_pixels == "all" else pixel_logits.argmax(dim=-1) == assignment.pixel_labels  # (N,)
    feature_sums, counts = update_pixel_sums(
        pixel_embeddings.detach(), assignment.target_prototypes, assignment.labelled, correct, first_update,
        num_slots, num_prototypes=num_prototypes, fall_back_to_all=update_pixels == "correct_else_all",
    )  # fmt: skip
    step_momentum = torch.where(first_update, 0.0, momentum)  # (C*K,)
    updated, moved = move_prototypes(bank.prototypes, feature_sums, counts, step_momentum)
    bank.prototypes.copy_(updated)
    bank.skipped_nonfinite_updates += ((counts > 0) & ~moved).sum()

    class_present = labelled_pixels_per_class(assignment.pixel_groups, num_classes + 1)[:num_classes] > 0
    moved = moved.view(num_classes, num_prototypes)
    bank.update_counts += moved.long()
    bank.idle_steps.copy_(torch.where(moved, 0, bank.idle_steps + class_present[:, None].long()))


@torch.no_grad()
def labelled_pixels_per_class(pixel_groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups,) float32 number of pixels of each group (class) across processes."""
    counts = torch.zeros(num_groups, device=pixel_groups.device)
    counts.index_add_(0, pixel_groups, torch.ones_like(pixel_groups, dtype=torch.float32))
    return _all_reduce_(counts, dist.ReduceOp.SUM)


__all__ = [
    "PixelAssignment",
    "assign_pixels_to_prototypes",
    "update_prototype_bank_",
    "assigned_pixel_sums",
    "labelled_pixels_per_class",
    "momentum_update_prototypes",
    "move_prototypes",
    "sinkhorn_assign_pixels",
    "update_pixel_sums",
]
