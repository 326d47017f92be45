"""Whole-image and sliding-window inference, and `evaluate` end to end on tiny fake models."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training.evaluation import (  # noqa: E402
    evaluate,
    predict_logits_sliding,
    predict_logits_whole,
    predict_probabilities_multiscale,
    sliding_windows,
)


class PointwiseModel(nn.Module):
    """Logits at full resolution from a 1x1 convolution: any window sees exactly what the whole image sees."""

    def __init__(self, num_labels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = nn.Conv2d(3, num_labels, kernel_size=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.calls.append(tuple(pixel_values.shape))
        return SimpleNamespace(logits=self.classifier(pixel_values))


class ChannelOracle(nn.Module):
    """Predicts class c where input channel c is largest, at stride 4 like SegFormer (average pooling)."""

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=nn.functional.avg_pool2d(pixel_values, 4))


def test_sliding_windows_cover_the_image_and_stay_inside() -> None:
    windows = sliding_windows(50, 70, crop_size=(32, 32), stride=(20, 20))
    covered = torch.zeros(50, 70)
    for top, bottom, left, right in windows:
        assert 0 <= top < bottom <= 50 and 0 <= left < right <= 70
        assert (bottom - top, right - left) == (32, 32)
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    assert sliding_windows(10, 12, crop_size=(32, 32), stride=(20, 20)) == [(0, 10, 0, 12)]  # small image: one window


def test_sliding_window_equals_whole_image_for_a_pointwise_model() -> None:
    model = PointwiseModel()
    pixel_values = torch.randn(2, 3, 37, 53)
    whole = predict_logits_whole(model, pixel_values, (37, 53))
    model.calls.clear()
    sliding = predict_logits_sliding(
        model, pixel_values, (37, 53), crop_size=(16, 16), stride=(10, 10), windows_per_forward=4
    )
    torch.testing.assert_close(sliding, whole, rtol=1e-5, atol=1e-5)
    assert all(shape[-2:] == (16, 16) for shape in model.calls)
    assert sum(shape[0] for shape in model.calls) == 2 * len(sliding_windows(37, 53, (16, 16), (10, 10)))


def _oracle_batch(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Images whose channel argmax is the label (so ChannelOracle predicts the label)."""
    image = nn.functional.one_hot(labels.clamp(max=num_labels - 1), num_labels).permute(2, 0, 1).float()
    return image


@pytest.mark.parametrize("mode", ["whole", "slide", "multiscale"])
def test_evaluate_counts_at_label_resolution_and_mixes_image_sizes(mode: str) -> None:
    num_labels = 3
    first_labels = torch.zeros(16, 16, dtype=torch.long)
    first_labels[:, 8:] = 1  # left half class 0, right half class 1
    second_labels = torch.full((8, 12), 2, dtype=torch.long)
    second_labels[:4] = 255  # ignored rows
    batches = [
        {
            "pixel_values": [_oracle_batch(first_labels, num_labels), _oracle_batch(second_labels, num_labels)],
            "labels": [first_labels, second_labels],
        }
    ]
    metrics = evaluate(ChannelOracle(), batches, num_labels=num_labels, mode=mode, crop_size=(8, 8), stride=(4, 4))
    assert metrics["mean_iou"] == pytest.approx(1.0)
    assert metrics["overall_accuracy"] == pytest.approx(1.0)
    assert metrics["num_samples"] == 2

    # Now claim the second image is class 0 where it is class 2: hand-computed IoUs change.
    wrong = second_labels.clone()
    wrong[wrong == 2] = 0
    batches[0]["labels"][1] = wrong
    metrics = evaluate(ChannelOracle(), batches, num_labels=num_labels, mode=mode, crop_size=(8, 8), stride=(4, 4))
    # class 0: TP 128, labels 128 + 48, predicted 128 -> 128/176; class 1: 128/128; class 2: TP 0, predicted 48 -> 0
    assert metrics["per_category_iou"] == pytest.approx([128 / 176, 1.0, 0.0])
    assert metrics["overall_accuracy"] == pytest.approx(256 / 304)


def test_evaluate_restores_training_mode_and_rejects_unknown_modes() -> None:
    model = PointwiseModel().train()
    batch = {"pixel_values": [torch.randn(3, 8, 8)], "labels": [torch.zeros(8, 8, dtype=torch.long)]}
    evaluate(model, [batch], num_labels=3)
    assert model.training
    with pytest.raises(ValueError, match="valid modes: whole, slide, multiscale"):
        evaluate(model, [batch], num_labels=3, mode="tiles")


def _multiscale_reference(model: nn.Module, image: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
    """mmseg's multi-scale + flip test written out one view at a time: (C, *label_size) mean probabilities."""
    height, width = image.shape[-2:]
    views = []
    for scale in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True):
            columns = torch.arange(size[1] - 1, -1, -1) if mirrored else torch.arange(size[1])
            with torch.no_grad():
                logits = model(pixel_values=resized[..., columns]).logits.float()  # (1, C, h/4, w/4)
            logits = nn.functional.interpolate(logits, size=label_size, mode="bilinear", align_corners=False)[0]
            if mirrored:
                logits = logits[..., torch.arange(label_size[1] - 1, -1, -1)]
            views.append(torch.softmax(logits, dim=0))
    return torch.stack(views).mean(dim=0)


