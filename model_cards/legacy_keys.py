"""The one place where files written by package 0.1 (before the typed records of model_cards.records) are read.

Checkpoint folders of package 0.1 still render and publish. Only *files* are read in the older layout
(`EvalResults.read` / `from_json`, `TrainingSummary.read` / `from_json`, config.json by `checkpoint`): a dict
handed to a record in code must use today's names, and an older name there is an error that names the current one.

eval_results.json
  - `split` -> `eval_split`, `dataset_name` -> `dataset`, `num_images` -> `num_samples`;
  - `per_category_iou` / `per_category_accuracy` as a list in class-id order -> a mapping by class
    name (the names come from config.json's id2label).

training_summary.json
  - `encoder_name` -> `encoder`, `dataset_name` -> `dataset`, `num_train_steps` / `steps` -> `max_steps`,
    `batch_size` -> `global_batch_size`, `lr` -> `learning_rate`, `device` -> `hardware`,
    `wall_time_seconds` / `wall_time` -> `train_runtime_seconds`;
  - the flat ProtoSeg knobs (`num_prototypes_per_class`, `prototype_momentum`, `ppc_loss_weight`,
    `ppd_loss_weight`, `ppc_temperature`, `sinkhorn_iterations`, `sinkhorn_epsilon`) -> the nested
    `protoseg` record;
  - dropped, because another file holds them: `eval_split`, `eval_mode` (eval_results.json) and
    `num_labels` (config.json).

config.json (of a ProtoSeg model; read for the card's description and departures from the paper)
  - no `class_score_norm`: `"layer_norm"` (0.1 had only the official LayerNorm, as `ProtoSegConfig.from_dict` loads it);
  - no `prototype_init`: `"random"` (0.1 moved the prototypes from their random start, as the paper);
  - `update_prototypes_with_correct_only` true / false -> `prototype_update_pixels` `"correct"` / `"all"`.

When an old key and its current name are both present they must agree, or the error names both.
"""

from __future__ import annotations

from typing import Any

from .validation import RecordFormatError

EVAL_RESULTS_RENAMED = {"split": "eval_split", "dataset_name": "dataset", "num_images": "num_samples"}
PER_CATEGORY_KEYS = ("per_category_iou", "per_category_accuracy")
TRAINING_SUMMARY_RENAMED = {
    "encoder_name": "encoder",
    "dataset_name": "dataset",
    "num_train_steps": "max_steps",
    "steps": "max_steps",
    "batch_size": "global_batch_size",
    "lr": "learning_rate",
    "device": "hardware",
    "wall_time_seconds": "train_runtime_seconds",
    "wall_time": "train_runtime_seconds",
}
PROTOSEG_FLAT_KEYS = (
    "num_prototypes_per_class",
    "prototype_momentum",
    "ppc_loss_weight",
    "ppd_loss_weight",
    "ppc_temperature",
    "sinkhorn_iterations",
    "sinkhorn_epsilon",
)
TRAINING_SUMMARY_DROPPED = ("eval_split", "eval_mode", "num_labels")


def _rename(data: dict[str, Any], renamed: dict[str, str], source: str) -> dict[str, Any]:
    """Copy of `data` with old key names replaced by the current ones."""
    upgraded = {key: value for key, value in data.items() if key not in renamed}
    for old, current in renamed.items():
        if old not in data:
            continue
        if current in upgraded and upgraded[current] != data[old]:
            raise RecordFormatError(
                f"{source}: '{old}' (older name of '{current}') and '{current}' disagree: "
                f"{data[old]!r} vs {upgraded[current]!r}."
            )
        upgraded[current] = data[old]
    return upgraded


def _per_category_by_name(values: list[Any], class_names: list[str] | None, where: str) -> dict[str, Any]:
    """Per-class values listed in class-id order, keyed by class name."""
    if class_names is None:
        raise RecordFormatError(
            f"{where} is a list in class-id order; write a mapping of class name to value, or read the "
            "file with the class names (EvalResults.read does, from config.json)."
        )
    if len(values) != len(class_names):
        raise RecordFormatError(f"{where} has {len(values)} values but config.json has {len(class_names)} classes.")
    return dict(zip(class_names, values))


