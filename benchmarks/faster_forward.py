"""Proposed faster exact formulations for ProtoSeg's training step, for the model maintainers to port.

`FasterProtoSegForSemanticSegmentation` subclasses the package's model, keeps its parameters, buffers
and state dict unchanged (a checkpoint loads into either class), and overrides only the training
forward. Each change is an exact reformulation (same values up to float rounding; same gradients except
at exact ties of the max over K, a measure-zero event where any subgradient is valid); each can be
switched off through `FasterForwardOptions` so `benchmarks/proposal_gain.py` can measure it alone.

Already ported into the package (commit daea8ec, from an earlier version of this file): the decoder
fold (no hidden x 4*hidden fusion at stride 4), channels-last heads and logits without layout copies,
the channels-last cross-entropy, and the chunked class scores at inference. Still proposed:

1. `fused_prototype_losses`: class scores (max over K), PPC and PPD in one autograd function whose
   backward writes the gradient of the (N, C*K) similarities in one pass plus two sparse scatters,
   instead of S / tau, its log-softmax, their backwards and the amax backward (eq, sum, div, mul):
   about a dozen passes over N*C*K floats. The max over K keeps its indices (`max`, not `amax`), so
   its backward is a scatter, not a mask. The clustering runs first (it needs only the detached
   similarities), so PPC's targets are known when the fused function runs.
2. `exp_domain_sinkhorn`: the Sinkhorn-Knopp iterations on exp((S - 1) / kappa) directly instead of in
   the log domain. A constant factor (here exp(-1 / kappa)) cancels in the first normalisation; for
   cosine similarities (S <= 1) every entry then lies in [exp(-2 / kappa), 1] = [e^-40, 1] at kappa = 0.05,
   inside float32's normal range (down to e^-87), and later values stay bounded by 1, so nothing
   overflows or underflows and the plan is the same. The shift is a constant, not a data maximum, so
   processes need no extra reduction to agree on it. Per iteration: 1 index_add + 1 index_select + 2
   divisions instead of about 15 ops with an exp and a log each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from modeling_protoseg import ProtoSegForSemanticSegmentation
from modeling_protoseg.losses import pixel_cross_entropy, pixel_prototype_losses
from modeling_protoseg.modeling_protoseg import ProtoSegSemanticSegmenterOutput
from modeling_protoseg.prototypes import _all_reduce_, momentum_update_prototypes, sinkhorn_assign_pixels

@dataclass
class FasterForwardOptions:
    fused_prototype_losses: bool = True
    exp_domain_sinkhorn: bool = True


class _PrototypeScoresAndLosses(torch.autograd.Function):
    """(N, C*K) similarities -> class scores (N, C) = max over K, PPC and PPD, in one autograd node.

    Forward: the max over K, then exp((S - rowmax) / tau) in one buffer (3 in-place passes) whose row sums
    give the log-normaliser. Backward: one pass (the buffer times a per-row scale) plus two sparse
    `scatter_add_`s (the target prototype, and each class's best prototype for the class-score gradient).
    """

    @staticmethod
    def forward(ctx, similarities, target_prototypes, pixel_weights, num_classes, temperature):
        num_pixels, width = similarities.shape
        class_scores, best_prototype = similarities.view(num_pixels, num_classes, width // num_classes).max(dim=-1)
        row_max = class_scores.amax(dim=1, keepdim=True)  # (N, 1), the max over all C*K
        exponentials = torch.sub(similarities, row_max).mul_(1.0 / temperature).exp_()  # (N, C*K), each <= 1
        row_sums = exponentials.sum(dim=1)  # (N,)
        log_normalisers = row_max.squeeze(1) / temperature + torch.log(row_sums)
        assigned = similarities.gather(1, target_prototypes[:, None]).squeeze(1)  # (N,)
        normaliser = pixel_weights.sum().clamp(min=1.0)
        ppc = ((log_normalisers - assigned / temperature) * pixel_weights).sum() / normaliser
        ppd = ((1.0 - assigned).pow(2) * pixel_weights).sum() / normaliser
        ctx.save_for_backward(exponentials, row_sums, target_prototypes, pixel_weights, best_prototype, assigned)
        ctx.temperature, ctx.normaliser = temperature, normaliser
        ctx.mark_non_differentiable(best_prototype)
        return class_scores, best_prototype, ppc, ppd

    @staticmethod
    def backward(ctx, grad_class_scores, _grad_best, grad_ppc, grad_ppd):
        exponentials, row_sums, target_prototypes, pixel_weights, best_prototype, assigned = ctx.saved_tensors
        temperature = ctx.temperature
        num_pixels, num_classes = best_prototype.shape
        coefficient = pixel_weights / ctx.normaliser  # (N,)
        softmax_scale = (grad_ppc / temperature) * coefficient  # (N,): dL/d(S/tau) = scale * (softmax - onehot)
        grad = exponentials * (softmax_scale / row_sums)[:, None]  # softmax * scale, one pass
        target_grad = -softmax_scale - 2.0 * grad_ppd * (1.0 - assigned) * coefficient
        grad.scatter_add_(1, target_prototypes[:, None], target_grad[:, None])
        if grad_class_scores is not None:
            grad.view(num_pixels, num_classes, -1).scatter_add_(2, best_prototype[..., None], grad_class_scores[..., None])
        return grad, None, None, None, None


@torch.no_grad()
def sinkhorn_assign_pixels_exp_domain(
    similarities: torch.Tensor, pixel_groups: torch.Tensor, num_groups: int, *, iterations: int = 3,
    epsilon: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`prototypes.sinkhorn_assign_pixels` (same arguments, same plan) computed in the exp domain.

    Arguments:
        similarities: (N, K) cosine similarities of each pixel to its own class's prototypes, in [-1, 1]
            (the exponent is clamped at -80, a no-op for such inputs, so no row can underflow to 0).
        pixel_groups: (N,) long group (class) of each pixel, in [0, num_groups).
    Returns:
        assignments (N,) long, plan (N, K) float32 with rows summing to 1.
    """
    with torch.autocast(device_type=similarities.device.type, enabled=False):
        similarities = similarities.float()
        # exp((S - 1) / epsilon): the constant factor cancels in the first column normalisation.
        plan = torch.sub(similarities, 1.0).div_(epsilon).clamp_(min=-80.0).exp_()
        num_prototypes = plan.shape[1]
        for _ in range(iterations):
            column_sums = plan.new_zeros((num_groups, num_prototypes)).index_add_(0, pixel_groups, plan)
            _all_reduce_(column_sums, dist.ReduceOp.SUM)
            plan.div_(column_sums.index_select(0, pixel_groups))  # each prototype: equal mass per class
            plan.div_(plan.sum(dim=1, keepdim=True))  # each pixel: mass 1
    return plan.argmax(dim=1), plan


class FasterProtoSegForSemanticSegmentation(ProtoSegForSemanticSegmentation):
    """The package's model with the remaining proposals (same parameters, buffers, state dict).

    Encoder, decode head and projection head are the package's own; in training, the class scores, PPC and
    PPD come from `_PrototypeScoresAndLosses` (option `fused_prototype_losses`) and the clustering from
    `sinkhorn_assign_pixels_exp_domain` (option `exp_domain_sinkhorn`). Inference is the package's path.
    """

    faster_options = FasterForwardOptions()

    def forward(self, pixel_values, labels=None, output_hidden_states=None, output_pixel_embeddings=False,
                output_nearest_prototypes=False, return_dict=None, **kwargs):
        options = self.faster_options
        if not (self.training and labels is not None) or output_nearest_prototypes:
            return super().forward(pixel_values, labels, output_hidden_states, output_pixel_embeddings,
                                   output_nearest_prototypes, return_dict, **kwargs)
        self._check_inputs(pixel_values, labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
        feature_maps = self._encode(pixel_values)
        embeddings = self.projection_head(self.decode_head(list(feature_maps)))  # (B, D, h, w) channels-last view
        batch_size, embedding_dim, height, width = embeddings.shape
        pixel_embeddings = embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)  # (N, D), a view
        # autograd keeps this copy; the buffer moves in place below
        flat_prototypes = self.prototypes.reshape(num_classes * num_prototypes, -1).to(pixel_embeddings.dtype).clone()
        similarities = pixel_embeddings @ flat_prototypes.T  # (N, C*K)
        pixel_labels, labelled, pixel_classes, assignments = self._cluster(
            similarities, pixel_embeddings, labels, height, width
        )
        target_prototypes = pixel_classes * num_prototypes + assignments
        if options.fused_prototype_losses:
            class_scores, _, ppc_loss, ppd_loss = _PrototypeScoresAndLosses.apply(
                similarities.float(), target_prototypes, labelled.float(), num_classes, config.ppc_temperature
            )
        else:
            class_scores = similarities.view(-1, num_classes, num_prototypes).amax(dim=-1)
            ppc_loss, ppd_loss = pixel_prototype_losses(
                similarities, target_prototypes, labelled.float(), temperature=config.ppc_temperature
            )
        pixel_logits = self.class_score_norm(class_scores)  # (N, C)
        logits = pixel_logits.view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)  # channels-last view
        ce_loss = pixel_cross_entropy(logits, labels, config.semantic_loss_ignore_index)
        loss = ce_loss + config.ppc_loss_weight * ppc_loss + config.ppd_loss_weight * ppd_loss
        with torch.no_grad():
            update_weights = labelled
            if config.update_prototypes_with_correct_only:
                update_weights = update_weights & (pixel_logits.detach().argmax(dim=-1) == pixel_labels)
            updated = momentum_update_prototypes(
                self.prototypes, pixel_embeddings.detach(), pixel_classes, assignments,
                momentum=config.prototype_momentum, pixel_weights=update_weights.float(),
            )
            self.prototypes.copy_(updated)
        output = ProtoSegSemanticSegmenterOutput(
            loss=loss, logits=logits, ce_loss=ce_loss, ppc_loss=ppc_loss, ppd_loss=ppd_loss,
            hidden_states=feature_maps if output_hidden_states else None,
            pixel_embeddings=embeddings if output_pixel_embeddings else None,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _cluster(self, similarities, pixel_embeddings, labels, height, width):
        """Labels at feature resolution and the Sinkhorn assignment of every pixel (as the package does)."""
        config = self.config
        num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
        pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest").long().reshape(-1)
        labelled = pixel_labels != config.semantic_loss_ignore_index
        pixel_classes = torch.where(labelled, pixel_labels, torch.zeros_like(pixel_labels))
        if similarities.dtype == torch.float32:
            similarities32 = similarities.detach()
        else:  # clustering in float32 (recomputed, as the package does under autocast)
            with torch.autocast(device_type=similarities.device.type, enabled=False):
                flat_prototypes = self.prototypes.reshape(num_classes * num_prototypes, -1)
                similarities32 = pixel_embeddings.detach().float() @ flat_prototypes.T
        own = similarities32.view(-1, num_classes, num_prototypes)
        own = own.gather(1, pixel_classes[:, None, None].expand(-1, 1, num_prototypes)).squeeze(1)
        groups = torch.where(labelled, pixel_classes, torch.full_like(pixel_classes, num_classes))
        sinkhorn = sinkhorn_assign_pixels_exp_domain if self.faster_options.exp_domain_sinkhorn else sinkhorn_assign_pixels
        assignments, _ = sinkhorn(
            own, groups, num_classes + 1, iterations=config.sinkhorn_iterations, epsilon=config.sinkhorn_epsilon
        )
        return pixel_labels, labelled, pixel_classes, assignments


__all__ = [
    "FasterForwardOptions",
    "FasterProtoSegForSemanticSegmentation",
    "sinkhorn_assign_pixels_exp_domain",
]
