"""The training loop: optimizer steps over endless batches, with logging, evaluation and checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from training.checkpointing import save_checkpoint
from training.config import TrainingConfig
from training.data import ResumableShardedSampler
from training.models import segmentation_model_of
from training.tracker_images import log_prediction_images

logger = logging.getLogger("protoseg.train")

LOSS_TERMS = ("loss", "ce_loss", "ppc_loss", "ppd_loss", "contrast_loss")
# Test hook, not a setting: seconds to sleep after every step, so a test can kill a run mid-way.
STEP_DELAY_VARIABLE = "PROTOSEG_TEST_STEP_DELAY_SECONDS"


def iterate_forever(
    loader: torch.utils.data.DataLoader, sampler: ResumableShardedSampler, epoch: int, start_batch: int
) -> Iterator[dict]:
    """Batches across epoch boundaries, starting at (epoch, start_batch)."""
    sampler.set_epoch(epoch, start_batch)
    while True:
        yield from loader
        epoch += 1
        sampler.set_epoch(epoch, 0)


@dataclass
class TrainingState:
    """What the loop steps: the prepared (possibly DDP-wrapped) model, optimizer, scheduler, the batches
    from the resume position on, the first step to run and the images one optimizer step consumes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Iterator[dict]
    start_step: int
    images_per_step: int
    skipped_nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite input, loss or gradient


class RunningMeans:
    """Means of the loss terms (and the throughput) since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(LOSS_TERMS, 0.0)
        self.counts = dict.fromkeys(LOSS_TERMS, 0)
        self.window_start, self.window_steps = time.perf_counter(), 0

    def add(self, outputs: Any) -> None:
        for name in LOSS_TERMS:
            value = getattr(outputs, name, None)
            if value is not None:
                self.sums[name] += float(value.detach())
                self.counts[name] += 1

    def restart_clock(self) -> None:
        """Evaluation and checkpoint time is not training throughput."""
        self.window_start = time.perf_counter()

    def log_values(self, images_per_step: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.window_start
        values = {f"train/{name}": self.sums[name] / self.counts[name] for name in LOSS_TERMS if self.counts[name]}
        values["train/images_per_second"] = self.window_steps * images_per_step / max(elapsed, 1e-9)
        return values


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when `flag` is True on any (one all-reduce: all processes take the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item() > 0)


def check_batch_on_every_process(
    accelerator: Accelerator, model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor
) -> bool:
    """Validate a batch before any collective of the forward: the model's input checks (label range, dtypes,
    shapes) and finiteness, agreed on by every process in one all-reduce. A malformed batch on any process raises
    a ValueError on every process (the one that has it gives the model's message), so none waits in the
    clustering's all-reduce for a process that failed. Returns False (on every process) when some process's
    pixels are not finite: the step is to be skipped."""
    error = None
    check_inputs = getattr(accelerator.unwrap_model(model), "_check_inputs", None)
    if check_inputs is not None:
        try:
            check_inputs(pixel_values, labels)
        except ValueError as raised:
            error = raised
    finite = True if error is not None else bool(torch.isfinite(pixel_values).all())
    flags = torch.tensor([float(error is not None), float(not finite)], device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    if error is not None:
        raise error
    if flags[0] > 0:
        raise ValueError(
            f"process {accelerator.process_index}: stopping because another process got a malformed batch (its "
            "log names the problem); every process stops together instead of waiting for it"
        )
    return not bool(flags[1] > 0)


def buffers_to_restore(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a skipped step puts back: all, except the model's own count of refused prototype updates and the
    buffers a module lists in `self_guarded_buffers` (they never store a non-finite value, e.g. the pixel-contrast
    memory, whose copy would cost a large clone on every step)."""
    guarded = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "self_guarded_buffers", ())
    }
    return {
        name: buffer
        for name, buffer in model.named_buffers()
        if name not in guarded and not name.endswith("skipped_nonfinite_updates")
    }


