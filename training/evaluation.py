"""Inference for evaluation: whole-image, sliding-window and multi-scale + flip, then dataset-level metrics.

The evaluation transform resizes each image's short side to the base size; predictions are
upsampled back to the label's original size, where the confusion matrix is accumulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .metrics import ConfusionMatrix

EVAL_MODES = ("whole", "slide", "multiscale")
MULTISCALE_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # of the base size: mmseg's and the paper's MS test
EVALUATION_CONFIG_FILE = "evaluation_config.json"


def default_stride(crop_size: Sequence[int]) -> tuple[int, int]:
    """The sliding-window stride when none is given: 2/3 of the window (mmseg's Cityscapes setting)."""
    return max(1, crop_size[0] * 2 // 3), max(1, crop_size[1] * 2 // 3)


@dataclass(frozen=True)
class EvaluationSetup:
    """How a run evaluates its model, saved beside it (`evaluation_config.json`) so that
    `python -m training.evaluate` scores the folder the same way unless told otherwise. The base size (the
    short side images are resized to) is the saved image processor's; it is not repeated here.

    Arguments:
        eval_mode: "whole", "slide" or "multiscale".
        crop_size: (height, width) of the sliding windows.
        eval_stride: (height, width) step between windows.
        eval_scales: multiscale factors of the base size.
        eval_flip: multiscale: also average the mirrored image.
    """

    eval_mode: str
    crop_size: tuple[int, int]
    eval_stride: tuple[int, int]
    eval_scales: tuple[float, ...] = MULTISCALE_FACTORS
    eval_flip: bool = True

    def __post_init__(self) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode {self.eval_mode!r} is not one of {', '.join(EVAL_MODES)}")
        for name in ("crop_size", "eval_stride"):
            value = getattr(self, name)
            if len(value) != 2 or not all(isinstance(item, int) and item >= 1 for item in value):
                raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")
        if not isinstance(self.eval_flip, bool):
            raise ValueError(f"eval_flip must be true or false, got {self.eval_flip!r}")
        if not self.eval_scales or not all(isinstance(scale, (int, float)) and scale > 0 for scale in self.eval_scales):
            raise ValueError(f"eval_scales must be positive numbers, got {self.eval_scales!r}")

    @classmethod
    def from_settings(
        cls,
        *,
        eval_mode: str,
        crop_size: Sequence[int],
        eval_stride: Sequence[int] | None = None,
        eval_scales: Sequence[float] = MULTISCALE_FACTORS,
        eval_flip: bool = True,
    ) -> EvaluationSetup:
        """The setup of a run's settings: a one-number crop or stride is square; no stride is `default_stride`."""
        crop = tuple(int(item) for item in crop_size) * (2 if len(crop_size) == 1 else 1)
        stride = tuple(int(item) for item in eval_stride) * (2 if len(eval_stride) == 1 else 1) if eval_stride else None
        return cls(
            eval_mode=eval_mode, crop_size=crop, eval_stride=stride or default_stride(crop),
            eval_scales=tuple(float(scale) for scale in eval_scales), eval_flip=eval_flip,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_mode": self.eval_mode,
            "crop_size": list(self.crop_size),
            "eval_stride": list(self.eval_stride),
            "eval_scales": list(self.eval_scales),
            "eval_flip": self.eval_flip,
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `evaluation_config.json` into `folder`."""
        path = Path(folder) / EVALUATION_CONFIG_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike) -> EvaluationSetup | None:
        """The setup saved in `folder`, or None when it has none; a ValueError names the file and the bad value."""
        path = Path(folder) / EVALUATION_CONFIG_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ValueError(f"expected a JSON object, got {type(values).__name__}")
            unknown = sorted(set(values) - {item.name for item in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            return cls.from_settings(**values)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error


def _model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, h', w') logits of a segmentation model (ProtoSeg or SegFormer) at its own output stride."""
    return model(pixel_values=pixel_values).logits


@torch.no_grad()
def predict_logits_whole(model: nn.Module, pixel_values: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Whole-image inference. pixel_values (B, 3, h, w) -> logits (B, C, *output_size), float32."""
    logits = _model_logits(model, pixel_values).float()  # (B, C, h/4, w/4)
    return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


def sliding_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of windows of at most `crop_size` covering the image, the last row and
    column of windows shifted back to end at the border (mmseg's "slide" mode)."""
    crop_height, crop_width = crop_size
    stride_height, stride_width = stride
    rows = max(height - crop_height + stride_height - 1, 0) // stride_height + 1
    cols = max(width - crop_width + stride_width - 1, 0) // stride_width + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            bottom = min(row * stride_height + crop_height, height)
            right = min(col * stride_width + crop_width, width)
            windows.append((max(bottom - crop_height, 0), bottom, max(right - crop_width, 0), right))
    return windows


@torch.no_grad()
def predict_logits_sliding(
    model: nn.Module,
    pixel_values: torch.Tensor,
    output_size: tuple[int, int],
    *,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
    windows_per_forward: int = 8,
) -> torch.Tensor:
    """Sliding-window inference: average the logits of overlapping crops.

    pixel_values (B, 3, h, w) -> logits (B, C, *output_size), float32.
    """
    batch_size, _, height, width = pixel_values.shape
    windows = sliding_windows(height, width, crop_size, stride)
    summed_logits: torch.Tensor | None = None  # (B, C, h, w)
    counts = torch.zeros((1, 1, height, width), device=pixel_values.device)
    for first in range(0, len(windows), windows_per_forward):
        chunk = windows[first : first + windows_per_forward]
        crops = torch.cat([pixel_values[:, :, top:bottom, left:right] for top, bottom, left, right in chunk])
        crop_logits = _model_logits(model, crops).float()  # (len(chunk) * B, C, crop_h/4, crop_w/4)
        crop_logits = F.interpolate(crop_logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        if summed_logits is None:
            summed_logits = crop_logits.new_zeros((batch_size, crop_logits.shape[1], height, width))
        for position, (top, bottom, left, right) in enumerate(chunk):
            summed_logits[:, :, top:bottom, left:right] += crop_logits[
                position * batch_size : (position + 1) * batch_size
            ]
            counts[:, :, top:bottom, left:right] += 1
    logits = summed_logits / counts
    return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_probabilities_multiscale(
    model: nn.Module,
    pixel_values: torch.Tensor,
    output_size: tuple[int, int],
    *,
    scales: Sequence[float],
    flip: bool = True,
) -> torch.Tensor:
    """Multi-scale (+ horizontal flip) inference, as mmseg's `aug_test` and the paper's "MS" columns: the image,
    already at the base size, is resized by each factor in `scales` (and mirrored when `flip`); each view's
    logits are resized to `output_size` (the label's resolution), un-mirrored and turned into softmax
    probabilities; the result is their mean.

    pixel_values (B, 3, h, w) -> probabilities (B, C, *output_size), float32.
    """
    height, width = pixel_values.shape[-2:]
    summed_probabilities: torch.Tensor | None = None  # (B, C, *output_size)
    num_views = 0
    for scale in scales:
        scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = F.interpolate(pixel_values, size=scaled_size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            logits = predict_logits_whole(model, view, output_size)  # (B, C, *output_size)
            probabilities = (logits.flip(-1) if mirrored else logits).softmax(dim=1)
            summed_probabilities = (
                probabilities if summed_probabilities is None else summed_probabilities + probabilities
            )
            num_views += 1
    return summed_probabilities / num_views


@torch.no_grad()
def predict_segmentation(
    model: nn.Module,
    pixel_values: torch.Tensor,
    output_size: tuple[int, int],
    *,
    mode: str = "whole",
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    scales: Sequence[float] = MULTISCALE_FACTORS,
    flip: bool = True,
) -> torch.Tensor:
    """Class index per pixel, (B, *output_size) long. `mode` is "whole", "slide" or "multiscale"
    (`scales` and `flip` apply to "multiscale" only)."""
    if mode == "whole":
        logits = predict_logits_whole(model, pixel_values, output_size)
    elif mode == "slide":
        if crop_size is None:
            raise ValueError("sliding-window evaluation needs a crop_size")
        stride = stride or default_stride(crop_size)
        logits = predict_logits_sliding(model, pixel_values, output_size, crop_size=crop_size, stride=stride)
    elif mode == "multiscale":
        logits = predict_probabilities_multiscale(model, pixel_values, output_size, scales=scales, flip=flip)
    else:
        raise ValueError(f"Unknown evaluation mode {mode!r}; valid modes: {', '.join(EVAL_MODES)}")
    return logits.argmax(dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, list[torch.Tensor]]],
    *,
    num_labels: int,
    ignore_index: int = 255,
    mode: str = "whole",
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    scales: Sequence[float] = MULTISCALE_FACTORS,
    flip: bool = True,
    device: torch.device | str = "cpu",
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    show_progress: bool = False,
    num_examples: int = 0,
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of `model` over `batches` (from `collate_eval`).

    In a multi-process run each process passes its own shard of the data and `all_reduce_sum`;
    every process returns the same, dataset-level metrics. Returns `ConfusionMatrix.compute()` plus
    `num_samples` (over all processes), and with `num_examples` > 0 "examples": this process's first
    `num_examples` samples as {"pixel_values" (3, h, w), "labels" (H, W), "prediction" (H, W)} on the CPU.
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_labels, ignore_index=ignore_index, device=device)
    num_samples = torch.zeros((), dtype=torch.int64, device=device)
    examples: list[dict[str, torch.Tensor]] = []
    for batch in tqdm(batches, desc="eval", disable=not show_progress, leave=False):
        images = [image.to(device) for image in batch["pixel_values"]]  # each (3, h, w)
        labels = [label.to(device) for label in batch["labels"]]  # each (H, W)
        same_size = len({image.shape for image in images}) == 1 and len({label.shape for label in labels}) == 1
        groups = [(images, labels)] if same_size else [([i], [lab]) for i, lab in zip(images, labels, strict=True)]
        for group_images, group_labels in groups:
            with autocast():
                predictions = predict_segmentation(
                    model,
                    torch.stack(group_images),
                    tuple(group_labels[0].shape),
                    mode=mode,
                    crop_size=crop_size,
                    stride=stride,
                    scales=scales,
                    flip=flip,
                )
            confusion.update(predictions, torch.stack(group_labels))
            for image, label, prediction in zip(group_images, group_labels, predictions, strict=True):
                if len(examples) < num_examples:
                    examples.append({"pixel_values": image.float().cpu(), "labels": label.cpu(),
                                     "prediction": prediction.cpu()})  # fmt: skip
        num_samples += len(images)
    if all_reduce_sum is not None:
        confusion.reduce(all_reduce_sum)
        num_samples = all_reduce_sum(num_samples)
    model.train(was_training)
    metrics = {**confusion.compute(), "num_samples": int(num_samples)}
    return metrics | ({"examples": examples} if num_examples > 0 else {})
