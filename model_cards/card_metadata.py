"""The card's YAML metadata: Hub tags, licence, datasets, base model and the model-index with the measured numbers.

Only a Hub dataset (one training read from the Hub) is named in `datasets` and the model-index; local data and
the built-in synthetic scenes are named in the card's text only, and their numbers too.
"""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCardData

from .card_inputs import CardInputs
from .licenses import metadata_license
from .naming import encoder_origin
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


def _model_index(inputs: CardInputs) -> list[EvalResult] | None:
    """mIoU (and pixel accuracy) on the Hub dataset and split; None unless the data is a Hub dataset."""
    data = inputs.data
    if not data.hub_id:
        return None
    common = dict(
        task_type="image-segmentation",
        task_name="Semantic Segmentation",
        dataset_type=data.hub_id,
        dataset_name=data.name or data.hub_id,
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


def card_data(inputs: CardInputs) -> ModelCardData:
    """The metadata block of the card."""
    base_model, _ = encoder_origin(inputs.summary)
    license_id, license_name, license_link = metadata_license(inputs.summary, inputs.base_license)
    return ModelCardData(
        model_name=inputs.model_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        tags=_tags(inputs),
        datasets=[inputs.data.hub_id] if inputs.data.hub_id else None,
        base_model=base_model,
        metrics=["mean_iou"],
        eval_results=_model_index(inputs),
    )
