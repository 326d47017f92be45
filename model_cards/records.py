"""The typed contract between training and the model card: what a run measured and how it was trained.

- `EvalResults` -> `eval_results.json`: the final evaluation (fractions in [0, 1]; per-class values
  by class name, `None` for a class absent from the evaluation set), optionally `PrototypeHealth`.
- `TrainingSummary` -> `training_summary.json`: the facts the card shows about the run, with the
  ProtoSeg knobs in a nested `ProtoSegSettings` (absent for other heads).

Each value has one key. Every record checks its fields when built (type and range: `check_record_fields` and
the `require_*` helpers; errors name the file and the field) and round-trips:
`Record.from_json(record.to_json()) == record`. `check_license_choice` checks a licence as the Hub's metadata
wants it. Files of package 0.1 (older key names) are read through the "Files of package 0.1" section only, by
`from_json` / `read`; `from_dict` takes today's layout. No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from .redaction import SECRET_KEYS, publishable_path, redact_command, redact_secrets

EVAL_RESULTS_FILE = "eval_results.json"
TRAINING_SUMMARY_FILE = "training_summary.json"


# ---- Errors and field checks: check_record_fields(record, source) checks (and normalises: ints to float where a
# float is expected, tuples to lists, dicts to nested records) every field of a dataclass against its type hints;
# the require_* helpers check ranges. All raise RecordFormatError.

class ModelCardInputError(ValueError):
    """The checkpoint folder lacks, or has malformed, inputs for the model card."""


class RecordFormatError(ModelCardInputError):
    """A field of eval_results.json / training_summary.json is missing or has the wrong type or range."""


def describe_type(annotation: Any) -> str:
    """Readable name of a type hint, e.g. 'a number or null', 'a mapping of str to (a number or null)'."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [describe_type(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        joined = " or ".join(names)
        return f"{joined} or null" if type(None) in typing.get_args(annotation) else joined
    if origin is list:
        return f"a list (each item {describe_type(typing.get_args(annotation)[0])})"
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return f"a mapping (keys {describe_type(key_type)}, values {describe_type(value_type)})"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping with the fields of {annotation.__name__}"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false", Any: "any value"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against `annotation` and normalised; raises RecordFormatError naming `where`."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        alternatives = [arg for arg in arguments if arg is not type(None)]
        if len(alternatives) == 1 and (typing.get_origin(alternatives[0]) or dataclasses.is_dataclass(alternatives[0])):
            return coerce_value(value, alternatives[0], where)  # the error about an item or a nested field
        for argument in alternatives:
            try:
                return coerce_value(value, argument, where)
            except RecordFormatError:
                continue
    elif origin is list and isinstance(value, (list, tuple)):
        return [coerce_value(item, arguments[0], f"{where}[{index}]") for index, item in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: coerce_value(item, arguments[1], f"{where}[{key!r}]") for key, item in value.items()}
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return annotation.from_dict(value)
    elif annotation is bool and isinstance(value, bool):
        return value
    elif isinstance(value, bool):
        pass  # true/false is not a number
    elif annotation is int and isinstance(value, numbers.Integral):
        return int(value)
    elif annotation is float and isinstance(value, numbers.Real):
        return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise RecordFormatError(f"{where} must be {describe_type(annotation)}, got {value!r}.")


def check_record_fields(record: Any, source: str) -> None:
    """Check and normalise every field of the dataclass `record` in place (`source` names it in errors)."""
    hints = typing.get_type_hints(type(record))
    for record_field in dataclasses.fields(record):
        name = record_field.name
        object.__setattr__(record, name, coerce_value(getattr(record, name), hints[name], f"{source}: '{name}'"))


def require_fraction(value: float | None, where: str) -> None:
    """A metric must be a finite fraction in [0, 1] (as `evaluate`'s mean_iou returns), or absent."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RecordFormatError(
            f"{where} must be a fraction in [0, 1] (as returned by evaluate's mean_iou), got {value!r}."
        )


def require_count(value: int | None, where: str, *, at_most: int | None = None) -> None:
    """A count must be >= 0 (and <= `at_most` when given), or absent."""
    if value is None:
        return
    if value < 0 or (at_most is not None and value > at_most):
        bound = f" and at most {at_most}" if at_most is not None else ""
        raise RecordFormatError(f"{where} must be a count >= 0{bound}, got {value!r}.")


def require_known_keys(data: dict[str, Any], known: set[str], source: str) -> None:
    """Reject keys that are not fields of the record (a misspelt metric must not vanish silently)."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordFormatError(f"{source}: unknown field(s) {unknown}; the fields are {sorted(known)}.")


def require_present(data: dict[str, Any], required: list[str], source: str) -> None:
    """Every required field must be present."""
    for name in required:
        if name not in data:
            raise RecordFormatError(f"{source}: '{name}' is required (fields found: {sorted(data)}).")


# ---- The licence choice (`--license`, `TrainingSummary.license*`), as the Hub's metadata rules want it

OTHER_LICENSE = "other"
_HUB_LICENSE_ID = re.compile(r"^[a-z0-9]+(?:[.+-][a-z0-9]+)*$")  # apache-2.0, mit, cc-by-nc-4.0, llama3.1, other
_LICENSE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")  # the Hub's example: my-license-1.0
_LICENSE_FILE = re.compile(r"^[\w.-]+$")  # LICENSE, LICENSE.md, ... (a file in the model repository)


