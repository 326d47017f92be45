"""Make transformers' segmentation pipeline recognise this package's models.

`AutoModelForSemanticSegmentation.register` reaches the Auto classes, but `pipeline("image-segmentation")` checks
the model's class name against transformers' own name tables only, and logs an error ("... is not supported for
image-segmentation") for a model that works. Adding the name to the semantic-segmentation table silences that check;
the Auto classes still find the registered class first (their `_extra_content`), and the table's other readers skip
model types that are not in transformers' own config table. Called from the modeling modules, so it runs for the
installed package and for remote code alike.
"""

from __future__ import annotations

from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES


def register_for_segmentation_pipeline(model_type: str, class_name: str) -> None:
    """List `class_name` under `model_type` as a semantic-segmentation model for the pipeline's check."""
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(model_type, class_name)


__all__ = ["register_for_segmentation_pipeline"]
