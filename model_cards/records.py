"""The typed contract between training and the model card: what a run measured and how it was trained.

- `EvalResults` -> `eval_results.json`: the final evaluation (fractions in [0, 1]; per-class values
  by class name, `None` for a class absent from the evaluation set), optionally `PrototypeHealth`.
- `TrainingSummary` -> `training_summary.json`: the facts the card shows about the run, with the
  ProtoSeg knobs in a nested `ProtoSegSettings` (absent for other heads).

Each value has one key. Every record checks its fields when built (type and range; errors name the
file and the field) and round-trips: `Record.from_json(record.to_json()) == record`. Files of package 0.1
(older key names) are read through `legacy_keys.py` only, by `from_json` / `read`; `from_dict` takes today's
layout. No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .legacy_keys import (
    reject_older_eval_results_names,
    reject_older_training_summary_names,
    upgrade_eval_results,
    upgrade_training_summary,
)
from .redaction import SECRET_KEYS, publishable_path, redact_command, redact_secrets
from .validation import (
    RecordFormatError,
    check_license_choice,
    check_record_fields,
    require_count,
    require_fraction,
    require_known_keys,
    require_present,
)

EVAL_RESULTS_FILE = "eval_results.json"
TRAINING_SUMMARY_FILE = "training_summary.json"

RecordType = TypeVar("RecordType", bound="JsonRecord")


def _label(text: str, **more: str) -> dict[str, str]:
    """Field metadata: the row label in the card's training table (fields without one are shown elsewhere)."""
    return {"label": text, **more}


class JsonRecord:
    """Dict / JSON conversion shared by the records (a mixin for keyword-only dataclasses)."""

    SOURCE: ClassVar[str]  # what error messages call the record, e.g. "eval_results.json"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; None fields and an empty `extra` are left out (None inside mappings is kept)."""
        values: dict[str, Any] = {}
        for record_field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, record_field.name)
            is_empty_default = value == {} and record_field.default_factory is not dataclasses.MISSING
            if value is not None and not is_empty_default:
                values[record_field.name] = value.to_dict() if isinstance(value, JsonRecord) else value
        return values

    @classmethod
    def field_names(cls) -> set[str]:
        return {record_field.name for record_field in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[RecordType], data: dict[str, Any]) -> RecordType:
        """Build from a dict with exactly the record's field names (unknown names are an error)."""
        if not isinstance(data, dict):
            raise RecordFormatError(f"{cls.SOURCE} must hold a JSON object, got {type(data).__name__}.")
        require_known_keys(data, cls.field_names(), cls.SOURCE)
        required = [f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING]  # type: ignore[arg-type]
        require_present(data, required, cls.SOURCE)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def parse_json(cls, text: str) -> Any:
        """The JSON value of a file's text; a RecordFormatError naming the record when it is not JSON."""
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordFormatError(f"{cls.SOURCE} is not valid JSON: {error}") from error

    @classmethod
    def from_json(cls: type[RecordType], text: str) -> RecordType:
        return cls.from_dict(cls.parse_json(text))


@dataclass(kw_only=True)
class PrototypeHealth(JsonRecord):
    """How well the prototypes are used, measured at the end of a ProtoSeg run (issue 13).

    Fields:
        num_prototypes: all prototypes, C x K.
        dead_prototypes: prototypes that did not move in the last `dead_after_steps` (or more) consecutive
            training steps in which their class had labelled pixels.
        never_updated_prototypes: prototypes that never moved during the whole run (still at their initial value).
        within_class_cosine: class name -> mean pairwise cosine similarity between that class's K
            prototypes (1 = collapsed onto one direction); None when K = 1.
        reseeded_prototypes: prototypes re-initialised during training, when the run re-seeds dead ones.
        dead_after_steps: the number of steps without pixels after which a prototype counts as dead.
        skipped_nonfinite_updates: prototype updates refused because their pixels were not finite.
    """

    SOURCE: ClassVar[str] = f"{EVAL_RESULTS_FILE}: prototype_health"

    num_prototypes: int
    dead_prototypes: int
    never_updated_prototypes: int
    within_class_cosine: dict[str, float | None]
    reseeded_prototypes: int | None = None
    dead_after_steps: int | None = None
    skipped_nonfinite_updates: int | None = None

    def __post_init__(self) -> None:
        check_record_fields(self, self.SOURCE)
        require_count(self.num_prototypes, f"{self.SOURCE}: 'num_prototypes'")
        for name in ("dead_prototypes", "never_updated_prototypes"):
            require_count(getattr(self, name), f"{self.SOURCE}: '{name}'", at_most=self.num_prototypes)
        require_count(self.reseeded_prototypes, f"{self.SOURCE}: 'reseeded_prototypes'")
        require_count(self.dead_after_steps, f"{self.SOURCE}: 'dead_after_steps'")
        require_count(self.skipped_nonfinite_updates, f"{self.SOURCE}: 'skipped_nonfinite_updates'")
        for class_name, cosine in self.within_class_cosine.items():
            if cosine is not None and not (math.isfinite(cosine) and -1.0 <= cosine <= 1.0):
                raise RecordFormatError(
                    f"{self.SOURCE}: 'within_class_cosine'[{class_name!r}] must be a cosine in [-1, 1], got {cosine!r}."
                )


