"""The clustering and prototype update of a ProtoSeg training step, as separately timed callables.

The package runs both inside `ProtoSegForSemanticSegmentation.forward` (training mode, with labels) through
the public `modeling_protoseg.prototypes.assign_pixels_to_prototypes` and `update_prototype_bank_`;
`cluster_pixels` and `update_prototypes` call the same two functions on a captured step.
`capture_training_step` checks the replay against the public forward on every use: one training forward on a
copy of the model moves its prototypes, and the replay, fed that forward's own embeddings and logits, must
move a copy of the prototype bank taken before it to the same values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modeling_protoseg.prototypes import (
    PixelAssignment,
    assign_pixels_to_prototypes,
    momentum_update_prototypes,
    sinkhorn_assign_pixels,
    update_prototype_bank_,
)


PixelClusters = PixelAssignment  # the clustering result, as the package's forward builds it


@torch.no_grad()
def cluster_pixels(config, similarities: torch.Tensor, labels: torch.Tensor, height: int, width: int) -> PixelClusters:
    """The forward's clustering: labels to feature resolution (nearest), then the package's
    `assign_pixels_to_prototypes`.

    Arguments:
        similarities: (N, C*K) float32 similarities of the step; labels: (B, H, W) at input resolution.
    """
    pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest").long().reshape(-1)
    return assign_pixels_to_prototypes(
        similarities, pixel_labels, config.num_prototypes_per_class, ignore_index=config.semantic_loss_ignore_index,
        iterations=config.sinkhorn_iterations, epsilon=config.sinkhorn_epsilon,
    )  # fmt: skip


@torch.no_grad()
def update_prototypes(
    config, bank: torch.nn.Module, pixel_embeddings: torch.Tensor, pixel_logits: torch.Tensor, clusters: PixelClusters
) -> None:
    """The forward's momentum update of a prototype bank (`model.prototype_bank` or a copy), in place: the
    package's `update_prototype_bank_`."""
    update_prototype_bank_(
        bank, pixel_embeddings, pixel_logits, clusters, momentum=config.prototype_momentum,
        prototype_init=config.prototype_init, update_pixels=config.prototype_update_pixels,
    )  # fmt: skip


@dataclass
class TrainingStepCapture:
    """What one training forward clusters and updates with, captured through the public forward."""

    pixel_embeddings: torch.Tensor  # (N, D)
    pixel_logits: torch.Tensor  # (N, C)
    similarities: torch.Tensor  # (N, C*K), against the prototypes before the step
    height: int
    width: int
    bank: torch.nn.Module  # a copy of the prototype bank before the step
    clusters: PixelClusters


@torch.no_grad()
def capture_training_step(model, pixel_values: torch.Tensor, labels: torch.Tensor) -> TrainingStepCapture:
    """Run one training forward on a copy of `model` (which is left untouched), capture its embeddings and
    logits, and check that the rebuilt clustering + update moves the prototypes as the forward did."""
    config = model.config
    reference = copy.deepcopy(model).train()
    bank = copy.deepcopy(reference.prototype_bank)
    outputs = reference(pixel_values=pixel_values, labels=labels, output_pixel_embeddings=True)
    _, embedding_dim, height, width = outputs.pixel_embeddings.shape
    pixel_embeddings = outputs.pixel_embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)
    pixel_logits = outputs.logits.permute(0, 2, 3, 1).reshape(-1, config.num_labels)
    similarities = pixel_embeddings @ bank.prototypes.reshape(-1, embedding_dim).T
    clusters = cluster_pixels(config, similarities, labels, height, width)
    capture = TrainingStepCapture(pixel_embeddings, pixel_logits, similarities, height, width, bank, clusters)
    rebuilt = copy.deepcopy(bank)
    update_prototypes(config, rebuilt, pixel_embeddings, pixel_logits, clusters)
    difference = (rebuilt.prototypes - reference.prototypes).abs().max().item()
    if difference > 1e-5 or not torch.equal(rebuilt.update_counts, reference.prototype_bank.update_counts):
        raise RuntimeError(f"the rebuilt clustering + prototype update no longer matches the package's forward "
                           f"(prototypes differ by up to {difference:.3g}): update benchmarks/clustering.py")
    return capture


def clustering_and_update(
    model, pixel_values: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[], object], Callable[[], None]]:
    """(cluster, update) callables replaying the step's clustering and prototype update on one batch (on a
    copy of the prototype bank: `model` is not changed)."""
    capture = capture_training_step(model, pixel_values, labels)

    def cluster() -> PixelClusters:
        return cluster_pixels(model.config, capture.similarities, labels, capture.height, capture.width)

    def update() -> None:
        update_prototypes(model.config, capture.bank, capture.pixel_embeddings, capture.pixel_logits, capture.clusters)

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
