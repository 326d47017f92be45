"""How a model's input images are normalised, for the training augmentation, the evaluation transform and the
exported image processor. The evaluation transform *is* the exported processor, so a pipeline resizes and normalises
exactly as evaluation did.

The normalisation itself is defined once, by the model's config (`modeling_protoseg.configuration_encoders.
input_normalization`): a ProtoSeg or linear-head config's `image_mean` / `image_std` (taken from the encoder when the
model was built, saved in config.json), the linear SegFormer baseline's config's own when set, else ImageNet's.
"""

from __future__ import annotations

from transformers import SegformerImageProcessorPil

from modeling_protoseg.configuration_encoders import (  # noqa: F401 - re-exported for training code and tests
    IMAGENET_NORMALIZATION,
    InputNormalization,
    input_normalization,
)

Normalization = InputNormalization  # the name training code uses: per-channel (pixel / 255 - mean) / std, RGB


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
