"""Images as training reads them: any mode or dtype a dataset or a file may hold -> 8-bit RGB.

transformers' `load_image` (and so `pipeline("image-segmentation", "scan.png")`) converts a 16-bit greyscale
PNG with PIL's `convert("RGB")`, which clips every value above 255: the image turns white. `load_image` here
scales 16-bit and float images to 8 bits as training does, so inference sees what training saw:

    segmenter(load_image("scan_16bit.png"))
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def open_image(value: Any, sample_name: str) -> Image.Image | np.ndarray:
    """A PIL image or array from what a dataset row holds (PIL, array, path, or {"bytes", "path"})."""
    if isinstance(value, (Image.Image, np.ndarray)):
        return value
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        return Image.open(source)
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise ValueError(f"{sample_name}: cannot read an image from a value of type {type(value).__name__}")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit integer or float pixel values to 0..255 uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
    if array.dtype == np.uint16:  # 16-bit: full range 0..65535
        return np.clip(array.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    maximum = int(array.max()) if array.size else 0  # 32-bit ("I" mode): 8- or 16-bit data by range
    if maximum <= 255:
        return np.clip(array, 0, 255).astype(np.uint8)
    return np.clip(array.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)  # 16-bit -> 8-bit


def to_rgb_array(image: Any, sample_name: str = "sample") -> np.ndarray:
    """Any image a dataset may hold -> (H, W, 3) uint8 RGB.

    Greyscale (L, 1, I;16, I, F), greyscale+alpha, palette (P), RGBA and CMYK images are converted;
    alpha is dropped; 16-bit values are scaled to 8 bits.
    """
    opened = open_image(image, sample_name)
    if isinstance(opened, Image.Image):
        if opened.mode in SIXTEEN_BIT_MODES or opened.mode == "F":
            array = _to_uint8(np.asarray(opened))
        else:
            return np.asarray(opened.convert("RGB"))
    else:
        array = _to_uint8(np.asarray(opened))
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # grey+alpha / RGBA: drop alpha
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{sample_name}: expected an image of shape (H, W[, C]), got {array.shape}")
    return np.ascontiguousarray(array)


def load_image(image: Any) -> Image.Image:
    """A path, URL-free file object, PIL image or array -> an 8-bit RGB PIL image, converted as training does
    (16-bit values / 257, floats in [0, 1] x 255, alpha dropped, greyscale repeated)."""
    if hasattr(image, "read"):
        image = Image.open(image)
    return Image.fromarray(to_rgb_array(image, "image"))


__all__ = ["SIXTEEN_BIT_MODES", "load_image", "open_image", "to_rgb_array"]