def _gradients_are_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite: their total norm is (one fused pass, one host synchronisation)."""
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    return not gradients or bool(torch.isfinite(torch.nn.utils.get_total_norm(gradients)))


def optimizer_step(
    config: TrainingConfig, accelerator: Accelerator, state: TrainingState, running: RunningMeans
) -> bool:
    """One optimizer step over `gradient_accumulation_steps` micro-batches (DDP syncs on the last only).

    A malformed batch on any process (labels out of range, ...) raises a ValueError on every process before the
    forward. A non-finite pixel in any process's micro-batch, or a non-finite loss or gradient on any process, skips the
    step on every process: the parameters, optimizer state, BatchNorm statistics and prototypes (buffers, restored
    from a copy taken before the first forward) stay as they were (the pixel-contrast memory keeps what the step's
    finite forward wrote: it never stores a non-finite entry); the batches are still consumed (the data
    position and the learning-rate schedule move on). With fp16, a gradient overflow is the GradScaler's to skip
    (it lowers its scale): that forward already updated the prototypes and BatchNorm statistics from a finite batch,
    which is kept. Returns False when the step was skipped."""
    model = state.model
    buffers_before = {name: buffer.detach().clone() for name, buffer in buffers_to_restore(model).items()}
    finite = True
    for micro_step in range(config.optimization.gradient_accumulation_steps):
        batch = next(state.batches)
        if not finite:  # the step is skipped already: consume the batch, compute nothing
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device, non_blocking=True)  # (B, 3, h, w)
        labels = batch["labels"].to(accelerator.device, non_blocking=True)  # (B, h, w)
        if not check_batch_on_every_process(accelerator, model, pixel_values, labels):  # before any buffer moves
            finite = False
            continue
        is_last_micro_step = micro_step == config.optimization.gradient_accumulation_steps - 1
        sync_context = contextlib.nullcontext() if is_last_micro_step else accelerator.no_sync(model)
        with sync_context:
            with accelerator.autocast():
                outputs = model(pixel_values=pixel_values, labels=labels)
            accelerator.backward(outputs.loss / config.optimization.gradient_accumulation_steps)
        finite = finite and bool(torch.isfinite(outputs.loss.detach()).all())
        if finite:
            running.add(outputs)
    clipped = False
    if finite and accelerator.scaler is None:  # with fp16 the GradScaler checks (and skips) the gradients itself
        if config.optimization.max_grad_norm > 0:  # the clipping norm is the finiteness check: one pass, not two
            total_norm = accelerator.clip_grad_norm_(model.parameters(), config.optimization.max_grad_norm)
            clipped = total_norm is not None
            finite = bool(torch.isfinite(total_norm)) if clipped else _gradients_are_finite(model)
        else:
            finite = _gradients_are_finite(model)
    finite = not any_process(accelerator, not finite)
    if finite:
        if config.optimization.max_grad_norm > 0 and not clipped:
            accelerator.clip_grad_norm_(model.parameters(), config.optimization.max_grad_norm)
        state.optimizer.step()
    else:
        with torch.no_grad():
            for name, buffer in buffers_to_restore(model).items():
                buffer.copy_(buffers_before[name])
        state.skipped_nonfinite_steps += 1
        logger.warning("skipped an optimizer step: non-finite input, loss or gradient on some process")
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    running.window_steps += 1
    return finite


def prototype_health_scalars(model: nn.Module) -> dict[str, float]:
    """Tracker scalars of a ProtoSeg model's `prototype_health()` (none for other heads)."""
    if not hasattr(model, "prototype_health"):
        return {}
    health = model.prototype_health()
    values = {
        "prototypes/mean_within_class_cosine": health["mean_within_class_cosine"],
        "prototypes/never_updated": health["never_updated_prototypes"],
        "prototypes/dead": health["dead_prototypes"],
        "prototypes/skipped_nonfinite_updates": health["skipped_nonfinite_updates"],
    }
    values.update({f"prototypes/within_class_cosine/{name}": value for name, value in health["within_class_cosine"].items()})
    return values


def _log(step: int, accelerator: Accelerator, state: TrainingState, running: RunningMeans, progress: tqdm) -> None:
    values = running.log_values(state.images_per_step)
    values["train/learning_rate"] = state.scheduler.get_last_lr()[0]
    values["train/skipped_nonfinite_steps"] = state.skipped_nonfinite_steps
    values.update(prototype_health_scalars(segmentation_model_of(accelerator.unwrap_model(state.model))))
    accelerator.log(values, step=step)
    progress.set_postfix(
        loss=f"{values.get('train/loss', float('nan')):.4f}", lr=f"{values['train/learning_rate']:.2e}"
    )
    running.reset()


