"""The clustering and prototype-update part of a ProtoSeg training step, as separately timed callables.

`clustering_and_update(model, pixel_values, labels)` runs one real forward to capture the embeddings and
similarities, then returns the exact no-grad work `ProtoSegForSemanticSegmentation._learn_prototypes`
does on them (labels to feature resolution, own-class similarities, batched Sinkhorn over all classes,
the correct-only weights, the momentum update), split in two callables.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from modeling_protoseg.prototypes import momentum_update_prototypes, sinkhorn_assign_pixels


def clustering_and_update(
    model, pixel_values: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[], tuple[torch.Tensor, ...]], Callable[[], None]]:
    """(cluster, update) callables replaying the step's clustering and prototype update on one batch."""
    config = model.config
    num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
    model.train()
    with torch.no_grad():
        embeddings = model.projection_head(model.decode_head(list(model._encode(pixel_values))))
        batch_size, embedding_dim, height, width = embeddings.shape
        rows = embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)
        similarities = rows @ model.prototypes.reshape(num_classes * num_prototypes, embedding_dim).T
        pixel_logits = model.class_score_norm(similarities.view(-1, num_classes, num_prototypes).amax(dim=-1))

    @torch.no_grad()
    def cluster() -> tuple[torch.Tensor, ...]:
        pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest")
        pixel_labels = pixel_labels.long().reshape(-1)
        labelled = pixel_labels != config.semantic_loss_ignore_index
        pixel_classes = torch.where(labelled, pixel_labels, torch.zeros_like(pixel_labels))
        own = similarities.view(-1, num_classes, num_prototypes)
        own = own.gather(1, pixel_classes[:, None, None].expand(-1, 1, num_prototypes)).squeeze(1)
        groups = torch.where(labelled, pixel_classes, torch.full_like(pixel_classes, num_classes))
        assignments, _ = sinkhorn_assign_pixels(
            own, groups, num_classes + 1, iterations=config.sinkhorn_iterations, epsilon=config.sinkhorn_epsilon
        )
        return pixel_labels, labelled, pixel_classes, assignments

    pixel_labels, labelled, pixel_classes, assignments = cluster()

    @torch.no_grad()
    def update() -> None:
        weights = labelled
        if config.update_prototypes_with_correct_only:
            weights = weights & (pixel_logits.argmax(dim=-1) == pixel_labels)
        updated = momentum_update_prototypes(
            model.prototypes, rows, pixel_classes, assignments,
            momentum=config.prototype_momentum, pixel_weights=weights.float(),
        )
        model.prototypes.copy_(updated)

    return cluster, update


def paper_clustering_problem(
    num_pixels: int = 10_000, num_prototypes: int = 10, embedding_dim: int = 256, *, device: torch.device
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The paper's figure: cluster 10,000 pixels of one class into 10 prototypes (Sinkhorn, 3 iterations,
    kappa 0.05), and the momentum update of those prototypes; returns (cluster, update) callables."""
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(num_pixels, embedding_dim, generator=generator), dim=1).to(device)
    prototypes = F.normalize(torch.randn(1, num_prototypes, embedding_dim, generator=generator), dim=-1).to(device)
    classes = torch.zeros(num_pixels, dtype=torch.long, device=device)

    def cluster():
        similarities = embeddings @ prototypes[0].T  # (N, K)
        return sinkhorn_assign_pixels(similarities, classes, 1, iterations=3, epsilon=0.05)

    assignments, _ = cluster()

    def update():
        return momentum_update_prototypes(prototypes, embeddings, classes, assignments, momentum=0.999)

    return cluster, update