def _nan_to_none(values: dict[str, float | None] | None) -> dict[str, float | None] | None:
    """NaN (a class absent from the evaluation set) is stored as None (JSON null)."""
    if values is None:
        return None
    return {name: None if value is None or math.isnan(value) else value for name, value in values.items()}


@dataclass(kw_only=True)
class EvalResults(JsonRecord):
    """The final evaluation of a checkpoint, as written to `eval_results.json`.

    Fields:
        mean_iou, mean_accuracy, overall_accuracy: fractions in [0, 1] (evaluate's mean_iou convention).
        per_category_iou, per_category_accuracy: class name -> fraction, None for classes absent
            from the evaluation set.
        eval_mode: "whole" or "slide" (sliding window), as named by training.
        whole_image_mean_iou: when eval_mode is not "whole", the mIoU of whole-image inference on the same
            images: what `pipeline("image-segmentation")` users get.
        eval_split: the split evaluated, e.g. "validation".
        num_samples: images evaluated.
        dataset: the evaluated dataset: Hub id, preset or local path (the card shows a path's last part).
        prototype_health: for models with prototypes, how well they are used.
    """

    SOURCE: ClassVar[str] = EVAL_RESULTS_FILE

    mean_iou: float
    per_category_iou: dict[str, float | None]
    mean_accuracy: float | None = None
    overall_accuracy: float | None = None
    per_category_accuracy: dict[str, float | None] | None = None
    eval_mode: str | None = None
    whole_image_mean_iou: float | None = None
    eval_split: str | None = None
    num_samples: int | None = None
    dataset: str | None = None
    prototype_health: PrototypeHealth | None = None

    def __post_init__(self) -> None:
        check_record_fields(self, self.SOURCE)
        self.per_category_iou = _nan_to_none(self.per_category_iou)  # type: ignore[assignment]
        self.per_category_accuracy = _nan_to_none(self.per_category_accuracy)
        for name in ("mean_iou", "mean_accuracy", "overall_accuracy", "whole_image_mean_iou"):
            require_fraction(getattr(self, name), f"{self.SOURCE}: '{name}'")
        for name in ("per_category_iou", "per_category_accuracy"):
            for class_name, value in (getattr(self, name) or {}).items():
                require_fraction(value, f"{self.SOURCE}: '{name}'[{class_name!r}]")
        require_count(self.num_samples, f"{self.SOURCE}: 'num_samples'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResults:
        """Build from a dict in today's layout (an older name is an error that names the current one)."""
        if isinstance(data, dict):
            reject_older_eval_results_names(data, cls.SOURCE)
        return super().from_dict(data)

    @classmethod
    def from_json(cls, text: str, class_names: list[str] | None = None) -> EvalResults:
        """Build from a file's text in today's or the package 0.1 layout (`legacy_keys`); `class_names` name the
        values of 0.1's per-class lists."""
        data = cls.parse_json(text)
        return cls.from_dict(upgrade_eval_results(data, class_names, cls.SOURCE) if isinstance(data, dict) else data)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write `folder/eval_results.json`; returns its path."""
        path = Path(folder) / EVAL_RESULTS_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str], class_names: list[str] | None = None) -> EvalResults:
        """Read `folder/eval_results.json`; FileNotFoundError says to evaluate first when it is missing."""
        path = Path(folder) / EVAL_RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing. The model card is rendered only from measured numbers: evaluate the "
                f"checkpoint first (training/train.py writes {EVAL_RESULTS_FILE} after its final evaluation), "
                f"then render the card with `python -m model_cards.card {folder}`."
            )
        return cls.from_json(path.read_text(encoding="utf-8"), class_names)


@dataclass(kw_only=True)
class ProtoSegSettings(JsonRecord):
    """The ProtoSeg method knobs of a run (absent from the summary of other heads)."""

    SOURCE: ClassVar[str] = f"{TRAINING_SUMMARY_FILE}: protoseg"

    num_prototypes_per_class: int | None = None  # shown with the model details, from config.json
    prototype_momentum: float | None = field(default=None, metadata=_label("Prototype momentum"))
    ppc_loss_weight: float | None = field(default=None, metadata=_label("PPC loss weight"))
    ppd_loss_weight: float | None = field(default=None, metadata=_label("PPD loss weight"))
    ppc_temperature: float | None = field(default=None, metadata=_label("PPC temperature"))
    sinkhorn_iterations: int | None = field(default=None, metadata=_label("Sinkhorn iterations"))
    sinkhorn_epsilon: float | None = field(default=None, metadata=_label("Sinkhorn kappa"))

    def __post_init__(self) -> None:
        check_record_fields(self, self.SOURCE)


@dataclass(kw_only=True)
class TrainingSummary(JsonRecord):
    """What the model card says about the training run; every field is optional (absent = not shown).

    Fields with a `label` are rows of the card's training table, in this order; `model_name`, `head`,
    `encoder`, `encoder_pretrained`, `command`, `license*` and `tags` are used elsewhere in the card.
    `extra` holds further facts (name -> value) shown after the known rows. Hub tokens are removed
    from `command` and `extra`, and local paths in `command`, `dataset`, `dataset_id` and `encoder` are shown
    as `<local>/<last part>`, when the summary is built (`redaction`).
    """

    SOURCE: ClassVar[str] = TRAINING_SUMMARY_FILE

    model_name: str | None = None  # Hub id or output folder name
    head: str | None = None  # "protoseg", "linear", ...
    encoder: str | None = None  # encoder name or checkpoint (Hub id / folder) the run started from
    encoder_pretrained: bool | None = None
    dataset: str | None = field(default=None, metadata=_label("Training data", format="name"))
    dataset_id: str | None = field(default=None, metadata=_label("Training dataset id"))
    preset: str | None = field(default=None, metadata=_label("Preset"))
    train_split: str | None = field(default=None, metadata=_label("Training split"))
    num_train_images: int | None = field(default=None, metadata=_label("Training images"))
    max_steps: int | None = field(default=None, metadata=_label("Training steps"))
    global_batch_size: int | None = field(default=None, metadata=_label("Batch size (total)"))
    per_device_batch_size: int | None = field(default=None, metadata=_label("Batch size per device"))
    num_processes: int | None = field(default=None, metadata=_label("Processes"))
    crop_size: list[int] | None = field(default=None, metadata=_label("Crop size", format="size"))
    optimizer: str | None = field(default=None, metadata=_label("Optimizer"))
    learning_rate: float | None = field(default=None, metadata=_label("Learning rate"))
    weight_decay: float | None = field(default=None, metadata=_label("Weight decay"))
    lr_schedule: str | None = field(default=None, metadata=_label("Learning-rate schedule"))
    pixel_contrast: str | None = field(default=None, metadata=_label("Pixel contrast (training only)"))
    protoseg: ProtoSegSettings | None = None
    seed: int | None = field(default=None, metadata=_label("Seed"))
    mixed_precision: str | None = field(default=None, metadata=_label("Mixed precision"))
    hardware: str | None = field(default=None, metadata=_label("Hardware"))
    train_runtime_seconds: float | None = field(default=None, metadata=_label("Wall time", format="duration"))
    command: str | None = None  # the command line, shown as a reproduction block
    license: str | None = None  # Hub licence id chosen with --license (None: none chosen; see licenses.py)
    license_name: str | None = None  # with license "other": the licence's id
    license_link: str | None = None  # with license "other": LICENSE in the repository, or a URL
    tags: list[str] | None = None  # extra Hub tags
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_record_fields(self, self.SOURCE)
        check_license_choice(self.license, self.license_name, self.license_link, source=f"{self.SOURCE}: ")
        self.command = redact_command(self.command)
        for name in ("dataset", "dataset_id", "encoder"):
            setattr(self, name, publishable_path(getattr(self, name)))
        self.extra = redact_secrets(self.extra)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSummary:
        """Build from a dict in today's layout: unknown keys go to `extra`, secrets are dropped, and an older name
        is an error that names the current one."""
        if not isinstance(data, dict):
            return super().from_dict(data)  # reports the wrong type
        reject_older_training_summary_names(data, cls.SOURCE)
        values = {key: value for key, value in data.items() if key not in SECRET_KEYS}
        known = cls.field_names()
        unknown = {key: value for key, value in values.items() if key not in known}
        if unknown and isinstance(values.get("extra", {}), dict):
            values["extra"] = {**values.get("extra", {}), **unknown}
        return super().from_dict({key: value for key, value in values.items() if key in known})

    @classmethod
    def from_json(cls, text: str) -> TrainingSummary:
        """Build from a file's text in today's or the package 0.1 layout (`legacy_keys`)."""
        data = cls.parse_json(text)
        return cls.from_dict(upgrade_training_summary(data, cls.SOURCE) if isinstance(data, dict) else data)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write `folder/training_summary.json`; returns its path."""
        path = Path(folder) / TRAINING_SUMMARY_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> TrainingSummary | None:
        """Read `folder/training_summary.json`, or None when the folder has none."""
        path = Path(folder) / TRAINING_SUMMARY_FILE
        return cls.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None
