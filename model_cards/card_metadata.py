"""The card's YAML metadata: Hub tags, licence, datasets, base model and the model-index with the measured numbers."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCardData

from .card_inputs import CardInputs
from .naming import encoder_origin

DEFAULT_LICENSE = "other"
TAGS_BY_KIND = {
    "protoseg": ["image-segmentation", "semantic-segmentation", "protoseg", "prototype-learning", "vision"],
    "segformer": ["image-segmentation", "semantic-segmentation", "protoseg-baseline", "vision"],
    "other": ["image-segmentation", "semantic-segmentation", "vision"],
}


def _tags(inputs: CardInputs) -> list[str]:
    tags = list(TAGS_BY_KIND[inputs.kind])
    if inputs.kind == "other" and inputs.head == "linear":
        tags.append("protoseg-baseline")
    extra = ["custom_code"] if inputs.facts.uses_remote_code else []
    extra += [inputs.facts.encoder_type] if inputs.facts.encoder_type else []
    extra += inputs.summary.tags or []
    return tags + [tag for index, tag in enumerate(extra) if tag not in tags and tag not in extra[:index]]


def _model_index(inputs: CardInputs, dataset_id: str | None, dataset_name: str | None) -> list[EvalResult] | None:
    """mIoU (and pixel accuracy) on the named dataset and split; None when the dataset is unnamed."""
    if not dataset_id:
        return None
    common = dict(
        task_type="image-segmentation",
        task_name="Semantic Segmentation",
        dataset_type=dataset_id,
        dataset_name=dataset_name or dataset_id,
        dataset_split=inputs.results.eval_split,
    )
    entries = [EvalResult(metric_type="mean_iou", metric_name="mIoU", metric_value=inputs.results.mean_iou, **common)]
    if inputs.results.overall_accuracy is not None:
        entries.append(
            EvalResult(
                metric_type="accuracy", metric_name="Pixel accuracy", metric_value=inputs.results.overall_accuracy, **common
            )
        )
    return entries


def card_data(inputs: CardInputs, dataset_id: str | None, dataset_name: str | None) -> ModelCardData:
    """The metadata block of the card."""
    summary = inputs.summary
    base_model, _ = encoder_origin(summary)
    return ModelCardData(
        model_name=inputs.model_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=summary.license or DEFAULT_LICENSE,
        license_name=summary.license_name,
        license_link=summary.license_link,
        tags=_tags(inputs),
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        metrics=["mean_iou"],
        eval_results=_model_index(inputs, dataset_id, dataset_name),
    )


def license_note(data: ModelCardData) -> str:
    """Body text for the licence; explains the default `other` when no licence was named."""
    if data.license == DEFAULT_LICENSE and not data.license_name:
        return (
            "No licence was chosen for these weights when they were published (`license: other`). They "
            "derive from the encoder's initial weights and from the training data, so the terms of both "
            "apply: check them before any use, in particular commercial use."
        )
    name = data.license_name or data.license
    return f"`{name}`: {data.license_link}" if data.license_link else f"`{name}`."
