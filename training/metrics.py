"""Dataset-level segmentation metrics from a confusion matrix kept on the device.

Each batch adds its (C, C) counts; nothing else is stored, so memory does not grow with the dataset.
Processes sum their matrices (one all-reduce) before the metrics are computed. The result has the keys and
definitions of `evaluate`'s `mean_iou` metric: classes absent from both the ground truth and the predictions
have IoU NaN, classes absent from the ground truth have accuracy NaN, and NaNs are left out of the means.
`evaluate` itself is not called at run time: `evaluate.load("mean_iou")` downloads the metric's code from the
Hub (it fails offline), and its `compute` holds every prediction and label map of the dataset in memory.

`mean_iou(...)` is that metric as a function; `MeanIoUMetric` is a `compute_metrics` for transformers' `Trainer`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class ConfusionMatrix:
    """Counts `matrix[true_class, predicted_class]` over all labelled pixels seen so far.

    Arguments:
        num_labels: C, the number of classes.
        ignore_index: label value of pixels that are not counted.
        device: where the (C, C) int64 matrix lives (the model's device).
    """

    def __init__(self, num_labels: int, *, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_labels, self.ignore_index = num_labels, ignore_index
        self.matrix = torch.zeros((num_labels, num_labels), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch. predictions and labels: integer tensors of the same shape, e.g. (B, H, W)."""
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        labels = labels.to(self.matrix.device).reshape(-1).long()
        predictions = predictions.to(self.matrix.device).reshape(-1).long()
        counted = labels != self.ignore_index
        if counted.any() and ((labels[counted] < 0) | (labels[counted] >= self.num_labels)).any():
            bad_values = torch.unique(labels[counted & ((labels < 0) | (labels >= self.num_labels))]).tolist()
            raise ValueError(
                f"labels hold values {bad_values[:20]} outside [0, {self.num_labels}) and the ignore index"
            )
        pair_index = labels[counted] * self.num_labels + predictions[counted]
        self.matrix += torch.bincount(pair_index, minlength=self.num_labels**2).view(self.num_labels, self.num_labels)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Sum the matrices of all processes in place, e.g. with `lambda t: accelerator.reduce(t, "sum")`;
        with no argument, uses `torch.distributed.all_reduce` when a process group is running."""
        if all_reduce_sum is not None:
            self.matrix = all_reduce_sum(self.matrix)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """mean_iou, mean_accuracy, overall_accuracy (floats) and per_category_iou / per_category_accuracy
        (lists of C floats, NaN for a class with no pixel in labels nor predictions)."""
        matrix = self.matrix.double()
        true_positives = matrix.diagonal()
        label_pixels = matrix.sum(dim=1)  # per true class
        predicted_pixels = matrix.sum(dim=0)  # per predicted class
        union = label_pixels + predicted_pixels - true_positives
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=matrix.device)
        iou = torch.where(union > 0, true_positives / union.clamp(min=1), nan)
        accuracy = torch.where(label_pixels > 0, true_positives / label_pixels.clamp(min=1), nan)
        total = matrix.sum()
        return {
            "mean_iou": float(torch.nanmean(iou)) if (union > 0).any() else float("nan"),
            "mean_accuracy": float(torch.nanmean(accuracy)) if (label_pixels > 0).any() else float("nan"),
            "overall_accuracy": float(true_positives.sum() / total) if total > 0 else float("nan"),
            "per_category_iou": iou.cpu().tolist(),
            "per_category_accuracy": accuracy.cpu().tolist(),
        }


def _as_tensor(values: Any) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _reduce_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """evaluate's `reduce_labels`: 0 -> ignore, v -> v - 1 (the ignore value stays)."""
    return torch.where((labels == 0) | (labels == ignore_index), ignore_index, labels - 1)


def mean_iou(
    predictions: Sequence[Any] | np.ndarray | torch.Tensor,
    references: Sequence[Any] | np.ndarray | torch.Tensor,
    num_labels: int,
    ignore_index: int,
    *,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """`evaluate.load("mean_iou").compute(...)` without the Hub: same arguments, keys and NaN rules; the
    per-category values are numpy arrays, as evaluate's.

    Arguments:
        predictions, references: label maps (a batch array or a list of (H, W) maps of any sizes, pairwise equal).
    """
    confusion = ConfusionMatrix(num_labels, ignore_index=ignore_index)
    for prediction, reference in zip(predictions, references, strict=True):
        reference = _as_tensor(reference).long()
        if reduce_labels:
            reference = _reduce_labels(reference, ignore_index)
        confusion.update(_as_tensor(prediction).long(), reference)
    result = confusion.compute()
    for key in ("per_category_iou", "per_category_accuracy"):
        result[key] = np.asarray(result[key], dtype=np.float64)
    return result


class MeanIoUMetric:
    """A `compute_metrics` for transformers' `Trainer`: logits (B, C, h, w) are upsampled to the label size
    (bilinear), arg-maxed and counted into a confusion matrix; returns `mean_iou`'s keys.

    Works both ways `Trainer` calls it: with the whole evaluation set (`EvalPrediction` of numpy arrays), or
    batch by batch with `TrainingArguments(batch_eval_metrics=True)`, where nothing but the (C, C) counts is
    kept between batches.

    Arguments:
        num_labels: C. ignore_index: label value that is not counted. reduce_labels: evaluate's option.
    """

    def __init__(self, num_labels: int, *, ignore_index: int = 255, reduce_labels: bool = False) -> None:
        self.num_labels, self.ignore_index, self.reduce_labels = num_labels, ignore_index, reduce_labels
        self._confusion: ConfusionMatrix | None = None

    @torch.no_grad()
    def _update(self, logits: Any, labels: Any) -> None:
        logits, labels = _as_tensor(logits), _as_tensor(labels).long()
        if self._confusion is None:
            self._confusion = ConfusionMatrix(self.num_labels, ignore_index=self.ignore_index, device=logits.device)
        if self.reduce_labels:
            labels = _reduce_labels(labels, self.ignore_index)
        labels = torch.where(labels == -100, self.ignore_index, labels)  # Trainer's padding of uneven batches
        logits = logits.float()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self._confusion.update(logits.argmax(dim=1), labels)

    def __call__(self, eval_prediction: Any, compute_result: bool | None = None) -> dict[str, Any]:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(logits, (tuple, list)):  # a model whose config does not drop its extra outputs
            logits = logits[0]
        self._update(logits, labels)
        if compute_result is False:  # batch_eval_metrics: more batches to come
            return {}
        result = self._confusion.compute()
        self._confusion = None
        return result
