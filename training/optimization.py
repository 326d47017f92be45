"""Optimizer (AdamW or SGD, 4 parameter groups) and the poly learning-rate schedule with warm-up."""

from __future__ import annotations

import torch
from torch import nn

from training.config import OptimizationArguments

ENCODER_ATTRIBUTES = ("encoder", "segformer")  # ProtoSeg's and the linear head's encoder, SegFormer's


def build_optimizer(model: nn.Module, config: OptimizationArguments) -> torch.optim.Optimizer:
    """AdamW or SGD with 4 parameter groups: (encoder | head) x (decay | no decay on norms and biases).
    The head (decoder, projection, classifier; the pixel-contrast projection head too) learns `head_lr_multiplier`
    times faster."""
    # by module, not by name: a training wrapper (e.g. pixel contrast's) may hold the model under any attribute
    encoder_parameters = {
        id(parameter)
        for module_name, module in model.named_modules()
        if module_name.rsplit(".", 1)[-1] in ENCODER_ATTRIBUTES
        for parameter in module.parameters()
    }
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_encoder = id(parameter) in encoder_parameters
        decays = parameter.ndim > 1 and "pos_block" not in name
        groups.setdefault((is_encoder, decays), []).append(parameter)
    param_groups = [
        {
            "params": params,
            "lr": config.learning_rate * (1.0 if is_encoder else config.head_lr_multiplier),
            "weight_decay": config.weight_decay if decays else 0.0,
        }
        for (is_encoder, decays), params in sorted(groups.items())
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2))
    return torch.optim.SGD(param_groups, lr=config.learning_rate, momentum=config.sgd_momentum)


class PolyWithWarmup:
    """lr factor at step t: poly decay (1 - t/T)^power (floored at min_lr), times a linear warm-up
    from `warmup_start_factor` to 1 over the first `warmup_steps` (mmseg's schedule)."""

    def __init__(
        self, *, max_steps: int, power: float, warmup_steps: int, warmup_start_factor: float, min_factor: float
    ) -> None:
        self.max_steps, self.power = max_steps, power
        self.warmup_steps, self.warmup_start_factor, self.min_factor = warmup_steps, warmup_start_factor, min_factor

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.max_steps, 1), 1.0)
        factor = (1.0 - self.min_factor) * (1.0 - progress) ** self.power + self.min_factor
        if step < self.warmup_steps:
            factor *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        return factor


def set_schedule_step(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put a `LambdaLR` at `step`, as `step` calls of `scheduler.step()` would (the same floats): the schedule is a
    pure function of the step, so checkpoints carry no scheduler state (accelerate would pickle it)."""
    scheduler.last_epoch = step
    learning_rates = [base_lr * lr_lambda(step) for base_lr, lr_lambda in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, learning_rate in zip(scheduler.optimizer.param_groups, learning_rates):
        group["lr"] = learning_rate
    scheduler._last_lr = learning_rates
