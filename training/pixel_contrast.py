"""ContrastiveSeg's cross-image pixel contrast as a training-only wrapper around a segmentation model.

`PixelContrastTrainingModel` holds the model a run trains (ProtoSeg, SegFormer or the linear head), a projection
head (linear heads only) and the memory queues; its forward adds `weight * contrastive loss` to the model's loss.
The wrapper is what the optimizer, DDP and the checkpoints see (so the projection head trains and the queues resume);
evaluation and export take `segmentation_model`, so the exported folder is the plain model (a linear run on MiT is a
`SegformerForSemanticSegmentation` any transformers user loads without this package).

Which pixel embeddings are contrasted:
- ProtoSeg: its own unit pixel embeddings (`output_pixel_embeddings=True`), the space its prototypes classify in;
  no extra parameters.
- Linear heads: the features the 1x1 classifier reads (a forward pre-hook on it, after the decoder's dropout), through
  ContrastiveSeg's projection head (1x1 conv, BatchNorm, ReLU, 1x1 conv to `pixel_contrast_dim`, L2-normalised),
  run on the sampled pixels only (the loss reads nothing else; with a segment memory, on every pixel as well, without
  gradient, for the segment means). On small decoders the head over every pixel would cost as much as the model.
Hard anchors are pixels the model's own logits (at the same 1/4 resolution) get wrong.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.pixel_contrast_objective import (
    gather_from_processes,
    memory_contents,
    nearest_labels,
    pixel_contrast_loss,
    sample_anchors,
    sample_memory_pixels,
    segment_means,
    write_to_memory_,
)
from training.config import PixelContrastArguments


class PixelContrastProjectionHead(nn.Module):
    """ContrastiveSeg's "convmlp" projection (1x1 conv, BatchNorm, ReLU, 1x1 conv, L2 norm), applied to the pixels the
    loss uses only: (M, C_in) features -> (M, D) unit embeddings (a 1x1 conv on a pixel is a linear layer)."""

    def __init__(self, *, in_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, in_channels)
        self.batch_norm = nn.BatchNorm1d(in_channels)
        self.output = nn.Linear(in_channels, embedding_dim)

    def forward(self, features: torch.Tensor, *, running_statistics: bool = False) -> torch.Tensor:
        """`running_statistics`: normalise with BatchNorm's running statistics and leave them unchanged (entries for
        the memory: the anchors' batch statistics, not those of the batch of entries, and no second update)."""
        hidden = self.hidden(features)
        if running_statistics:
            norm = self.batch_norm
            hidden = F.batch_norm(hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        else:
            hidden = self.batch_norm(hidden)
        return F.normalize(self.output(F.relu(hidden)), dim=-1)


def _classifier_of(model: nn.Module) -> nn.Conv2d:
    """The 1x1 classifier of a linear-head model (SegFormer's decode head, or this package's linear head)."""
    decode_head = getattr(model, "decode_head", None)
    classifier = getattr(decode_head, "classifier", None) or getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Conv2d):
        raise TypeError(
            f"pixel contrast needs ProtoSeg or a model with a 1x1 Conv2d classifier (SegFormer, the linear head); "
            f"{type(model).__name__} has none"
        )
    return classifier


# Bounds that catch a mistyped or absurd flag before a step runs or a memory is allocated. Outside them a run would
# skip every step as non-finite (a NaN/inf weight, a temperature ratio that overflows the loss) or ask for more memory
# than any machine has (a 10^9-entry memory, a 10^7-wide projection head).
TEMPERATURE_RANGE = (1e-3, 1e3)  # temperature and base temperature; their ratio scales the loss
MAX_WEIGHT = 1e3
MAX_PIXEL_CONTRAST_DIM = 65536  # the widest ProtoSeg embedding or decoder allowed (configuration_protoseg.MAX_WIDTH)
MAX_MEMORY_ENTRIES = 1_000_000  # per class, in each memory
MAX_SAMPLING_COUNT = 1_000_000  # max_anchors, max_views, pixels_per_segment
MAX_MEMORY_BYTES = 4 * 2**30  # both memories together, float32


