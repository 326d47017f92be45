"""What the card says about a ProtoSeg checkpoint's method, read from its config.json and weights: how a pixel's
class is decided (exactly what the configured class-score normalisation computes), and where the configuration
departs from the paper (Zhou et al., CVPR 2022) and from the official code (github.com/tfzhou/ProtoSeg).

Reference values: the paper's K = 10, mu = 0.999, kappa = 0.05, 3 Sinkhorn iterations, tau = 0.1, lambda1 =
lambda2 = 0.01, LayerNorm over the class scores, prototypes moved by momentum from a random start with the
correctly classified pixels assigned to them. The official code's released config (HRNet-W48, Cityscapes) uses a PPD
weight of 0.001, embeddings of D = 720 (the width of HRNet-W48's concatenated features), a projection head
1x1 conv -> ReLU -> 1x1 conv, and BatchNorm synchronised across GPUs (`bn_type: torchsyncbn`).
"""

from __future__ import annotations

import math
from typing import Any

from .card_inputs import CardInputs
from .checkpoint import CheckpointFacts

# config.json key -> (symbol shown, the paper's value), for the knobs whose paper value is stated.
PAPER_VALUES: dict[str, tuple[str, float]] = {
    "num_prototypes_per_class": ("prototypes per class K", 10),
    "prototype_momentum": ("prototype momentum μ", 0.999),
    "sinkhorn_iterations": ("Sinkhorn iterations", 3),
    "sinkhorn_epsilon": ("Sinkhorn κ", 0.05),
    "ppc_temperature": ("PPC temperature τ", 0.1),
    "ppc_loss_weight": ("PPC loss weight λ1", 0.01),
}
PAPER_PPD_LOSS_WEIGHT = 0.01
OFFICIAL_PPD_LOSS_WEIGHT = 0.001
OFFICIAL_EMBEDDING_DIM = 720
LAYER_NORM_EPS = 1e-5  # ProtoSegClassScoreNorm's


def _same(value: Any, reference: float) -> bool:
    return isinstance(value, (int, float)) and math.isclose(float(value), reference, rel_tol=1e-9)


def pixel_class_rule(facts: CheckpointFacts) -> str:
    """The exact rule from a pixel's embedding to its class under this checkpoint's `class_score_norm`."""
    method = facts.method or {}
    classes, k = len(facts.class_names), facts.num_prototypes_per_class
    scores = (
        f"The encoder, decoder and projection head map every pixel (at 1/{facts.output_stride} of the input "
        f"resolution) to a unit-length embedding `e` of size D = {facts.embedding_dim}. Its score for class `c` is the "
        f"cosine similarity to the nearest of that class's K = {k} prototypes, `s_c = max_k cos(e, p_ck)`."
    )
    pick = (
        "The logits are upsampled bilinearly to the image size and each pixel takes the class with the highest logit "
        "(`post_process_semantic_segmentation`, as the pipeline does)."
    )
    nearest = (
        "This is not always the class of the pixel's nearest prototype; `model(pixel_values, "
        "output_nearest_prototypes=True)` returns that one separately (`nearest_prototype_class`, "
        "`nearest_prototype_index`)."
    )
    norm = method.get("class_score_norm")
    if norm == "affine":
        scale = method.get("class_score_scale")
        start = "`b_c` started at 0"
        if isinstance(scale, (int, float)):
            start = f"`a_c` started at {scale:g} and `b_c` at 0"
        rule = (
            "The logits are a learned scale and bias per class, `logit_c = a_c * s_c + b_c` (`class_score_norm="
            f'"affine"`; {start}, both trained). Because `a_c` and `b_c` differ between classes, a class can win with '
            "a lower score than another's."
        )
    elif norm == "layer_norm":
        formula = f"logit_c = g_c * (s_c - mean(s)) / sqrt(var(s) + {LAYER_NORM_EPS:g}) + b_c"
        rule = (
            f"The logits are a LayerNorm over the C = {classes} scores of the pixel, `{formula}` (mean and variance "
            'over the classes; `class_score_norm="layer_norm"`, as the official code; `g_c`, `b_c` learned). Because '
            "`g_c` and `b_c` differ between classes, a class can win with a lower score than another's."
        )
        if classes == 2:
            rule += (
                " With two classes the normalised scores are -1 and +1 whenever they differ by more than about "
                "0.01, so the logits take the same two values for every such pixel: only which class scores higher "
                "matters."
            )
    else:
        return f"{scores} {pick}"
    return f"{scores} {rule} {pick} {nearest}"


