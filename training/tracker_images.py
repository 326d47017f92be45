"""Prediction images for the trackers: image | ground truth | prediction, side by side, at each evaluation."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from accelerate import Accelerator

IGNORED_COLOUR = (0, 0, 0)  # pixels without a label


def class_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 RGB, all distinct: hues spaced by the golden ratio, cycling over 2 saturations
    and 3 brightnesses, so neighbouring class ids differ clearly at any class count (no plotting library)."""
    rgb = [
        colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, (1.0, 0.6)[index % 2], (0.95, 0.75, 0.55)[index // 2 % 3])
        for index in range(num_labels)
    ]
    return np.round(np.asarray(rgb, dtype=np.float64).reshape(num_labels, 3) * 255).astype(np.uint8)


def colour_labels(labels: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ids outside the palette (the ignore index) are black."""
    ids = labels.numpy().astype(np.int64)
    known = (ids >= 0) & (ids < len(palette))
    coloured = np.empty((*ids.shape, 3), dtype=np.uint8)
    coloured[:] = IGNORED_COLOUR
    coloured[known] = palette[ids[known]]
    return coloured


def displayable_image(pixel_values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A normalised (3, h, w) model input -> (H, W, 3) uint8 at the label's size, stretched to [0, 255]
    (the min-max stretch needs no normalisation constants and keeps the colours' order)."""
    image = torch.nn.functional.interpolate(pixel_values[None], size=size, mode="bilinear", align_corners=False)[0]
    low, high = image.min(), image.max()
    image = (image - low) / (high - low).clamp_min(1e-6)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def prediction_panel(example: dict[str, torch.Tensor], palette: np.ndarray) -> np.ndarray:
    """(H, 3 W, 3) uint8: the input image, the ground truth and the prediction of one evaluation sample."""
    labels, prediction = example["labels"], example["prediction"]
    image = displayable_image(example["pixel_values"], tuple(labels.shape))
    return np.concatenate([image, colour_labels(labels, palette), colour_labels(prediction, palette)], axis=1)


def log_prediction_images(
    accelerator: Accelerator, examples: list[dict[str, torch.Tensor]], step: int, num_labels: int
) -> None:
    """Send each example's panel to every tracker that takes images (TensorBoard, W&B, ...) as
    `eval/prediction_<i>`."""
    if not examples or not accelerator.is_main_process:
        return
    palette = class_palette(num_labels)
    panels = {f"eval/prediction_{index}": prediction_panel(example, palette) for index, example in enumerate(examples)}
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":  # SummaryWriter.add_images takes a batch: (1, H, W, 3)
            tracker.log_images({key: panel[None] for key, panel in panels.items()}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({key: [panel] for key, panel in panels.items()}, step=step)