def check_license_choice(
    license_id: str | None, license_name: str | None, license_link: str | None, *, source: str, option_prefix: str = ""
) -> None:
    """Raise a RecordFormatError (a ValueError) unless the three values are a licence choice the Hub accepts: a
    lower-case Hub licence id (apache-2.0, mit, cc-by-nc-4.0, ...); with `other`, a `license_name` (an id such as
    my-license-1.0) and a `license_link` (LICENSE in the model repository, or a URL); name and link with nothing else.

    `source` starts the message (e.g. "training_summary.json: "); `option_prefix` "--" names them as flags.
    """
    names = {
        key: f"{option_prefix}{key}" if option_prefix else f"'{key}'" for key in ("license", "license_name", "license_link")
    }
    if license_id is None:
        if license_name is not None or license_link is not None:
            raise RecordFormatError(
                f"{source}{names['license_name']} / {names['license_link']} go with {names['license']} other, got no "
                f"{names['license']}."
            )
        return
    if not _HUB_LICENSE_ID.match(license_id):
        raise RecordFormatError(
            f"{source}{names['license']} must be a Hub licence id in lower case (e.g. apache-2.0, mit, cc-by-nc-4.0, "
            f"or other with a name and link; the list: https://huggingface.co/docs/hub/repositories-licenses), "
            f"got {license_id!r}."
        )
    if license_id != OTHER_LICENSE:
        if license_name is not None or license_link is not None:
            raise RecordFormatError(
                f"{source}{names['license_name']} / {names['license_link']} go only with {names['license']} other (the "
                f"Hub names and links its own licences), got {names['license']} {license_id!r} with them."
            )
        return
    if not license_name or not license_link:
        raise RecordFormatError(
            f"{source}{names['license']} other needs {names['license_name']} (an id such as my-license-1.0) and "
            f"{names['license_link']} (LICENSE in the repository, or a URL), got name {license_name!r} and link "
            f"{license_link!r}."
        )
    if not _LICENSE_NAME.match(license_name):
        raise RecordFormatError(
            f"{source}{names['license_name']} must be a lower-case id such as my-license-1.0, got {license_name!r}."
        )
    if not (license_link.startswith(("https://", "http://")) or _LICENSE_FILE.match(license_link)):
        raise RecordFormatError(
            f"{source}{names['license_link']} must be a URL (https://...) or the name of a file in the model "
            f"repository (e.g. LICENSE), got {license_link!r}."
        )


# ---- Files of package 0.1: the one place where files written before these records are read.
#
# Checkpoint folders of package 0.1 still render and publish. Only *files* are read in the older layout
# (`EvalResults.read` / `from_json`, `TrainingSummary.read` / `from_json`, config.json by `card_inputs`): a dict
# handed to a record in code must use today's names, and an older name there is an error that names the current one.
#
# eval_results.json
#   - `split` -> `eval_split`, `dataset_name` -> `dataset`, `num_images` -> `num_samples`;
#   - `per_category_iou` / `per_category_accuracy` as a list in class-id order -> a mapping by class
#     name (the names come from config.json's id2label).
#
# training_summary.json
#   - `encoder_name` -> `encoder`, `dataset_name` -> `dataset`, `num_train_steps` / `steps` -> `max_steps`,
#     `batch_size` -> `global_batch_size`, `lr` -> `learning_rate`, `device` -> `hardware`,
#     `wall_time_seconds` / `wall_time` -> `train_runtime_seconds`;
#   - the flat ProtoSeg knobs (`num_prototypes_per_class`, `prototype_momentum`, `ppc_loss_weight`,
#     `ppd_loss_weight`, `ppc_temperature`, `sinkhorn_iterations`, `sinkhorn_epsilon`) -> the nested
#     `protoseg` record;
#   - dropped, because another file holds them: `eval_split`, `eval_mode` (eval_results.json) and
#     `num_labels` (config.json).
#
# config.json (of a ProtoSeg model; read for the card's description and departures from the paper)
#   - no `class_score_norm`: `"layer_norm"` (0.1 had only the official LayerNorm, as `ProtoSegConfig.from_dict` loads it);
#   - no `prototype_init`: `"random"` (0.1 moved the prototypes from their random start, as the paper);
#   - `update_prototypes_with_correct_only` true / false -> `prototype_update_pixels` `"correct"` / `"all"`.
#
# When an old key and its current name are both present they must agree, or the error names both.

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
    """eval_results.json content with the current key names (see the list above)."""
    upgraded = _rename(data, EVAL_RESULTS_RENAMED, source)
    for key in PER_CATEGORY_KEYS:
        if isinstance(upgraded.get(key), (list, tuple)):
            upgraded[key] = _per_category_by_name(list(upgraded[key]), class_names, f"{source}: '{key}'")
    return upgraded


def upgrade_training_summary(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Training summary content with the current key names (see the list above)."""
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
    """A ProtoSeg config.json with the method knobs package 0.1 did not write filled in as 0.1 trained (see the list above)."""
    upgraded = dict(config)
    upgraded.setdefault("class_score_norm", "layer_norm")
    upgraded.setdefault("prototype_init", "random")
    correct_only = upgraded.pop("update_prototypes_with_correct_only", None)
    if isinstance(correct_only, bool):
        upgraded.setdefault("prototype_update_pixels", "correct" if correct_only else "all")
    return upgraded


# ---- The records

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
        """Build from a file's text in today's or the package 0.1 layout (see "Files of package 0.1"); `class_names` name the
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
    license: str | None = None  # Hub licence id chosen with --license (None: none chosen; see card_inputs.py and card.py)
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
        """Build from a file's text in today's or the package 0.1 layout (see "Files of package 0.1")."""
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