def check_settings(settings: PixelContrastArguments) -> None:
    """ValueError naming the flag when a pixel-contrast setting is not finite or out of range."""
    low, high = TEMPERATURE_RANGE
    for name in ("temperature", "base_temperature"):
        value = getattr(settings, f"pixel_contrast_{name}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"--pixel_contrast_{name} must be a finite number in [{low:g}, {high:g}], got {value}")
    weight = settings.pixel_contrast_weight
    if not (math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT):
        raise ValueError(f"--pixel_contrast_weight must be a finite number in [0, {MAX_WEIGHT:g}], got {weight}")
    counts = {
        "max_anchors": (1, MAX_SAMPLING_COUNT),
        "max_views": (1, MAX_SAMPLING_COUNT),
        "pixels_per_segment": (1, MAX_SAMPLING_COUNT),
        "dim": (1, MAX_PIXEL_CONTRAST_DIM),
        "segment_memory": (0, MAX_MEMORY_ENTRIES),
        "pixel_memory": (0, MAX_MEMORY_ENTRIES),
        "warmup_steps": (0, None),
    }
    for name, (minimum, maximum) in counts.items():
        value = getattr(settings, f"pixel_contrast_{name}")
        if value < minimum:
            raise ValueError(f"--pixel_contrast_{name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"--pixel_contrast_{name} must be at most {maximum}, got {value}")


def check_memory_size(settings: PixelContrastArguments, *, num_classes: int, embedding_dim: int) -> None:
    """ValueError naming both memory flags when the memories would take more than `MAX_MEMORY_BYTES`."""
    entries = settings.pixel_contrast_segment_memory + settings.pixel_contrast_pixel_memory
    memory_bytes = num_classes * entries * embedding_dim * 4
    if memory_bytes > MAX_MEMORY_BYTES:
        raise ValueError(
            f"--pixel_contrast_segment_memory {settings.pixel_contrast_segment_memory} and "
            f"--pixel_contrast_pixel_memory {settings.pixel_contrast_pixel_memory} for {num_classes} classes of "
            f"{embedding_dim}-dimensional embeddings take {memory_bytes / 2**30:.1f} GiB; at most "
            f"{MAX_MEMORY_BYTES / 2**30:.0f} GiB are allowed"
        )


class PixelContrastTrainingModel(nn.Module):
    """A segmentation model with ContrastiveSeg's pixel contrast added to its training loss.

    Buffers (saved in checkpoints, so a resumed run continues with the same memory): `segment_memory` (C, S, D) and
    `pixel_memory` (C, P, D) ring buffers with their `*_pointer` and `*_filled` (C,) counters, and
    `training_forwards` (the warm-up clock, in forwards: optimizer steps x gradient accumulation).
    """

    # Never written with a non-finite entry, so a skipped training step need not copy and restore them (loop.py).
    self_guarded_buffers = tuple(
        f"{kind}_memory{part}" for kind in ("segment", "pixel") for part in ("", "_pointer", "_filled")
    )

    def __init__(
        self,
        segmentation_model: nn.Module,
        settings: PixelContrastArguments,
        *,
        micro_batches_per_step: int = 1,
    ) -> None:
        super().__init__()
        check_settings(settings)
        self.segmentation_model = segmentation_model
        self.settings = settings
        config = segmentation_model.config
        self.num_classes = config.num_labels
        self.ignore_index = config.semantic_loss_ignore_index
        self.warmup_forwards = settings.pixel_contrast_warmup_steps * micro_batches_per_step
        self.uses_model_embeddings = hasattr(segmentation_model, "prototype_bank")
        self._captured_features: torch.Tensor | None = None
        if self.uses_model_embeddings:  # ProtoSeg: contrast its own pixel embeddings
            self.projection_head = None
            embedding_dim = config.embedding_dim
        else:
            classifier = _classifier_of(segmentation_model)
            classifier.register_forward_pre_hook(self._capture_classifier_input)
            self.projection_head = PixelContrastProjectionHead(
                in_channels=classifier.in_channels, embedding_dim=settings.pixel_contrast_dim
            )
            embedding_dim = settings.pixel_contrast_dim
        check_memory_size(settings, num_classes=self.num_classes, embedding_dim=embedding_dim)
        for name, size in (("segment", settings.pixel_contrast_segment_memory), ("pixel", settings.pixel_contrast_pixel_memory)):
            # An unused (size 0) memory is not saved: safetensors takes empty tensors for shared ones, drops all but
            # one with a warning, and the checkpoint could not be loaded back ("Missing key(s)").
            self.register_buffer(
                f"{name}_memory", torch.zeros(self.num_classes, size, embedding_dim), persistent=size > 0
            )
            self.register_buffer(f"{name}_memory_pointer", torch.zeros(self.num_classes, dtype=torch.long))
            self.register_buffer(f"{name}_memory_filled", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("training_forwards", torch.zeros((), dtype=torch.long))

    @property
    def config(self):
        """The segmentation model's config (what the training code reads from a model)."""
        return self.segmentation_model.config

    def _check_inputs(self, pixel_values: torch.Tensor, labels: torch.Tensor | None) -> None:
        check_inputs = getattr(self.segmentation_model, "_check_inputs", None)
        if check_inputs is not None:
            check_inputs(pixel_values, labels)

    def _capture_classifier_input(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:  # evaluation forwards keep nothing
            self._captured_features = inputs[0]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any):
        """The model's forward; while training with labels, its loss plus the weighted contrastive loss (also
        returned as `contrast_loss`)."""
        if not (self.training and labels is not None):
            return self.segmentation_model(pixel_values=pixel_values, labels=labels, **kwargs)
        if self.uses_model_embeddings:
            kwargs["output_pixel_embeddings"] = True
        self._captured_features = None
        outputs = self.segmentation_model(pixel_values=pixel_values, labels=labels, **kwargs)
        if self.uses_model_embeddings:
            pixel_features = outputs.pixel_embeddings  # (B, D, h, w), unit length
        else:
            pixel_features, self._captured_features = self._captured_features, None  # (B, C_in, h, w)
        contrast_loss = self.contrastive_loss(pixel_features, outputs.logits, labels)
        warmed_up = self.warmup_forwards == 0 or bool(self.training_forwards >= self.warmup_forwards)  # no sync if 0
        weight = self.settings.pixel_contrast_weight if warmed_up else 0.0
        self.training_forwards += 1
        outputs["loss"] = outputs.loss + weight * contrast_loss
        outputs["contrast_loss"] = contrast_loss.detach()
        return outputs

    def _embed(self, features: torch.Tensor, *, for_memory: bool = False) -> torch.Tensor:
        """(M, C) pixel features -> (M, D) unit embeddings: the projection head, or ProtoSeg's own embeddings."""
        if self.projection_head is None:
            return features
        return self.projection_head(features, running_statistics=for_memory)

    def contrastive_loss(self, pixel_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of one batch, and the memory write.

        Arguments:
            pixel_features: (B, F, h, w) ProtoSeg's unit embeddings or the classifier's input features.
            logits: (B, C, h, w) the model's logits (hard anchors are the pixels they get wrong); labels: (B, H, W).
        """
        batch_size, channels, height, width = pixel_features.shape
        flat_features = pixel_features.permute(0, 2, 3, 1).reshape(batch_size * height * width, channels)
        pixel_labels = nearest_labels(labels, (height, width)).reshape(batch_size, -1)  # (B, h*w)
        predictions = logits.detach().argmax(dim=1).reshape(batch_size, -1)
        anchors = sample_anchors(
            pixel_labels,
            predictions,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            max_anchors=self.settings.pixel_contrast_max_anchors,
            max_views=self.settings.pixel_contrast_max_views,
        )
        if anchors is None or anchors.pixel_index.numel() < 2:  # no class large enough: no term
            loss = pixel_features.sum() * 0.0  # still on the graph (with every parameter) for DDP
            if self.projection_head is not None:
                loss = loss + sum(parameter.sum() for parameter in self.projection_head.parameters()) * 0.0
        else:
            views_per_group = anchors.pixel_index.shape[1]
            memory, memory_classes = self._memory_contents()
            loss = pixel_contrast_loss(
                self._embed(flat_features[anchors.pixel_index.reshape(-1)]),  # (A*V, D), group-major
                anchors.classes.repeat_interleave(views_per_group),
                memory,
                memory_classes,
                temperature=self.settings.pixel_contrast_temperature,
                base_temperature=self.settings.pixel_contrast_base_temperature,
            )
        self._write_memory(flat_features, pixel_labels)
        return loss

    def _memory_contents(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.segment_memory.shape[1] == 0 and self.pixel_memory.shape[1] == 0:  # the default: no memory
            return None, None
        parts = [memory_contents(self.segment_memory, self.segment_memory_filled)]
        parts.append(memory_contents(self.pixel_memory, self.pixel_memory_filled))
        embeddings, classes = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return (embeddings, classes) if classes.numel() else (None, None)

    @torch.no_grad()
    def _write_memory(self, flat_features: torch.Tensor, pixel_labels: torch.Tensor) -> None:
        """Write this step's segment means and pixels, gathered from every process in process order, so every
        process keeps the same memory. Nothing is written from a batch with a non-finite embedding.

        Arguments:
            flat_features: (B*N, F) pixel features; pixel_labels: (B, N).
        """
        batch_size, num_pixels = pixel_labels.shape
        classes = torch.arange(self.num_classes, device=pixel_labels.device)
        if self.segment_memory.shape[1] > 0:  # the mean of a segment's embeddings needs all its pixels embedded
            embeddings = self._embed(flat_features, for_memory=True).reshape(batch_size, num_pixels, -1)
            segments, present = segment_means(
                embeddings, pixel_labels, num_classes=self.num_classes, ignore_index=self.ignore_index
            )
            segments, present = gather_from_processes(segments), gather_from_processes(present)
            if torch.isfinite(segments).all():  # else the loop skips the step and restores the buffers
                write_to_memory_(
                    self.segment_memory, self.segment_memory_pointer, self.segment_memory_filled,
                    segments[present], classes[None, :].expand(present.shape)[present],
                )  # fmt: skip
        if self.pixel_memory.shape[1] > 0:
            pixel_index, present = sample_memory_pixels(
                pixel_labels,
                num_classes=self.num_classes,
                ignore_index=self.ignore_index,
                pixels_per_segment=self.settings.pixel_contrast_pixels_per_segment,
            )
            pixels = self._embed(flat_features[pixel_index.reshape(-1)], for_memory=True)
            pixels = pixels.reshape(*pixel_index.shape, -1).float()
            pixels, present = gather_from_processes(pixels), gather_from_processes(present)
            if torch.isfinite(pixels).all():
                write_to_memory_(
                    self.pixel_memory, self.pixel_memory_pointer, self.pixel_memory_filled,
                    pixels[present], classes[None, :, None].expand(present.shape)[present],
                )  # fmt: skip


def with_pixel_contrast(model: nn.Module, settings: PixelContrastArguments, *, micro_batches_per_step: int) -> nn.Module:
    """The model to train: wrapped with the pixel-contrast objective when `--pixel_contrast` is on, else itself."""
    if not settings.pixel_contrast:
        return model
    return PixelContrastTrainingModel(model, settings, micro_batches_per_step=micro_batches_per_step)