def log_evaluation(
    accelerator: Accelerator,
    metrics: dict[str, Any],
    step: int,
    label: str,
    class_names: list[str],
    examples: list[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Send mIoU, pixel accuracy, each class's IoU (`eval/iou/<class>`, absent classes left out) and the
    prediction images of `examples` to the trackers; mIoU and pixel accuracy to the log."""
    values = {"eval/mean_iou": metrics["mean_iou"], "eval/overall_accuracy": metrics["overall_accuracy"]}
    for name, iou in zip(class_names, metrics["per_category_iou"], strict=True):
        if math.isfinite(float(iou)):
            values[f"eval/iou/{name}"] = float(iou)
    accelerator.log(values, step=step)
    log_prediction_images(accelerator, examples or [], step, num_labels=len(class_names))
    logger.info("%s: mIoU %.4f, pixel accuracy %.4f", label, metrics["mean_iou"], metrics["overall_accuracy"])


EVAL_HISTORY_FILE = "eval_history.jsonl"


def append_eval_history(output_dir: Path, step: int, metrics: dict[str, Any], class_names: list[str]) -> None:
    """Add one line {step, mean_iou, overall_accuracy, per_category_iou by class name} to the run's
    validation history (`eval_history.jsonl` in the output folder; null for a class absent from labels and
    predictions)."""
    per_class = zip(class_names, metrics["per_category_iou"], strict=True)
    entry = {
        "step": step,
        "mean_iou": float(metrics["mean_iou"]),
        "overall_accuracy": float(metrics["overall_accuracy"]),
        "per_category_iou": {name: _finite_or_none(value) for name, value in per_class},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / EVAL_HISTORY_FILE, "a") as history:
        history.write(json.dumps(entry) + "\n")


def truncate_eval_history(output_dir: Path, last_step: int) -> None:
    """Drop history lines after `last_step` (a run resumed from an earlier checkpoint repeats those steps)."""
    path = output_dir / EVAL_HISTORY_FILE
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def train_steps(
    config: TrainingConfig,
    accelerator: Accelerator,
    state: TrainingState,
    *,
    evaluate_validation: Callable[[], dict[str, Any]],
    checkpoint_root: Path,
) -> float:
    """Run steps start_step .. max_steps; log, evaluate and checkpoint on their schedules.
    Returns the wall time of the loop in seconds."""
    progress = tqdm(
        range(state.start_step, config.optimization.max_steps),
        initial=state.start_step,
        total=config.optimization.max_steps,
        desc="train",
        disable=not accelerator.is_local_main_process,
    )
    output_dir = Path(config.output.output_dir)
    id2label = segmentation_model_of(accelerator.unwrap_model(state.model)).config.id2label
    class_names = [id2label[index] for index in range(len(id2label))]
    if accelerator.is_main_process:
        truncate_eval_history(output_dir, state.start_step)
    state.model.train()
    train_start = time.perf_counter()
    running = RunningMeans()
    step_delay_seconds = float(os.environ.get(STEP_DELAY_VARIABLE, "0"))
    for step in progress:
        optimizer_step(config, accelerator, state, running)
        completed_steps = step + 1
        is_last = completed_steps == config.optimization.max_steps
        if step_delay_seconds > 0:
            time.sleep(step_delay_seconds)
        if completed_steps % config.output.logging_steps == 0 or is_last:
            _log(completed_steps, accelerator, state, running, progress)
        if config.evaluation.eval_steps and completed_steps % config.evaluation.eval_steps == 0 and not is_last:
            metrics = evaluate_validation()
            examples = metrics.pop("examples", [])
            log_evaluation(accelerator, metrics, completed_steps, f"step {completed_steps}: eval", class_names, examples)
            if accelerator.is_main_process:
                append_eval_history(output_dir, completed_steps, metrics, class_names)
            running.restart_clock()
        if (
            config.output.checkpointing_steps
            and completed_steps % config.output.checkpointing_steps == 0
            and not is_last
        ):
            training_state = {
                "global_batch_size": state.images_per_step,
                "num_processes": accelerator.num_processes,
                "per_device_train_batch_size": config.optimization.per_device_train_batch_size,
                "gradient_accumulation_steps": config.optimization.gradient_accumulation_steps,
                "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
            }
            folder = save_checkpoint(
                accelerator,
                checkpoint_root,
                completed_steps,
                training_state,
                total_limit=config.output.checkpoints_total_limit,
            )
            logger.info("saved %s", folder)
            running.restart_clock()
    progress.close()
    return time.perf_counter() - train_start
