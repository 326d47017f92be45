"""How a model's input images are normalised: one definition for the training augmentation, the evaluation
transform and the exported image processor. The evaluation transform *is* the exported processor, so a pipeline
resizes and normalises exactly as evaluation did.

The normalisation follows the encoder: `image_mean` / `image_std` of the encoder config when it has them
(`model.config.encoder_config` for ProtoSeg; `model.config` itself for the linear SegFormer head, whose config
is the encoder's), else ImageNet's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig, SegformerImageProcessorPil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel `(pixel / 255 - mean) / std` of RGB images."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """The 8-bit colour that normalises to 0 (what padded image borders are filled with)."""
        return tuple(round(255 * channel_mean) for channel_mean in self.mean)


IMAGENET_NORMALIZATION = Normalization()


def input_normalization(model_config: PretrainedConfig) -> Normalization:
    """The normalisation a model expects: its encoder config's `image_mean`/`image_std`, else ImageNet's.

    Arguments:
        model_config: a `ProtoSegConfig` (its `encoder_config` is read) or an encoder-style config such as the
            linear head's `SegformerConfig` (read itself).
    """
    encoder_config = getattr(model_config, "encoder_config", None) or model_config
    mean = getattr(encoder_config, "image_mean", None)
    std = getattr(encoder_config, "image_std", None)
    if mean is None or std is None:
        return IMAGENET_NORMALIZATION
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"image_mean/image_std must hold 3 values (RGB), got {mean} / {std}")
    return Normalization(mean=tuple(float(value) for value in mean), std=tuple(float(value) for value in std))


def build_image_processor(
    normalization: Normalization, *, base_size: int | None, crop_size: tuple[int, int] | None = None
) -> SegformerImageProcessorPil:
    """The processor saved beside a model, which is also the evaluation transform (`augmentation.build_eval_transform`):
    resize the short side to `base_size` keeping the aspect ratio (None: keep the size), normalise. So
    `pipeline("image-segmentation")` sees exactly what evaluation measured. `crop_size` is not used (the training
    crop does not change the evaluation resize); it is accepted for older callers."""
    del crop_size
    return SegformerImageProcessorPil(
        do_resize=base_size is not None,
        size={"shortest_edge": base_size} if base_size is not None else None,
        do_normalize=True,
        image_mean=list(normalization.mean),
        image_std=list(normalization.std),
        do_reduce_labels=False,
    )
