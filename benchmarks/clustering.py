"""The clustering and prototype-update part of a ProtoSeg training step, as separately timed callables.

`clustering_and_update(model, pixel_values, labels)` runs one real forward to capture the embeddings and
similarities, then returns the model's own no-grad clustering (labels to feature resolution, own-class
similarities, batched Sinkhorn over all classes) and prototype update (correct-only weights, momentum
update) on them, as two callables.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from modeling_protoseg.prototypes import momentum_update_prototypes, sinkhorn_assign_pixels


def clustering_and_update(
    model, pixel_values: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[], object], Callable[[], None]]:
    """(cluster, update) callables replaying the step's clustering and prototype update on one batch,
    through the model's own `_assign_pixels_to_prototypes` and `_update_prototypes`."""
    config = model.config
    num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
    model.train()
    with torch.no_grad():
        embeddings = model.projection_head(model.decode_head(list(model._encode(pixel_values))))
        batch_size, embedding_dim, height, width = embeddings.shape
        rows = embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)
        similarities = rows @ model.prototypes.reshape(num_classes * num_prototypes, embedding_dim).T
        pixel_logits = model.class_score_norm(similarities.view(-1, num_classes, num_prototypes).amax(dim=-1))

    def cluster():
        return model._assign_pixels_to_prototypes(rows, similarities, labels, height, width)

    assignment = cluster()

    def update() -> None:
        model._update_prototypes(rows, pixel_logits, assignment)

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
