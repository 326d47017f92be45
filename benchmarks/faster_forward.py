"""A proposed faster forward for ProtoSeg with the same mathematics, for the model maintainers to port.

`FasterProtoSegForSemanticSegmentation` subclasses the package's model, keeps its parameters, buffers
and state dict unchanged (a checkpoint loads into either class), and overrides only `forward`. Each
change is an exact reformulation (same values up to float rounding; same gradients except at exact
ties of the max over K, a measure-zero event where any subgradient is valid); each can be switched off
through `FasterForwardOptions` so `benchmarks/proposal_gain.py` can measure it alone.

1. `rows_layout`: run the decoder's BatchNorm/ReLU and the whole projection head on (N, channels)
   rows in channels-last memory (as `SegformerForSemanticSegmentation`'s MLP decoder does), instead of
   1x1 convolutions on NCHW tensors followed by two permute copies for the LayerNorm; keep the logits a
   channels-last view (no `.contiguous()` copy); take the cross-entropy's log-softmax over a contiguous
   last dimension.
2. `fold_decoder`: `linear_fuse(cat_i(up(proj_i(x_i))))` equals `sum_i up((W_i A_i) x_i + W_i b_i)`
   because the bilinear upsampling is linear and acts on space only while the 1x1 maps act on channels
   only (and bilinear weights sum to 1, so a constant stays a constant). The (hidden x 4*hidden) fusion
   at stride 4 disappears; only a (hidden x C_i) map per stage remains, at that stage's own resolution.
3. `fused_prototype_losses`: class scores (max over K), PPC and PPD in one autograd function whose
   backward writes the gradient of the (N, C*K) similarities in one pass plus two sparse scatters,
   instead of S / tau, its log-softmax, their backwards and the amax backward (eq, sum, div, mul):
   about a dozen passes over N*C*K floats. The max over K keeps its indices (`max`, not `amax`), so
   its backward is a scatter, not a mask.
4. `exp_domain_sinkhorn`: the Sinkhorn-Knopp iterations on exp((S - 1) / kappa) directly instead of in
   the log domain. A constant factor (here exp(-1 / kappa)) cancels in the first normalisation; for
   cosine similarities (S <= 1) every entry then lies in [exp(-2 / kappa), 1] = [e^-40, 1] at kappa = 0.05,
   inside float32's normal range (down to e^-87), and later values stay bounded by 1, so nothing
   overflows or underflows and the plan is the same. The shift is a constant, not a data maximum, so
   processes need no extra reduction to agree on it. Per iteration: 1 index_add + 1 index_select + 2
   divisions instead of about 15 ops with an exp and a log each.
5. `chunked_inference`: at inference, the similarity GEMM and the max over K run in row chunks into a
   reused buffer, so the (N, C*K) similarities are never materialised (at 847 classes, batch 8, 512x512:
   4.4 GB in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modeling_protoseg import ProtoSegForSemanticSegmentation
from modeling_protoseg.modeling_protoseg import ProtoSegDecodeHead, ProtoSegProjectionHead, ProtoSegSemanticSegmenterOutput
from modeling_protoseg.prototypes import _all_reduce_, momentum_update_prototypes, sinkhorn_assign_pixels

# Inference computes the similarities in row chunks of about this many bytes. Large chunks: on a busy
# shared CPU every small parallel op pays a thread-scheduling delay, so few large ops beat many small ones.
CHUNK_BYTES = 64 * 2**20


@dataclass
class FasterForwardOptions:
    rows_layout: bool = True
    fold_decoder: bool = True
    fused_prototype_losses: bool = True
    exp_domain_sinkhorn: bool = True
    chunked_inference: bool = True


def _rows_per_chunk(row_width: int) -> int:
    return max(64, CHUNK_BYTES // (4 * row_width))


def _batch_norm_rows(norm: nn.BatchNorm2d, rows: torch.Tensor) -> torch.Tensor:
    """`norm` (a BatchNorm2d) applied to (N, C) rows: the same statistics over N = B*H*W pixels."""
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    use_batch_statistics = norm.training or norm.running_mean is None
    return F.batch_norm(
        rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, use_batch_statistics, momentum, norm.eps
    )


def decode_rows(
    head: ProtoSegDecodeHead, feature_maps: list[torch.Tensor], *, fold: bool
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The decode head's output as (N, hidden) rows (N = B*h*w, channels-last order) and (B, h, w)."""
    hidden = head.linear_fuse.out_channels
    num_maps = len(feature_maps)
    batch_size, _, height, width = feature_maps[0].shape
    fuse_weight = head.linear_fuse.weight.flatten(1)  # (hidden, num_maps * hidden), blocks in reversed map order
    fused = None
    for index, (feature_map, projection) in enumerate(zip(feature_maps, head.linear_projections)):
        block = fuse_weight[:, (num_maps - 1 - index) * hidden : (num_maps - index) * hidden]
        if fold:
            weight, bias = block @ projection.weight.flatten(1), block @ projection.bias  # (hidden, C_i), (hidden,)
        else:
            weight, bias = projection.weight.flatten(1), projection.bias
        # channels-last 1x1 map: (B, h_i, w_i, C_i) @ (C_i, out) -> viewed back as a channels-last NCHW tensor
        mapped = F.linear(feature_map.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
        if mapped.shape[-2:] != (height, width):
            mapped = F.interpolate(mapped, size=(height, width), mode="bilinear", align_corners=False)
        if not fold:
            mapped = F.linear(mapped.permute(0, 2, 3, 1), block).permute(0, 3, 1, 2)
        fused = mapped if fused is None else fused + mapped
    rows = fused.permute(0, 2, 3, 1).reshape(-1, hidden)  # (N, hidden), a view of channels-last memory
    rows = head.dropout(head.activation(_batch_norm_rows(head.batch_norm, rows)))
    return rows, (batch_size, height, width)


def project_rows(head: ProtoSegProjectionHead, rows: torch.Tensor) -> torch.Tensor:
    """Projection head on (N, hidden) rows -> (N, D) unit-length embeddings (LayerNorm, then L2 along D)."""
    hidden = F.linear(rows, head.hidden.weight.flatten(1), head.hidden.bias)
    hidden = head.activation(_batch_norm_rows(head.batch_norm, hidden))
    embeddings = F.linear(hidden, head.output.weight.flatten(1), head.output.bias)
    embeddings = F.layer_norm(
        embeddings, head.layer_norm.normalized_shape, head.layer_norm.weight, head.layer_norm.bias, head.layer_norm.eps
    )
    return F.normalize(embeddings, dim=-1)


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


def class_scores_chunked(embeddings: torch.Tensor, flat_prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """max over K of embeddings @ prototypes.T, (N, C), without materialising the (N, C*K) similarities."""
    num_pixels, width = embeddings.shape[0], flat_prototypes.shape[0]
    rows = _rows_per_chunk(width)
    prototypes_t = flat_prototypes.T.contiguous()
    scores = embeddings.new_empty(num_pixels, num_classes)
    buffer = embeddings.new_empty(min(rows, num_pixels), width)
    for start in range(0, num_pixels, rows):
        chunk = embeddings[start : start + rows]
        similarities = torch.mm(chunk, prototypes_t, out=buffer[: chunk.shape[0]])
        torch.amax(similarities.view(chunk.shape[0], num_classes, -1), dim=-1, out=scores[start : start + rows])
    return scores


class FasterProtoSegForSemanticSegmentation(ProtoSegForSemanticSegmentation):
    """The package's model with the faster exact forward above (same parameters, buffers, state dict)."""

    faster_options = FasterForwardOptions()

    def forward(self, pixel_values, labels=None, output_hidden_states=None, output_pixel_embeddings=False,
                output_nearest_prototypes=False, return_dict=None, **kwargs):
        options = self.faster_options
        if not options.rows_layout or output_nearest_prototypes:
            return super().forward(pixel_values, labels, output_hidden_states, output_pixel_embeddings,
                                   output_nearest_prototypes, return_dict, **kwargs)
        self._check_inputs(pixel_values, labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
        feature_maps = self._encode(pixel_values)
        rows, (batch_size, height, width) = decode_rows(self.decode_head, list(feature_maps), fold=options.fold_decoder)
        pixel_embeddings = project_rows(self.projection_head, rows)  # (N, D)
        flat_prototypes = self.prototypes.reshape(num_classes * num_prototypes, -1).to(pixel_embeddings.dtype)
        learns = self.training and labels is not None
        ppc_loss = ppd_loss = None
        if learns:
            flat_prototypes = flat_prototypes.clone()  # autograd keeps it; the buffer moves in place below
            similarities = pixel_embeddings @ flat_prototypes.T  # (N, C*K)
            pixel_labels, labelled, pixel_classes, assignments = self._cluster(similarities, labels, height, width)
            target_prototypes = pixel_classes * num_prototypes + assignments
            if options.fused_prototype_losses:
                class_scores, _, ppc_loss, ppd_loss = _PrototypeScoresAndLosses.apply(
                    similarities.float(), target_prototypes, labelled.float(), num_classes, config.ppc_temperature
                )
            else:
                from modeling_protoseg.losses import pixel_prototype_losses

                class_scores = similarities.view(-1, num_classes, num_prototypes).amax(dim=-1)
                ppc_loss, ppd_loss = pixel_prototype_losses(
                    similarities, target_prototypes, labelled.float(), temperature=config.ppc_temperature
                )
        elif options.chunked_inference and not torch.is_grad_enabled():
            class_scores = class_scores_chunked(pixel_embeddings, flat_prototypes, num_classes)
        else:
            similarities = pixel_embeddings @ flat_prototypes.T
            class_scores = similarities.view(-1, num_classes, num_prototypes).amax(dim=-1)
        pixel_logits = self.class_score_norm(class_scores.to(pixel_embeddings.dtype))  # (N, C)
        logits = pixel_logits.view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)  # channels-last view

        loss = ce_loss = None
        if labels is not None:
            ce_loss = channels_last_cross_entropy(logits, labels, config.semantic_loss_ignore_index)
            loss = ce_loss
        if learns:
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
        embeddings_map = None
        if output_pixel_embeddings:
            embeddings_map = pixel_embeddings.view(batch_size, height, width, -1).permute(0, 3, 1, 2)
        output = ProtoSegSemanticSegmenterOutput(
            loss=loss, logits=logits, ce_loss=ce_loss, ppc_loss=ppc_loss, ppd_loss=ppd_loss,
            hidden_states=feature_maps if output_hidden_states else None, pixel_embeddings=embeddings_map,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _cluster(self, similarities, labels, height, width):
        """Labels at feature resolution and the Sinkhorn assignment of every labelled pixel (as the package)."""
        config = self.config
        num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
        pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest").long().reshape(-1)
        labelled = pixel_labels != config.semantic_loss_ignore_index
        pixel_classes = torch.where(labelled, pixel_labels, torch.zeros_like(pixel_labels))
        own = similarities.detach().float().view(-1, num_classes, num_prototypes)
        own = own.gather(1, pixel_classes[:, None, None].expand(-1, 1, num_prototypes)).squeeze(1)
        groups = torch.where(labelled, pixel_classes, torch.full_like(pixel_classes, num_classes))
        sinkhorn = sinkhorn_assign_pixels_exp_domain if self.faster_options.exp_domain_sinkhorn else sinkhorn_assign_pixels
        assignments, _ = sinkhorn(
            own, groups, num_classes + 1, iterations=config.sinkhorn_iterations, epsilon=config.sinkhorn_epsilon
        )
        return pixel_labels, labelled, pixel_classes, assignments


def channels_last_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """`losses.pixel_cross_entropy` with the log-softmax over a contiguous class dimension.

    `logits` (B, C, h, w) in channels-last memory are upsampled bilinearly (channels-last kernel) to the
    label size; the (B, H, W, C) result is then a free view of (B*H*W, C) rows.
    """
    upsampled = F.interpolate(
        logits.contiguous(memory_format=torch.channels_last), size=labels.shape[-2:], mode="bilinear",
        align_corners=False,
    )
    num_classes = upsampled.shape[1]
    rows = upsampled.permute(0, 2, 3, 1).reshape(-1, num_classes).float()
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    per_pixel = F.cross_entropy(rows, flat_labels.masked_fill(~valid, 0), reduction="none")
    return (per_pixel * valid.float()).sum() / valid.float().sum().clamp(min=1.0)


__all__ = [
    "FasterForwardOptions",
    "FasterProtoSegForSemanticSegmentation",
    "channels_last_cross_entropy",
    "sinkhorn_assign_pixels_exp_domain",
]