def upgrade_eval_results(data: dict[str, Any], class_names: list[str] | None, source: str) -> dict[str, Any]:
    """eval_results.json content with the current key names (see the module docstring)."""
    upgraded = _rename(data, EVAL_RESULTS_RENAMED, source)
    for key in PER_CATEGORY_KEYS:
        if isinstance(upgraded.get(key), (list, tuple)):
            upgraded[key] = _per_category_by_name(list(upgraded[key]), class_names, f"{source}: '{key}'")
    return upgraded


def upgrade_training_summary(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Training summary content with the current key names (see the module docstring)."""
    upgraded = _rename(data, TRAINING_SUMMARY_RENAMED, source)
    for key in TRAINING_SUMMARY_DROPPED:
        upgraded.pop(key, None)
    flat_knobs = {key: upgraded.pop(key) for key in PROTOSEG_FLAT_KEYS if key in upgraded}
    if flat_knobs:
        nested = upgraded.get("protoseg") or {}
        if not isinstance(nested, dict):
            raise RecordFormatError(f"{source}: ProtoSeg knobs {sorted(flat_knobs)} given both flat and in 'protoseg'.")
        upgraded["protoseg"] = {**flat_knobs, **nested}
    return upgraded


def _reject_renamed(data: dict[str, Any], renamed: dict[str, str], source: str, record: str) -> None:
    """RecordFormatError for the first package 0.1 key name in `data`, naming today's."""
    for old, current in renamed.items():
        if old in data:
            raise RecordFormatError(
                f"{source}: '{old}' is the package 0.1 name of '{current}'; use '{current}' (only files are read "
                f"in the 0.1 layout, by {record}.read / from_json)."
            )


def reject_older_eval_results_names(data: dict[str, Any], source: str) -> None:
    """An eval_results dict built in code must use today's layout: an older name or a per-class list is an error."""
    _reject_renamed(data, EVAL_RESULTS_RENAMED, source, "EvalResults")
    for key in PER_CATEGORY_KEYS:
        if isinstance(data.get(key), (list, tuple)):
            raise RecordFormatError(
                f"{source}: '{key}' must map class names to values, got a list in class-id order (the package 0.1 "
                "layout, read only from files by EvalResults.read(folder), which names the classes from config.json)."
            )


def reject_older_training_summary_names(data: dict[str, Any], source: str) -> None:
    """A training summary dict built in code must use today's layout: an older name is an error naming the current one."""
    _reject_renamed(data, TRAINING_SUMMARY_RENAMED, source, "TrainingSummary")
    flat = sorted(key for key in PROTOSEG_FLAT_KEYS if key in data)
    if flat:
        raise RecordFormatError(f"{source}: the ProtoSeg knobs {flat} go in the nested 'protoseg' record, not at the top level.")
    elsewhere = sorted(key for key in TRAINING_SUMMARY_DROPPED if key in data)
    if elsewhere:
        raise RecordFormatError(
            f"{source}: {elsewhere} are not training summary fields (the evaluation split and mode are in "
            "eval_results.json, the classes in config.json)."
        )


def upgrade_protoseg_config(config: dict[str, Any]) -> dict[str, Any]:
    """A ProtoSeg config.json with the method knobs package 0.1 did not write filled in as 0.1 trained (see above)."""
    upgraded = dict(config)
    upgraded.setdefault("class_score_norm", "layer_norm")
    upgraded.setdefault("prototype_init", "random")
    correct_only = upgraded.pop("update_prototypes_with_correct_only", None)
    if isinstance(correct_only, bool):
        upgraded.setdefault("prototype_update_pixels", "correct" if correct_only else "all")
    return upgraded