def _paper_knob_items(method: dict[str, Any]) -> list[str]:
    items = []
    for key, (label, paper_value) in PAPER_VALUES.items():
        value = method.get(key)
        if value is not None and not _same(value, paper_value):
            items.append(f"{label[0].upper()}{label[1:]} = {value:g} (`{key}`); paper: {paper_value:g}.")
    return items


def _ppd_item(weight: Any) -> str | None:
    if not isinstance(weight, (int, float)):
        return None
    if _same(weight, PAPER_PPD_LOSS_WEIGHT):
        return (
            f"PPD loss weight λ2 = {weight:g}, the paper's value; the official code's config uses "
            f"{OFFICIAL_PPD_LOSS_WEIGHT:g}."
        )
    if _same(weight, OFFICIAL_PPD_LOSS_WEIGHT):
        return (
            f"PPD loss weight λ2 = {weight:g}, as the official code's config; the paper says {PAPER_PPD_LOSS_WEIGHT:g}."
        )
    return (
        f"PPD loss weight λ2 = {weight:g}; paper: {PAPER_PPD_LOSS_WEIGHT:g}, official code: "
        f"{OFFICIAL_PPD_LOSS_WEIGHT:g}."
    )


def _design_items(inputs: CardInputs) -> list[str]:
    facts, method = inputs.facts, inputs.facts.method or {}
    items = []
    if method.get("class_score_norm") == "affine":
        items.append(
            '**Class scores to logits**: a learned scale and bias per class (`class_score_norm="affine"`); paper and '
            'official code: a LayerNorm over the C class scores (`"layer_norm"`), which for two classes maps any two '
            "scores more than about 0.01 apart to -1 and +1 (the same confidence for every pixel, a vanishing "
            "gradient)."
        )
    if method.get("prototype_init") == "data":
        items.append(
            '**Prototype initialisation**: a prototype\'s first update sets it to the mean of the labelled pixels '
            'assigned to it (`prototype_init="data"`); paper and official code: momentum updates from a random start '
            '(`"random"`).'
        )
    update = method.get("prototype_update_pixels")
    if update == "correct_else_all":
        items.append(
            "**Pixels that move the prototypes**: the correctly classified pixels assigned to them, except in a class "
            "none of whose labelled pixels in the batch is classified correctly, whose prototypes move with all its "
            'labelled pixels (`prototype_update_pixels="correct_else_all"`); official code: the correctly classified '
            'ones only (`"correct"`), under which the prototypes of a class that is never predicted right never move.'
        )
    elif update == "all":
        items.append(
            "**Pixels that move the prototypes**: every labelled pixel assigned to them "
            '(`prototype_update_pixels="all"`); official code: the correctly classified ones only (`"correct"`).'
        )
    if facts.embedding_dim is not None and facts.embedding_dim != OFFICIAL_EMBEDDING_DIM:
        items.append(
            f"**Embedding size** D = {facts.embedding_dim} (`embedding_dim`); the official code's embeddings have "
            f"D = {OFFICIAL_EMBEDDING_DIM} (the width of HRNet-W48's concatenated features); the paper does not give D."
        )
    if facts.projection_batch_norm:
        items.append(
            "**Projection head**: 1×1 conv → BatchNorm → ReLU → 1×1 conv, then LayerNorm and L2 normalisation along "
            "the channels; the official projection head has no BatchNorm (1×1 conv → ReLU → 1×1 conv)."
        )
    processes = inputs.summary.num_processes
    if processes is not None and processes > 1:
        items.append(
            f"**BatchNorm across processes**: this run used {processes} processes, each normalising with its own batch "
            "statistics (no SyncBatchNorm; the saved running statistics are the main process's); the official config "
            "synchronises BatchNorm across GPUs (`torchsyncbn`)."
        )
    return items


def departures(inputs: CardInputs) -> str:
    """Bullet list of where this checkpoint's configuration differs from the paper and the official code; '' when
    the model is not ProtoSeg."""
    method = inputs.facts.method
    if inputs.kind != "protoseg" or method is None:
        return ""
    items = _design_items(inputs) + _paper_knob_items(method)
    ppd = _ppd_item(method.get("ppd_loss_weight"))
    if ppd:
        items.append(ppd)
    intro = (
        "Read from this checkpoint's `config.json` and weights (and, for the processes, its training summary). "
        "The paper is Zhou et al., CVPR 2022; the official code is github.com/tfzhou/ProtoSeg (its released config: "
        "HRNet-W48 on Cityscapes)."
    )
    if not items:
        return f"{intro}\n\nNone: this configuration has the paper's values."
    return intro + "\n\n" + "\n".join(f"- {item}" for item in items)
