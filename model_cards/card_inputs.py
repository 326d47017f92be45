"""Everything one card is rendered from, gathered once: the checkpoint, its results and its training summary."""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import CheckpointFacts
from .licenses import BaseWeightsLicense, base_weights_license
from .naming import DatasetNames, dataset_names
from .records import EvalResults, TrainingSummary
from .validation import ModelCardInputError


@dataclass(frozen=True, kw_only=True)
class CardInputs:
    """The inputs of every card section.

    Fields:
        facts: the saved model (config.json, weights header).
        results: the final evaluation.
        summary: the training run (an empty TrainingSummary when none was recorded).
        model_id: the name the usage snippets load (Hub repo id, or the model's name).
    """

    facts: CheckpointFacts
    results: EvalResults
    summary: TrainingSummary
    model_id: str

    @property
    def kind(self) -> str:
        """'protoseg', 'segformer' (the built-in linear SegFormer baseline) or 'other' (any other head)."""
        return self.facts.model_type if self.facts.model_type in ("protoseg", "segformer") else "other"

    @property
    def head(self) -> str:
        """The head's name: the summary's `head`, else what the model type implies."""
        if self.summary.head:
            return self.summary.head
        return "protoseg" if self.facts.has_prototypes else "linear" if self.kind == "segformer" else self.facts.model_type

    @property
    def data(self) -> DatasetNames:
        """The training and evaluation data, named for what it is."""
        return dataset_names(self.results, self.summary)

    @property
    def base_license(self) -> BaseWeightsLicense | None:
        """What is known of the licence of the encoder weights the model was trained from."""
        return base_weights_license(self.summary, self.facts)

    @property
    def per_class_iou(self) -> list[float | None]:
        return self._aligned("per_category_iou")

    @property
    def per_class_accuracy(self) -> list[float | None] | None:
        return self._aligned("per_category_accuracy") if self.results.per_category_accuracy is not None else None

    def _aligned(self, key: str) -> list[float | None]:
        """Per-class values in config.json's class order; classes not in config.json are an error."""
        values = getattr(self.results, key) or {}
        unknown = sorted(set(values) - set(self.facts.class_names))
        if unknown:
            raise ModelCardInputError(f"eval_results.json {key} names classes not in config.json: {unknown}")
        return [values.get(name) for name in self.facts.class_names]
