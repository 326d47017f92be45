"""Albumentations pipelines for training and evaluation (the mmseg/SegFormer recipe).

Training: rescale so the short side is `base_size` x U{0.5 .. 2.0} (resampled as the saved image processor
resamples), pad to the crop size with the
ignore index in the label (mean-coloured zeros in the image after normalisation), random crop,
horizontal flip, photometric jitter, the model's normalisation (`preprocessing.py`). Evaluation: the image
processor saved with the model (`preprocessing.build_image_processor`: the short side to `base_size`, PIL
bilinear, normalised), on the image only; the label keeps its original size, metrics are computed there.
Training label maps are resized with nearest neighbour.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network on import

from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .preprocessing import IMAGENET_NORMALIZATION, Normalization, build_image_processor  # noqa: E402


def rescale_sizes(base_size: int, scale_range: tuple[float, float], num_scales: int = 31) -> list[int]:
    """Short-side lengths `base_size * s` for `num_scales` scales s evenly spaced in `scale_range`."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    return sorted({max(1, round(base_size * scale)) for scale in np.linspace(low, high, num_scales)})


class ProcessorLikeRescale(A.SmallestMaxSize):
    """`SmallestMaxSize` that resizes the image as the saved image processor does (transformers' PIL processor:
    PIL bilinear, which filters over the whole footprint when shrinking; the long side `int(short * long / short)`),
    so training sees the pixels that evaluation and `pipeline()` give the model. (OpenCV's bilinear, used before,
    samples without that filter: sharper crops than any evaluation through the processor would show.) Label maps:
    nearest neighbour, to the same size."""

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        height, width = img.shape[:2]
        new_height, new_width = self._resized_size(height, width, scale)
        return np.asarray(Image.fromarray(img).resize((new_width, new_height), Image.BILINEAR))

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        height, width = mask.shape[:2]
        new_height, new_width = self._resized_size(height, width, scale)
        return cv2.resize(mask, (new_width, new_height), interpolation=cv2.INTER_NEAREST)

    @staticmethod
    def _resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
        short = max(1, round(min(height, width) * scale))
        long = max(1, int(short * max(height, width) / min(height, width)))
        return (short, long) if height <= width else (long, short)


def build_train_transform(
    *,
    crop_size: tuple[int, int],
    base_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    photometric: bool = True,
    hflip_probability: float = 0.5,
    normalization: Normalization = IMAGENET_NORMALIZATION,
) -> A.Compose:
    """Random rescale + crop with ignore-padding + flip + photometric jitter + normalisation.

    Arguments:
        crop_size: (height, width) of the training crops.
        base_size: short side of the image at scale 1.0 (the evaluation size).
        scale_range: range of the random rescale factor (paper/mmseg: 0.5 - 2.0).
        normalization: the model's (`preprocessing.input_normalization`); padding takes its mean colour.
    """
    crop_height, crop_width = crop_size
    transforms: list[A.BasicTransform] = [
        ProcessorLikeRescale(
            max_size=rescale_sizes(base_size, scale_range),  # a list: one length drawn per sample
            mask_interpolation=cv2.INTER_NEAREST,
        ),
        A.RandomCrop(
            height=crop_height,
            width=crop_width,
            pad_if_needed=True,
            pad_position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=normalization.pad_colour,
            fill_mask=ignore_index,
        ),
        A.HorizontalFlip(p=hflip_probability),
    ]
    if photometric:
        transforms.append(A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.05, p=0.8))
    transforms.append(_normalize(normalization))
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST)


def _normalize(normalization: Normalization) -> A.Normalize:
    return A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=255.0)


class ProcessorTransform:
    """An image processor as an albumentations-style transform: `transform(image=(H, W, 3) uint8)["image"]` is
    the processor's (H', W', 3) float32 output; a `mask` passes through unchanged."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        pixel_values = self.image_processor(images=image, return_tensors="np")["pixel_values"][0]  # (3, H', W')
        result = {"image": pixel_values.transpose(1, 2, 0)}
        if mask is not None:
            result["mask"] = mask
        return result


def build_eval_transform(
    *, base_size: int | None, normalization: Normalization = IMAGENET_NORMALIZATION
) -> ProcessorTransform:
    """The image processor saved with the model, as the evaluation transform: the short side to `base_size`
    (None: keep the size), then normalise; image only."""
    return ProcessorTransform(build_image_processor(normalization, base_size=base_size))


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Make the next call of `transform` reproducible: each step gets its own seed derived from `seed`.

    (`Compose.set_random_seed` gives every step the *same* seed, which correlates their random draws:
    e.g. "flip" and "colour jitter" would fire together.)
    """
    transform.set_random_seed(seed)
    step_seeds = np.random.SeedSequence(seed).generate_state(len(transform.transforms))
    for step, step_seed in zip(transform.transforms, step_seeds, strict=True):
        step.set_random_seed(int(step_seed))
