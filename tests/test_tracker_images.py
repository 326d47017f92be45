"""Prediction images for the trackers, and the evaluation examples they are drawn from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from training.evaluation import evaluate, predict_segmentation
from training.tracker_images import (
    IGNORED_COLOUR,
    class_palette,
    colour_labels,
    displayable_image,
    log_prediction_images,
    prediction_panel,
)


def test_palette_gives_every_class_its_own_colour_even_at_847_classes():
    for num_labels in (2, 19, 150, 847):
        palette = class_palette(num_labels)
        assert palette.shape == (num_labels, 3) and palette.dtype == np.uint8
        assert len({tuple(row) for row in palette}) == num_labels
        assert not any(tuple(row) == IGNORED_COLOUR for row in palette)


def test_colour_labels_paints_each_id_with_its_palette_row_and_ignored_pixels_black():
    palette = class_palette(3)
    labels = torch.tensor([[0, 1], [2, 255]])
    coloured = colour_labels(labels, palette)
    assert coloured.shape == (2, 2, 3)
    np.testing.assert_array_equal(coloured[0, 0], palette[0])
    np.testing.assert_array_equal(coloured[0, 1], palette[1])
    np.testing.assert_array_equal(coloured[1, 0], palette[2])
    np.testing.assert_array_equal(coloured[1, 1], IGNORED_COLOUR)


def test_displayable_image_stretches_a_normalised_input_to_0_255_at_the_label_size():
    pixel_values = torch.linspace(-2.0, 2.5, 3 * 4 * 6).reshape(3, 4, 6)
    image = displayable_image(pixel_values, (8, 12))
    assert image.shape == (8, 12, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255
    same_size = displayable_image(pixel_values, (4, 6))
    expected = ((pixel_values + 2.0) / 4.5).permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(same_size, expected.round(), atol=1)


def test_panel_is_image_truth_prediction_side_by_side():
    generator = torch.Generator().manual_seed(0)
    example = {
        "pixel_values": torch.randn(3, 5, 7, generator=generator),
        "labels": torch.randint(0, 4, (5, 7), generator=generator),
        "prediction": torch.randint(0, 4, (5, 7), generator=generator),
    }
    palette = class_palette(4)
    panel = prediction_panel(example, palette)
    assert panel.shape == (5, 21, 3)
    np.testing.assert_array_equal(panel[:, :7], displayable_image(example["pixel_values"], (5, 7)))
    np.testing.assert_array_equal(panel[:, 7:14], colour_labels(example["labels"], palette))
    np.testing.assert_array_equal(panel[:, 14:], colour_labels(example["prediction"], palette))


class _RecordingTracker:
    def __init__(self, name: str) -> None:
        self.name, self.calls = name, []

    def log_images(self, values, step=None, **kwargs):
        self.calls.append((values, step, kwargs))


def test_log_prediction_images_sends_a_batch_to_tensorboard_and_lists_to_other_trackers():
    example = {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.zeros(4, 4, dtype=torch.long),
               "prediction": torch.ones(4, 4, dtype=torch.long)}  # fmt: skip
    tensorboard, wandb = _RecordingTracker("tensorboard"), _RecordingTracker("wandb")
    no_images = SimpleNamespace(name="csv")  # a tracker without log_images is skipped
    accelerator = SimpleNamespace(is_main_process=True, trackers=[tensorboard, wandb, no_images])

    log_prediction_images(accelerator, [example, example], step=7, num_labels=2)

    (values, step, kwargs), = tensorboard.calls
    assert step == 7 and kwargs == {"dataformats": "NHWC"}
    assert set(values) == {"eval/prediction_0", "eval/prediction_1"} and values["eval/prediction_0"].shape == (1, 4, 12, 3)
    (values, step, kwargs), = wandb.calls
    assert kwargs == {} and values["eval/prediction_1"][0].shape == (4, 12, 3)

    other_process = SimpleNamespace(is_main_process=False, trackers=[tensorboard])
    log_prediction_images(other_process, [example], step=8, num_labels=2)
    assert len(tensorboard.calls) == 1


class _ColourModel(torch.nn.Module):
    """Class 1 where the first channel is positive: a prediction known without training."""

    def forward(self, pixel_values):
        first = pixel_values[:, :1]
        return SimpleNamespace(logits=torch.cat([-first, first], dim=1))


def test_evaluate_keeps_the_first_examples_with_their_predictions_and_the_same_metrics():
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 6, 6, generator=generator) for _ in range(5)]
    labels = [(image[0] > 0).long() for image in images]
    batches = [{"pixel_values": images[:3], "labels": labels[:3]}, {"pixel_values": images[3:], "labels": labels[3:]}]
    model = _ColourModel()

    without = evaluate(model, batches, num_labels=2)
    with_examples = evaluate(model, batches, num_labels=2, num_examples=4)

    assert "examples" not in without
    assert with_examples["mean_iou"] == without["mean_iou"] == 1.0
    examples = with_examples.pop("examples")
    assert len(examples) == 4
    for index, example in enumerate(examples):
        torch.testing.assert_close(example["pixel_values"], images[index])
        torch.testing.assert_close(example["labels"], labels[index])
        expected = predict_segmentation(model, images[index][None], (6, 6))[0]
        torch.testing.assert_close(example["prediction"], expected)
