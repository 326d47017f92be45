"""Crash-safe training checkpoints on top of `accelerator.save_state`.

A checkpoint is first written to a hidden temporary folder; only when every file is on disk is it
renamed to `checkpoint-<step>` (a rename is atomic on one file system). A run killed mid-write
leaves at most a stale temporary folder, which `latest` ignores and the next save removes, so the
last good checkpoint is never replaced by a partial one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

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


def load_checkpoint(accelerator: Accelerator, folder: str | os.PathLike) -> dict[str, Any]:
    """Restore everything `save_checkpoint` saved; returns the training state (with "step")."""
    folder = Path(folder)
    state_path = folder / TRAINING_STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"{folder} is not a complete checkpoint (no {TRAINING_STATE_FILE})")
    accelerator.load_state(str(folder))
    return json.loads(state_path.read_text())


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, checkpoint_root: str | os.PathLike) -> Path | None:
    """`--resume_from_checkpoint`: "latest" (None if there is none yet) or a checkpoint folder."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return find_latest_checkpoint(checkpoint_root)
    folder = Path(resume_from_checkpoint)
    if not (folder / TRAINING_STATE_FILE).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint folder "
            f"(no {TRAINING_STATE_FILE}); use 'latest' or one of: "
            f"{', '.join(str(path) for _, path in list_checkpoints(checkpoint_root)) or 'none saved yet'}"
        )
    return folder
