"""The built-in synthetic segmentation dataset: generated on the fly, deterministic from a seed.

Each scene is a background plus a few foreground shapes (ellipses, rectangles, triangles) of widely
varying size. Every class has two or three *distinct* appearances (a flat colour, stripes, a
checkerboard, dots, a gradient, ...), so a class is a union of several visual clusters: exactly the
situation in which K > 1 prototypes per class should help. Appearances of different classes never
share their dominant colours, but textures need spatial context (the gaps between stripes, the dark
cells of a checkerboard) to be classified, so the task is not per-pixel colour lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SYNTHETIC_CLASS_NAMES: tuple[str, ...] = ("background", "ember", "leaf", "ice", "stone")

Texture = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, height, width) -> (H, W, 3) float


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float = 18.0) -> np.ndarray:
    """A colour moved by a small random offset, (3,) float."""
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, size=3).astype(np.float32)


def _coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) row and column indices


def _flat(colour: tuple[int, int, int]) -> Texture:
    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        return np.broadcast_to(_jitter(rng, colour), (height, width, 3)).copy()

    return paint


def _stripes(colour_a: tuple[int, int, int], colour_b: tuple[int, int, int], direction: str) -> Texture:
    """Alternating bands; `direction` is "horizontal", "vertical" or "diagonal"."""

    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        rows, cols = _coordinates(height, width)
        position = {"horizontal": rows, "vertical": cols, "diagonal": rows + cols}[direction]
        period = rng.uniform(5.0, 9.0)
        phase = rng.uniform(0.0, period)
        in_band_a = ((position + phase) % period) < period / 2
        return np.where(in_band_a[..., None], _jitter(rng, colour_a), _jitter(rng, colour_b))

    return paint


def _checkerboard(colour_a: tuple[int, int, int], colour_b: tuple[int, int, int]) -> Texture:
    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        rows, cols = _coordinates(height, width)
        cell = rng.uniform(3.0, 6.0)
        offset_r, offset_c = rng.uniform(0.0, 2 * cell, size=2)
        parity = (np.floor((rows + offset_r) / cell) + np.floor((cols + offset_c) / cell)) % 2 == 0
        return np.where(parity[..., None], _jitter(rng, colour_a), _jitter(rng, colour_b))

    return paint


def _dots(colour_base: tuple[int, int, int], colour_dot: tuple[int, int, int]) -> Texture:
    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        rows, cols = _coordinates(height, width)
        spacing = rng.uniform(5.0, 8.0)
        offset_r, offset_c = rng.uniform(0.0, spacing, size=2)
        distance_r = (rows + offset_r) % spacing - spacing / 2
        distance_c = (cols + offset_c) % spacing - spacing / 2
        in_dot = distance_r**2 + distance_c**2 < (spacing * 0.3) ** 2
        return np.where(in_dot[..., None], _jitter(rng, colour_dot), _jitter(rng, colour_base))

    return paint


def _vertical_gradient(colour_top: tuple[int, int, int], colour_bottom: tuple[int, int, int]) -> Texture:
    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        weight = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        top, bottom = _jitter(rng, colour_top), _jitter(rng, colour_bottom)
        return np.broadcast_to((1 - weight) * top + weight * bottom, (height, width, 3)).copy()

    return paint


def _speckle(colour: tuple[int, int, int], amplitude: float) -> Texture:
    def paint(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        noise = rng.normal(0.0, amplitude, size=(height, width, 1)).astype(np.float32)
        return _jitter(rng, colour) + noise

    return paint


# class index -> its appearance modes
CLASS_APPEARANCES: dict[int, tuple[Texture, ...]] = {
    0: (_vertical_gradient((25, 30, 70), (5, 5, 15)), _speckle((120, 120, 120), 22.0)),  # background
    1: (_flat((210, 35, 35)), _stripes((250, 150, 20), (110, 50, 10), "horizontal")),  # ember
    2: (_flat((40, 165, 55)), _checkerboard((235, 225, 60), (20, 90, 30))),  # leaf
    3: (_stripes((90, 230, 240), (245, 250, 255), "diagonal"), _dots((150, 190, 250), (20, 40, 160))),  # ice
    4: (  # stone
        _flat((140, 60, 170)),
        _stripes((240, 80, 200), (60, 20, 60), "vertical"),
        _dots((200, 170, 130), (90, 60, 30)),
    ),
}  # fmt: skip


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random ellipse, rectangle or triangle, (H, W) bool, size from a few pixels to most of the image."""
    rows, cols = _coordinates(height, width)
    size = min(height, width)
    radius_r, radius_c = np.exp(rng.uniform(np.log(0.05 * size), np.log(0.45 * size), size=2))
    centre_r, centre_c = rng.uniform(0, height), rng.uniform(0, width)
    shape = rng.integers(3)
    if shape == 0:  # ellipse
        return ((rows - centre_r) / radius_r) ** 2 + ((cols - centre_c) / radius_c) ** 2 <= 1.0
    if shape == 1:  # axis-aligned rectangle
        return (np.abs(rows - centre_r) <= radius_r) & (np.abs(cols - centre_c) <= radius_c)
    # triangle: three random vertices around the centre, inside test by edge signs
    angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.4, 0.4, size=3)
    vertices = np.stack([centre_r + radius_r * np.sin(angles), centre_c + radius_c * np.cos(angles)], axis=1)
    signs = []
    for i in range(3):
        (r0, c0), (r1, c1) = vertices[i], vertices[(i + 1) % 3]
        signs.append((c1 - c0) * (rows - r0) - (r1 - r0) * (cols - c0) >= 0)
    return (signs[0] == signs[1]) & (signs[1] == signs[2])


@dataclass(frozen=True)
class SyntheticScenes:
    """`num_samples` generated scenes; sample `index` depends only on (seed, index).

    Use different seeds for the train and validation splits (see `synthetic_splits`).
    """

    num_samples: int
    image_size: int = 96
    seed: int = 0
    max_objects: int = 6

    class_names: tuple[str, ...] = SYNTHETIC_CLASS_NAMES

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (image (H, W, 3) uint8 RGB, label (H, W) uint8 class indices)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"synthetic sample {index} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, index])
        height = width = self.image_size
        background = CLASS_APPEARANCES[0]
        image = background[rng.integers(len(background))](rng, height, width)  # (H, W, 3) float
        label = np.zeros((height, width), dtype=np.uint8)
        for _ in range(rng.integers(2, self.max_objects + 1)):
            class_index = int(rng.integers(1, len(self.class_names)))
            appearances = CLASS_APPEARANCES[class_index]
            texture = appearances[rng.integers(len(appearances))](rng, height, width)
            mask = _shape_mask(rng, height, width)
            image[mask] = texture[mask]
            label[mask] = class_index
        image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)  # sensor noise
        return np.clip(image, 0, 255).round().astype(np.uint8), label


def synthetic_splits(
    *, num_train: int, num_validation: int, image_size: int, seed: int
) -> tuple[SyntheticScenes, SyntheticScenes]:
    """Train and validation scene sets with disjoint seeds."""
    train = SyntheticScenes(num_samples=num_train, image_size=image_size, seed=seed * 2 + 1)
    validation = SyntheticScenes(num_samples=num_validation, image_size=image_size, seed=seed * 2 + 2)
    return train, validation