def test_multiscale_flip_matches_a_view_by_view_reference_on_a_tiny_protoseg() -> None:
    from tiny_models import tiny_protoseg_config

    from modeling_protoseg import ProtoSegForSemanticSegmentation

    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=3)).eval()
    images = torch.randn(2, 3, 64, 96)
    label_size = (80, 120)  # labels at their own resolution, not the resized image's
    probabilities = predict_probabilities_multiscale(
        model, images, label_size, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True
    )
    assert probabilities.shape == (2, 3, *label_size)
    for index in range(2):
        torch.testing.assert_close(
            probabilities[index], _multiscale_reference(model, images[index], label_size), rtol=1e-5, atol=1e-6
        )
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, *label_size))
    # one scale, no flip: the whole-image prediction
    single = predict_probabilities_multiscale(model, images, label_size, scales=(1.0,), flip=False)
    assert torch.equal(single.argmax(dim=1), predict_logits_whole(model, images, label_size).argmax(dim=1))
    # through `evaluate`, with a label size that differs from the image size
    labels = _multiscale_reference(model, images[0], label_size).argmax(dim=0)
    metrics = evaluate(model, [{"pixel_values": [images[0]], "labels": [labels]}], num_labels=3, mode="multiscale")
    assert metrics["overall_accuracy"] == 1.0


@pytest.mark.parametrize(
    "encoder, mean, std",
    [  # written out by hand: EfficientNet-Lite's weights expect (x - 0.5) / 0.5, MiT's the ImageNet statistics
        ("efficientnet_lite", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ("mit", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ],
)
def test_the_saved_processor_normalises_as_the_saved_config_says(tmp_path, encoder, mean, std) -> None:
    import json

    import numpy as np
    from tiny_models import tiny_efficientnet_lite_encoder_config, tiny_protoseg_config
    from transformers import AutoImageProcessor

    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from training.config import parse_config
    from training.train import _image_processor

    encoder_config = tiny_efficientnet_lite_encoder_config() if encoder == "efficientnet_lite" else None
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=encoder_config))
    run_config = parse_config(["--base_size", "24", "--output_dir", str(tmp_path / "run")])
    model.save_pretrained(tmp_path)
    _image_processor(run_config, model).save_pretrained(tmp_path)  # as train.py exports it
    saved_config = json.loads((tmp_path / "config.json").read_text())
    saved_processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved_config["image_mean"] == saved_processor["image_mean"] == mean
    assert saved_config["image_std"] == saved_processor["image_std"] == std
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # already at base size
    processed = AutoImageProcessor.from_pretrained(tmp_path)(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(processed.transpose(1, 2, 0), (image / 255.0 - mean) / std, atol=1e-5)


def test_normalisation_follows_the_encoder_config_in_training_evaluation_and_the_processor() -> None:
    import numpy as np
    from tiny_models import tiny_protoseg_config, tiny_segformer_encoder_config
    from transformers import SegformerConfig

    from training.augmentation import build_eval_transform, build_train_transform
    from training.preprocessing import IMAGENET_NORMALIZATION, build_image_processor, input_normalization

    half = [0.5, 0.5, 0.5]
    encoder_config = tiny_segformer_encoder_config(image_mean=half, image_std=half)
    normalization = input_normalization(tiny_protoseg_config(encoder_config=encoder_config))
    assert normalization.mean == (0.5, 0.5, 0.5) and normalization.std == (0.5, 0.5, 0.5)
    assert input_normalization(SegformerConfig(image_mean=half, image_std=half)) == normalization  # linear head
    assert input_normalization(tiny_protoseg_config()) == IMAGENET_NORMALIZATION
    assert input_normalization(SegformerConfig()) == IMAGENET_NORMALIZATION

    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    evaluated = build_eval_transform(base_size=16, normalization=normalization)(image=image)["image"]
    np.testing.assert_allclose(evaluated, image / 127.5 - 1.0, atol=1e-5)
    processor = build_image_processor(normalization, base_size=16, crop_size=(16, 24))
    processed = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)  # (16, 24, 3)
    np.testing.assert_allclose(processed, evaluated, atol=1e-5)
    # training: same normalisation, and the padding normalises to 0
    train_transform = build_train_transform(
        crop_size=(40, 40), base_size=16, scale_range=(1.0, 1.0), photometric=False, hflip_probability=0.0,
        normalization=normalization,
    )  # fmt: skip
    crop = train_transform(image=image, mask=np.zeros((16, 24), np.int32))["image"]
    np.testing.assert_allclose(crop[:16, :24], image / 127.5 - 1.0, atol=1e-5)
    assert np.abs(crop[20:, 30:]).max() < 0.01
