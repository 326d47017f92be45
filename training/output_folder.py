"""The output folder of a run: a finished run there is never replaced silently.

A folder holds a finished run when it has the exported model or its results (`FINISHED_RUN_FILES`). Training into
it needs `--overwrite_output_dir` (which first deletes what the earlier run wrote, so no stale result, card, log or
checkpoint is mixed with the new run's) or `--resume_from_checkpoint` (which continues the run in place). A folder
holding only an unfinished run's checkpoints needs one of the two as well: a fresh run there would resume from, or
have its own checkpoints pruned in favour of, the earlier run's higher-step checkpoints.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from training.checkpointing import list_checkpoints

# Any of these in the folder: an earlier run got as far as exporting its model (or its results).
FINISHED_RUN_FILES = ("config.json", "model.safetensors", "eval_results.json")
# What a run writes at the top of its folder (besides the model code), deleted by --overwrite_output_dir.
RUN_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json", "README.md",
    "evaluation_config.json", "eval_results.json", "test_results.json", "train_results.json", "training_summary.json",
    "eval_history.jsonl",
)  # fmt: skip
RUN_FOLDERS = ("checkpoints", "runs", ".tmp-trained", ".tmp-final")


class ExistingRunError(FileExistsError):
    """The output folder holds an earlier run that this one would replace."""


def finished_run_files(output_dir: str | os.PathLike) -> list[str]:
    """The files in `output_dir` that show an earlier run finished (exported its model or results)."""
    folder = Path(output_dir)
    return [name for name in FINISHED_RUN_FILES if (folder / name).is_file()]


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resume_from_checkpoint: str | None) -> None:
    """Refuse to train into a folder holding a finished run, or an unfinished run's checkpoints, unless
    `overwrite` (`--overwrite_output_dir`) or resuming (`--resume_from_checkpoint`) says that is meant."""
    if overwrite or resume_from_checkpoint:
        return
    folder = Path(output_dir)
    finished = finished_run_files(folder)
    checkpoints = list_checkpoints(folder / "checkpoints")
    continue_hint = ", --resume_from_checkpoint latest to continue it" if checkpoints else ""
    if finished:
        raise ExistingRunError(
            f"--output_dir {folder} already holds a finished run ({', '.join(finished)}): pass --overwrite_output_dir "
            f"to replace it{continue_hint}, or choose another --output_dir"
        )
    if checkpoints:
        raise ExistingRunError(
            f"--output_dir {folder} holds the checkpoints of an unfinished run (newest: {checkpoints[-1][1].name}): "
            "pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over (its "
            "checkpoints are deleted), or choose another --output_dir"
        )


def remove_previous_run(output_dir: str | os.PathLike, model_code_files: frozenset[str] = frozenset()) -> list[str]:
    """Delete what an earlier run wrote in `output_dir` (`RUN_FILES`, weight shards, `RUN_FOLDERS` and the copied
    model code named in `model_code_files`); other files stay. Returns the names deleted."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        is_weight_shard = path.name.startswith("model-") and path.name.endswith(".safetensors")
        if path.is_file() and (path.name in RUN_FILES or path.name in model_code_files or is_weight_shard):
            path.unlink()
            removed.append(path.name)
        elif path.is_dir() and path.name in RUN_FOLDERS:
            shutil.rmtree(path)
            removed.append(path.name + "/")
    return removed


def model_code_file_names() -> frozenset[str]:
    """The names of the model code files `save_pretrained` may copy beside the weights (this package's modules)."""
    import modeling_protoseg

    folder = Path(modeling_protoseg.__file__).parent
    return frozenset(path.name for path in folder.glob("*.py") if path.name != "__init__.py")
