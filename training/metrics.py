"""Dataset-level segmentation metrics from a confusion matrix kept on the device.

Each batch adds its (C, C) counts; nothing else is stored, so memory does not grow with the dataset.
Processes sum their matrices (one all-reduce) before the metrics are computed. The definitions match
the `mean_iou` metric of `evaluate` (never downloaded here): classes absent from both the ground
truth and the predictions have IoU NaN and are left out of the means.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


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
