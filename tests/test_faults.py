"""Fault injection (issue 9): what a run survives and what it keeps. Runs alone: `pytest tests/test_faults.py`.

- resuming runs no code from the checkpoint folder (malicious pickles are refused, never executed);
- one non-finite batch or loss is skipped on every process: no parameter, BatchNorm or prototype change;
- resuming with changed arguments is refused or stops cleanly; a damaged newest checkpoint falls back;
- bad data names its split, index and file; the trained model is exported even when evaluation fails;
- distributed input errors fail on every process together instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "training" / "train.py"
TINY_RUN = [
    "--encoder", "mit-test",
    "--synthetic_num_train", "24", "--synthetic_num_validation", "6", "--synthetic_image_size", "32",
    "--crop_size", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
    "--num_prototypes_per_class", "2", "--embedding_dim", "16", "--decoder_hidden_size", "16",
    "--warmup_steps", "2", "--dataloader_num_workers", "0", "--num_threads", "1",
    "--report_to", "none", "--logging_steps", "1", "--eval_steps", "0",
]  # fmt: skip


def run_training(args: list[str], *, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python training/train.py ARGS` offline on one thread; returns the finished process (not checked)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                   "NO_ALBUMENTATIONS_UPDATE": "1"}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        env=environment, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 6-step run with checkpoints at steps 2 and 4 (copied by each test that damages it)."""
    output_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    result = run_training([*TINY_RUN, "--max_steps", "6", "--checkpointing_steps", "2",
                           "--checkpoints_total_limit", "5", "--output_dir", str(output_dir)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir


def _copy_checkpoints(run: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(run / "checkpoints", destination / "checkpoints")
    return destination


class _RunsCode:
    """A pickle that, when unpickled with code execution allowed, creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from the checkpoint ran')",))


# ------------------------------------------------------------------------------ 3. no code from a checkpoint


def test_checkpoints_hold_no_pickled_objects_and_malicious_pickles_never_run(
    checkpointed_run: Path, tmp_path: Path
) -> None:
    for folder in (checkpointed_run / "checkpoints").iterdir():
        assert not list(folder.glob("custom_checkpoint_*")), f"{folder} holds a pickled object"
    for file_name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        output_dir = _copy_checkpoints(checkpointed_run, tmp_path / file_name)
        marker = tmp_path / f"{file_name}.ran"
        torch.save(_RunsCode(marker), output_dir / "checkpoints" / "checkpoint-4" / file_name)
        result = run_training([*TINY_RUN, "--max_steps", "6", "--output_dir", str(output_dir),
                               "--resume_from_checkpoint", str(output_dir / "checkpoints" / "checkpoint-4")])  # fmt: skip
        assert not marker.exists(), f"resuming ran code from {file_name}"
        assert result.returncode != 0, f"a resume with a malicious {file_name} went on"
        assert file_name in result.stderr or "weights_only" in result.stderr.lower(), result.stderr[-3000:]


def test_resume_sets_the_learning_rate_schedule_from_the_step() -> None:
    from training.optimization import PolyWithWarmup, set_schedule_step

    def scheduler() -> torch.optim.lr_scheduler.LambdaLR:
        optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                                     {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}])  # fmt: skip
        schedule = PolyWithWarmup(max_steps=10, power=0.9, warmup_steps=3, warmup_start_factor=0.1, min_factor=0.01)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    stepped, restored = scheduler(), scheduler()
    for _ in range(7):
        stepped.optimizer.step()
        stepped.step()
    set_schedule_step(restored, 7)
    assert restored.get_last_lr() == stepped.get_last_lr()
    assert [group["lr"] for group in restored.optimizer.param_groups] == stepped.get_last_lr()
    restored.optimizer.step()
    restored.step()
    stepped.step()
    assert restored.get_last_lr() == stepped.get_last_lr()
