"""Card sections about the run: training setup, results, prototype health.

Each function takes the `CardInputs` and returns Markdown (no heading; template.md holds the outline).
Only recorded facts are shown: a field that is None is left out, never filled in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .card_inputs import CardInputs
from .markdown import duration, percent, plain_value, table
from .naming import short_name
from .validation import ModelCardInputError

NO_TRAINING_DETAILS = "No training details were recorded with this checkpoint."
MISSING_CLASS_NOTE = "n/a: the class does not occur in the evaluation set."
SLIDE_NAMES = {"slide": "sliding-window", "multiscale": "multi-scale + flip"}


def _formatted(value: Any, value_format: str | None) -> str:
    if value_format == "duration":
        return duration(value)
    if value_format == "size":
        return " × ".join(str(side) for side in value)
    if value_format == "name":
        return short_name(value) or ""
    return plain_value(value)


def _labelled_rows(record: Any) -> list[tuple[str, str]]:
    """(label, text) for each labelled field of a record that holds a value, in field order (nested records inline)."""
    rows = []
    for record_field in dataclasses.fields(record):
        value = getattr(record, record_field.name)
        if dataclasses.is_dataclass(value):
            rows += _labelled_rows(value)
        elif "label" in record_field.metadata and value not in (None, "", []):
            rows.append((record_field.metadata["label"], _formatted(value, record_field.metadata.get("format"))))
    return rows


TRAINING_DATA_LABEL = "Training data"


def training_rows(inputs: CardInputs) -> list[tuple[str, str]]:
    """The training table: labelled summary fields in field order (ProtoSeg knobs inline), then `extra`. The data
    is named for what it is (a Hub dataset, local data, the built-in synthetic scenes)."""
    summary = inputs.summary
    rows = [
        (label, inputs.data.described if label == TRAINING_DATA_LABEL and inputs.data.described else value)
        for label, value in _labelled_rows(summary)
    ]
    extra = [(name.replace("_", " ").capitalize(), plain_value(value)) for name, value in sorted(summary.extra.items())]
    return rows + [row for row in extra if row[1] not in ("", "None")]


def training_setup(inputs: CardInputs) -> str:
    """The recorded training facts and the command line, or a note that none were recorded."""
    rows = training_rows(inputs)
    text = table(rows) if rows else NO_TRAINING_DETAILS
    if inputs.summary.command:
        text += "\n\nCommand:\n\n```bash\n" + inputs.summary.command.replace("```", "'''") + "\n```"
    return text


def results(inputs: CardInputs, evaluation_target: str) -> str:
    """Headline metrics, then the per-class IoU (and accuracy) table."""
    measured = inputs.results
    rows: list[tuple[str, str]] = [("mIoU (%)", percent(measured.mean_iou))]
    if measured.overall_accuracy is not None:
        rows.append(("Pixel accuracy (%)", percent(measured.overall_accuracy)))
    if measured.mean_accuracy is not None:
        rows.append(("Mean class accuracy (%)", percent(measured.mean_accuracy)))
    if measured.eval_mode:
        rows.append(("Inference", measured.eval_mode))
    if measured.eval_mode not in (None, "whole") and measured.whole_image_mean_iou is not None:
        rows.append(("mIoU, whole image as in `pipeline` (%)", percent(measured.whole_image_mean_iou)))
    if measured.num_samples is not None:
        rows.append(("Images evaluated", str(measured.num_samples)))
    names, ious, accuracies = inputs.facts.class_names, inputs.per_class_iou, inputs.per_class_accuracy
    if accuracies is None:
        per_class = table([(name, percent(iou)) for name, iou in zip(names, ious)], header=("class", "IoU (%)"))
    else:
        per_class = table(
            [(name, percent(iou), percent(accuracy)) for name, iou, accuracy in zip(names, ious, accuracies)],
            header=("class", "IoU (%)", "pixel accuracy (%)"),
        )
    note = f"\n\n{MISSING_CLASS_NOTE}" if any(iou is None for iou in ious) else ""
    mode_note = ""
    if measured.eval_mode not in (None, "whole"):
        mode_note = (
            f" The mIoU is of {SLIDE_NAMES.get(measured.eval_mode, measured.eval_mode)} inference; "
            '`pipeline("image-segmentation")` runs on the whole image'
            + (" (the whole-image row)." if measured.whole_image_mean_iou is not None else ".")
        )
    return (
        f"Measured on {evaluation_target}.{mode_note}\n\n{table(rows, header=('metric', 'value'))}\n\n"
        f"### Per-class IoU\n\n{per_class}{note}"
    )


def _check_health_matches_model(inputs: CardInputs) -> None:
    health, facts = inputs.results.prototype_health, inputs.facts
    unknown = sorted(set(health.within_class_cosine) - set(facts.class_names))
    if unknown:
        raise ModelCardInputError(f"eval_results.json prototype_health.within_class_cosine names classes not in config.json: {unknown}")
    expected = len(facts.class_names) * facts.num_prototypes_per_class
    if health.num_prototypes != expected:
        raise ModelCardInputError(
            f"eval_results.json prototype_health.num_prototypes is {health.num_prototypes}, but the model has "
            f"C x K = {len(facts.class_names)} x {facts.num_prototypes_per_class} = {expected} prototypes."
        )


def prototype_health(inputs: CardInputs) -> str:
    """Counts of dead / never-updated / re-seeded prototypes and the per-class cosine table; '' when not measured.

    Models without prototypes get no section, even if their results carry a prototype_health entry.
    """
    health = inputs.results.prototype_health
    if health is None or not inputs.facts.has_prototypes:
        return ""
    _check_health_matches_model(inputs)
    idle = f"{health.dead_after_steps} or more" if health.dead_after_steps is not None else "many"
    dead_label = f"Dead prototypes (did not move in the last {idle} steps in which their class had pixels)"
    rows = [("Prototypes (C × K)", str(health.num_prototypes)), (dead_label, str(health.dead_prototypes))]
    rows.append(("Never updated (still at their initial value)", str(health.never_updated_prototypes)))
    if health.reseeded_prototypes is not None:
        rows.append(("Re-seeded during training", str(health.reseeded_prototypes)))
    if health.skipped_nonfinite_updates:
        rows.append(("Updates refused (non-finite pixels)", str(health.skipped_nonfinite_updates)))
    cosines = [
        (name, "n/a" if health.within_class_cosine.get(name) is None else f"{health.within_class_cosine[name]:.3f}")
        for name in inputs.facts.class_names
        if name in health.within_class_cosine
    ]
    return (
        "How the prototypes were used, measured at the end of training.\n\n"
        f"{table(rows)}\n\n"
        "Mean cosine similarity between the K prototypes of each class: near 1 means they collapsed onto one "
        "direction (the class is effectively one prototype); lower means they cover distinct sub-clusters.\n\n"
        f"{table(cosines, header=('class', 'mean within-class cosine'))}"
    )
