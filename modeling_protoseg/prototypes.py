"""Within-class online clustering (Sinkhorn-Knopp) and the momentum update of the prototypes.

Pure tensor functions, batched over all classes at once: pixels carry their class index and every
per-class sum is a scatter (`index_add_` / `scatter_reduce_`) into a (num_groups, K) table, so the cost
grows with the number of pixels, never with a Python loop over classes, and nothing waits on the host.

When `torch.distributed` is initialised, the per-prototype marginals of the Sinkhorn iterations and the
per-prototype feature sums/counts of the update are all-reduced, so every process computes exactly what
one process would compute on the global batch, and all processes keep identical prototypes.
All arithmetic here runs in float32 whatever the input dtype (autocast is disabled locally).
"""

from __future__ import annotations

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


def _group_logsumexp(log_values: torch.Tensor, pixel_groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log(sum over the pixels of each group of exp(log_values)), per prototype, across processes.

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
    _all_reduce_(maxima, dist.ReduceOp.MAX)
    # Groups absent everywhere have max -inf: shift them by 0 so exp() stays finite (their sum is 0).
    maxima = torch.where(torch.isfinite(maxima), maxima, torch.zeros_like(maxima))
    sums = log_values.new_zeros((num_groups, num_prototypes))
    sums.index_add_(0, pixel_groups, torch.exp(log_values - maxima[pixel_groups]))
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
    Returns:
        assignments: (N,) long, index in [0, K) of the prototype each pixel is assigned to (argmax of the plan).
        plan: (N, K) float32 transport plan, each row summing to 1.
    """
    with torch.autocast(device_type=similarities.device.type, enabled=False):
        log_plan = similarities.float() / epsilon
        for _ in range(iterations):
            log_plan = log_plan - _group_logsumexp(log_plan, pixel_groups, num_groups)[pixel_groups]
            log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True)
        plan = torch.exp(log_plan)
    return plan.argmax(dim=1), plan


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
    that received no pixel (on any process) is returned unchanged.

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
    num_classes, num_prototypes, dim = prototypes.shape
    with torch.autocast(device_type=prototypes.device.type, enabled=False):
        prototypes = prototypes.float()
        embeddings = embeddings.float()
        if pixel_weights is None:
            pixel_weights = embeddings.new_ones(embeddings.shape[0])
        pixel_weights = pixel_weights.float()
        flat_index = pixel_classes * num_prototypes + assignments  # (N,) in [0, C*K)

        feature_sums = embeddings.new_zeros((num_classes * num_prototypes, dim))
        feature_sums.index_add_(0, flat_index, embeddings * pixel_weights[:, None])
        counts = embeddings.new_zeros(num_classes * num_prototypes)
        counts.index_add_(0, flat_index, pixel_weights)
        _all_reduce_(feature_sums, dist.ReduceOp.SUM)
        _all_reduce_(counts, dist.ReduceOp.SUM)

        flat_prototypes = prototypes.reshape(num_classes * num_prototypes, dim)
        mean_directions = F.normalize(feature_sums, dim=-1)  # direction of the mean = direction of the sum
        moved = F.normalize(momentum * flat_prototypes + (1.0 - momentum) * mean_directions, dim=-1)
        updated = torch.where(counts[:, None] > 0, moved, flat_prototypes)
    return updated.reshape(num_classes, num_prototypes, dim)


__all__ = ["sinkhorn_assign_pixels", "momentum_update_prototypes"]
