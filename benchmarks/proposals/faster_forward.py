"""Proposed faster exact formulations of ProtoSeg's forward, for the model maintainers to port.

Each proposal is a plain function over the package's public model parts (the reference it must equal is
the package's public forward, or the package's public `sinkhorn_assign_pixels`); nothing here patches the
package. `benchmarks/proposals/proposal_gain.py` checks the exactness and measures the gain of each.

Already ported into the package from earlier versions of this file (their code is gone from here): the
decoder fold (no hidden x 4*hidden fusion at stride 4), channels-last heads and logits without layout
copies, the channels-last cross-entropy, the chunked class scores at inference (commit daea8ec, now
`modeling_protoseg.class_scores.nearest_prototype_scores`), the fused class scores + PPC + PPD autograd
function (commit 80df072, `modeling_protoseg.losses.class_scores_and_prototype_losses`), and the eval-mode
BatchNorms folded into the heads' matrices (issue 17, `ProtoSegDecodeHead` / `ProtoSegProjectionHead`).
Still proposed:

`sinkhorn_assign_pixels_exp_domain`: the Sinkhorn-Knopp iterations on exp((S - 1) / kappa) directly instead
of in the log domain. A constant factor (here exp(-1 / kappa)) cancels in the first normalisation; for
cosine similarities (S <= 1) every entry then lies in [exp(-2 / kappa), 1] = [e^-40, 1] at kappa = 0.05,
inside float32's normal range (down to e^-87), and later values stay bounded by 1, so nothing overflows or
underflows and the plan is the same. The shift is a constant, not a data maximum, so processes need no
extra reduction to agree on it (the per-group MAX all-reduce of the log-domain version disappears).
Per iteration: 1 index_add + 1 index_select + 2 divisions instead of about 15 ops with an exp and a log
each. (A fp16/bf16 input is cast to float32 first, as in the package.) To port: the body replaces that of
`modeling_protoseg.prototypes.sinkhorn_assign_pixels`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place when torch.distributed is initialised (as the package's Sinkhorn does)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sinkhorn_assign_pixels_exp_domain(
    similarities: torch.Tensor, pixel_groups: torch.Tensor, num_groups: int, *, iterations: int = 3,
    epsilon: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`modeling_protoseg.sinkhorn_assign_pixels` (same arguments, same plan) computed in the exp domain.

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
            _all_reduce_sum_(column_sums)
            plan.div_(column_sums.index_select(0, pixel_groups))  # each prototype: equal mass per class
            plan.div_(plan.sum(dim=1, keepdim=True))  # each pixel: mass 1
    return plan.argmax(dim=1), plan


__all__ = ["sinkhorn_assign_pixels_exp_domain"]
