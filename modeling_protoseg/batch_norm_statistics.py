"""Keep a non-finite training batch out of the BatchNorm running statistics.

A NaN or Inf pixel in one training batch makes every BatchNorm's batch mean non-finite, and the momentum update writes
it into `running_mean` / `running_var`: every later prediction (evaluation uses the running statistics) is NaN. The
training script skips such batches itself, but a user's own loop or transformers' `Trainer` does not. The guard
copies the running statistics before a training forward and puts them back when any came out non-finite.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class BatchNormStatisticsGuard:
    """The running statistics (`running_mean`, `running_var`, `num_batches_tracked`) of every BatchNorm in a module,
    copied before a training forward, restored by `restore_if_non_finite` when the forward made any non-finite.

    Cost: one small copy of each statistic per training forward, and a check and a select after it, all on the
    device: no host synchronisation (the choice between the new and the saved values is a `torch.where` on a
    device-side flag, so the next kernels are queued without waiting). Nothing at all when there is no BatchNorm.
    """

    def __init__(self, module: nn.Module) -> None:
        statistics = []
        for submodule in module.modules():
            if isinstance(submodule, _BatchNorm) and submodule.track_running_stats:
                statistics += [submodule.running_mean, submodule.running_var, submodule.num_batches_tracked]
        self.saved = [(buffer, buffer.detach().clone()) for buffer in statistics if buffer is not None]

    @torch.no_grad()
    def restore_if_non_finite(self) -> None:
        """Put every saved statistic back if any running mean or variance is no longer finite (the whole batch
        then counts for none of them, `num_batches_tracked` included); otherwise leave the new values."""
        floating = [buffer for buffer, _ in self.saved if buffer.is_floating_point()]
        if not floating:
            return
        all_finite = torch.stack([torch.isfinite(buffer).all() for buffer in floating]).all()  # () on the device
        for buffer, saved in self.saved:
            # through `.data`: autograd saved the running statistics for BatchNorm's backward (which in training
            # mode never reads them), and an in-place write on the tensor itself would fail that version check
            buffer.data.copy_(torch.where(all_finite, buffer.data, saved))


__all__ = ["BatchNormStatisticsGuard"]
