"""Processes of a run: the Accelerator, CPU threads, and keeping ranks in step."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn


def tracker_backend(report_to: str) -> str | None:
    """accelerate's `log_with` for `--report_to`: None for "none", or for "tensorboard" when it is not installed."""
    if report_to == "none":
        return None
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
    return report_to


def create_accelerator(config: Any) -> Accelerator:
    """One process per device, or torchrun/accelerate workers (DDP; gloo on CPU)."""
    has_accelerator_device = torch.cuda.is_available() or torch.backends.mps.is_available()
    return Accelerator(
        cpu=config.runtime.use_cpu or not has_accelerator_device,  # cpu=True: torchrun on CPUs -> DDP over gloo
        # No buffer broadcast from rank 0 before each forward: the model itself reduces its prototype
        # updates across processes (checked after training); BatchNorm statistics are synchronised
        # before each evaluation.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                broadcast_buffers=False, find_unused_parameters=config.runtime.ddp_find_unused_parameters
            )
        ],
        mixed_precision=config.runtime.mixed_precision,  # None: accelerate launch's (or its config file's) choice
        log_with=tracker_backend(config.output.report_to),
        project_dir=os.path.join(config.output.output_dir, "runs"),
    )


def single_process_warning(num_processes: int, environment: Mapping[str, str] | None = None) -> str | None:
    """Why a run that `accelerate launch --num_processes N` (N > 1) started is one process, and how to get N; None
    when it was not asked for more. accelerate's plain launcher (what `--num_processes N` without `--multi_gpu` runs
    on a CPU or a single GPU) starts one process and sets MASTER_ADDR for the N it was asked for, but no
    WORLD_SIZE; its multi-process launchers set WORLD_SIZE."""
    environment = os.environ if environment is None else environment
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in environment
    asked_for_processes = "MASTER_ADDR" in environment and "WORLD_SIZE" not in environment
    if num_processes > 1 or not (launched_by_accelerate and asked_for_processes):
        return None
    return (
        "accelerate launch was asked for more than one process (it set MASTER_ADDR) but started one: without "
        "--multi_gpu it runs a single process on a CPU or a single GPU. For N processes run `accelerate launch "
        "--multi_gpu --num_processes N training/train.py ...` (gloo on CPUs) or `torchrun --nproc_per_node N "
        "training/train.py ...`"
    )


def set_compute_threads(accelerator: Accelerator, num_threads: int | None, num_data_workers: int) -> None:
    """On CPU, share the cores between processes and data workers (oversubscribed OpenMP threads are many
    times slower than fewer threads on a busy machine); `num_threads` overrides."""
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores_per_process = (os.cpu_count() or 1) // local_processes
        torch.set_num_threads(num_threads or max(1, cores_per_process - num_data_workers))
    elif num_threads:
        torch.set_num_threads(num_threads)


def quiet_other_processes(accelerator: Accelerator) -> None:
    """Only the local main process logs at INFO level."""
    if accelerator.is_local_main_process:
        return
    import datasets
    import transformers

    logging.getLogger().setLevel(logging.WARNING)
    datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def release_wrapped_model(accelerator: Accelerator) -> None:
    """Drop the DDP wrapper (and the optimizer) once training is done, on every process, before the process
    group is destroyed: a gloo group torn down together with a live DDP `Reducer` can deadlock at exit."""
    accelerator.free_memory()  # accelerate's references to the prepared model, optimizer and scheduler; gc
    accelerator.wait_for_everyone()


def synchronize_buffers(model: nn.Module, accelerator: Accelerator) -> None:
    """Copy rank 0's BatchNorm statistics (and other buffers) to all ranks. The prototypes are left
    alone: the model keeps them identical itself, and `divergence_across_processes` checks that."""
    if accelerator.num_processes > 1 and torch.distributed.is_initialized():
        for name, buffer in model.named_buffers():
            if not name.endswith("prototypes"):
                torch.distributed.broadcast(buffer.data, src=0)


def divergence_across_processes(model: nn.Module, accelerator: Accelerator) -> dict[str, float]:
    """Largest difference between processes of the prototypes and of per-tensor parameter sums (0 = in sync)."""
    result = {}
    prototypes = getattr(model, "prototypes", None)
    if prototypes is not None:
        gathered = accelerator.gather(prototypes.detach().float()[None])  # (P, C, K, D)
        result["prototypes_max_abs_difference_across_processes"] = float((gathered - gathered[:1]).abs().max())
    parameter_sums = torch.stack([p.detach().double().sum() for p in model.parameters()])[None]  # (1, num_tensors)
    gathered_sums = accelerator.gather(parameter_sums)  # (P, num_tensors)
    result["parameters_max_abs_difference_across_processes"] = float((gathered_sums - gathered_sums[:1]).abs().max())
    return result
