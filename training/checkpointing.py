"""Crash-safe training checkpoints on top of `accelerator.save_state`.

A checkpoint is first written to a hidden temporary folder; only when every file is on disk is it
renamed to `checkpoint-<step>` (a rename is atomic on one file system). A run killed mid-write
leaves at most a stale temporary folder, which `latest` ignores and the next save removes, so the
last good checkpoint is never replaced by a partial one.

Nothing in a checkpoint folder can run code on resume: the model is `model.safetensors`; the optimizer,
grad scaler and RNG states are torch pickles that accelerate loads with `weights_only=True` (tensors, numbers,
numpy arrays only: a pickle naming any other callable is refused); the learning-rate schedule is not saved
at all (it is a pure function of the step, recomputed on resume: `training.optimization.set_schedule_step`);
the step and the run's shape are `training_state.json`. A `custom_checkpoint_*.pkl` (accelerate's pickle of a
registered object, unpickled with `weights_only=False`) is refused, never opened.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load

logger = logging.getLogger("protoseg.train")

TRAINING_STATE_FILE = "training_state.json"
_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(checkpoint_root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `checkpoint_root` as (step, folder), oldest first."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _CHECKPOINT_PATTERN.match(folder.name)
        if match and folder.is_dir() and (folder / TRAINING_STATE_FILE).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def find_latest_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(checkpoint_root)
    return checkpoints[-1][1] if checkpoints else None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def save_checkpoint(
    accelerator: Accelerator,
    checkpoint_root: str | os.PathLike,
    step: int,
    training_state: dict[str, Any],
    *,
    total_limit: int | None = None,
) -> Path:
    """Save model, optimizer, scheduler, scaler and RNG states plus `training_state` as `checkpoint-<step>`.

    All processes must call this (each saves its RNG state). Keeps the newest `total_limit` checkpoints.
    """
    root = Path(checkpoint_root)
    final_folder = root / f"checkpoint-{step}"
    temporary_folder = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-checkpoint-*"):  # left by an interrupted save
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary_folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state_path = temporary_folder / TRAINING_STATE_FILE
        state_path.write_text(json.dumps({**training_state, "step": step}, indent=2))
        for written in temporary_folder.rglob("*"):
            if written.is_file():
                _fsync_file(written)
        if final_folder.exists():  # the same step saved again (e.g. after a resume): swap, then delete
            replaced = root / f".tmp-replaced-{step}"
            os.replace(final_folder, replaced)
            os.replace(temporary_folder, final_folder)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(temporary_folder, final_folder)
        if total_limit is not None and total_limit > 0:
            for _, old_folder in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old_folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final_folder


def check_no_code_in_checkpoint(folder: str | os.PathLike, process_index: int = 0) -> None:
    """Refuse a checkpoint folder holding a file that would be unpickled with code execution allowed, and
    check this process's RNG states load as plain data (accelerate swallows an error there silently)."""
    folder = Path(folder)
    unsafe = sorted(path.name for path in folder.glob("custom_checkpoint_*.pkl"))
    if unsafe:
        raise ValueError(
            f"{folder} holds {', '.join(unsafe)}: accelerate unpickles such files with weights_only=False, which "
            "can run code, so they are never loaded. This package no longer writes them (the learning-rate "
            "schedule is recomputed from the step); if an older version of this package wrote this checkpoint "
            "and you trust it, delete the file(s) and resume again."
        )
    random_states = folder / f"random_states_{process_index}.pkl"
    if random_states.is_file():
        try:
            accelerate_load(random_states)  # weights_only=True with numpy arrays allowed, as accelerate loads it
        except Exception as error:
            raise ValueError(f"{random_states} is not plain data (refused with weights_only=True): {error}") from error


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be resumed from (unreadable training state, missing or truncated weights), or None."""
    folder = Path(folder)
    try:
        json.loads((folder / TRAINING_STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        return f"{TRAINING_STATE_FILE}: {error}"
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights and not any(folder.glob("pytorch_model*.bin")):
        return "no model weights"
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as file:  # checks the header covers the whole file
                file.keys()
        except Exception as error:  # noqa: BLE001 - any unreadable file makes the checkpoint unusable
            return f"{path.name}: {error}"
    return None


def load_checkpoint(accelerator: Accelerator, folder: str | os.PathLike) -> dict[str, Any]:
    """Restore everything `save_checkpoint` saved; returns the training state (with "step"). The learning-rate
    schedule is not in the checkpoint: set it from the step (`training.optimization.set_schedule_step`)."""
    folder = Path(folder)
    state_path = folder / TRAINING_STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"{folder} is not a complete checkpoint (no {TRAINING_STATE_FILE})")
    check_no_code_in_checkpoint(folder, accelerator.process_index)
    accelerator.load_state(str(folder))
    return json.loads(state_path.read_text())


def check_resume_matches(training_state: dict[str, Any], current: dict[str, int], *, max_steps: int) -> None:
    """Refuse to resume a checkpoint whose run had another shape (the data position and the per-process RNG
    states would no longer mean the same samples), or that is already past `max_steps`.

    Arguments:
        training_state: the checkpoint's `training_state.json`.
        current: this run's `num_processes`, `per_device_train_batch_size`, `gradient_accumulation_steps` and
            `global_batch_size`; a key the checkpoint lacks (older checkpoints) is not compared.
    """
    differences = [
        f"{name}: the checkpoint has {training_state[name]}, this run {value}"
        for name, value in current.items()
        if name in training_state and training_state[name] != value
    ]
    if differences:
        raise ValueError(
            f"cannot resume from step {training_state['step']} with another batch layout ("
            + "; ".join(differences)
            + "): use the checkpoint's values, or start a new run in another --output_dir"
        )
    if training_state["step"] > max_steps:
        raise ValueError(
            f"the checkpoint is at step {training_state['step']}, past --max_steps {max_steps}: give --max_steps "
            f">= {training_state['step']}, or evaluate the checkpoint's weights instead of resuming"
        )


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, checkpoint_root: str | os.PathLike) -> Path | None:
    """`--resume_from_checkpoint`: "latest" (None if there is none yet) or a checkpoint folder. "latest" skips
    damaged checkpoints (truncated weights, unreadable state) with a warning and takes the newest intact one."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(checkpoint_root)
        for _, folder in reversed(checkpoints):
            problem = checkpoint_problem(folder)
            if problem is None:
                return folder
            logger.warning("skipping the damaged checkpoint %s (%s); trying the previous one", folder, problem)
        if checkpoints:
            raise ValueError(f"every checkpoint in {checkpoint_root} is damaged (see the warnings above)")
        return None
    folder = Path(resume_from_checkpoint)
    if not (folder / TRAINING_STATE_FILE).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint folder "
            f"(no {TRAINING_STATE_FILE}); use 'latest' or one of: "
            f"{', '.join(str(path) for _, path in list_checkpoints(checkpoint_root)) or 'none saved yet'}"
        )
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is damaged: {problem}")
    return folder
