"""What a pipeline user gets is what evaluation measured: the saved image processor resizes (short side to the
base size, aspect kept) and normalises exactly as the evaluation transform, so `pipeline("image-segmentation")`
and `training.evaluation.evaluate` (whole-image mode) give the same mIoU on images of odd aspect ratios."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_protoseg_config
from transformers import pipeline

from modeling_protoseg import ProtoSegForSemanticSegmentation

pytest.importorskip("albumentations", reason="the evaluation transform needs the `train` extra")
from training.augmentation import build_eval_transform  # noqa: E402
from training.data import SegmentationDataset, collate_eval  # noqa: E402
from training.evaluate import _base_size  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.metrics import ConfusionMatrix  # noqa: E402
from training.preprocessing import build_image_processor, input_normalization  # noqa: E402

BASE_SIZE = 32
NUM_CLASSES = 3
IMAGE_SIZES = [(37, 61), (50, 23), (29, 29), (64, 40)]  # (height, width)


class ListSource:
    """(image, label, name) samples held in memory."""

    split_name = "validation"

    def __init__(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        image, label = self.samples[index]
        return Image.fromarray(image), Image.fromarray(label), f"sample {index}"


def make_samples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    samples = []
    for height, width in IMAGE_SIZES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        # labels follow the image a little (so the prediction is not all one class), with an ignored band
        label = (image[..., 0] // 86).astype(np.uint8)
        label[:2] = 255
        samples.append((image, label))
    return samples


@pytest.fixture
def trained_folder(tmp_path):
    # random prototypes: every image gets several classes, so any change in the resize changes the predictions
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(NUM_CLASSES)).eval()
    model.save_pretrained(tmp_path)
    build_image_processor(input_normalization(model.config), base_size=BASE_SIZE).save_pretrained(tmp_path)
    return tmp_path, model


def test_saved_processor_keeps_the_aspect_ratio_as_evaluation(trained_folder):
    folder, _ = trained_folder
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["size"] == {"shortest_edge": BASE_SIZE}
    assert _base_size(folder) == BASE_SIZE  # python -m training.evaluate reads it back


def test_pipeline_and_evaluation_give_the_same_miou(trained_folder):
    folder, model = trained_folder
    samples = make_samples()

    dataset = SegmentationDataset(
        ListSource(samples),
        transform=build_eval_transform(base_size=BASE_SIZE, normalization=input_normalization(model.config)),
        num_labels=NUM_CLASSES,
        keep_label_size=True,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_eval)
    evaluation = evaluate(model, loader, num_labels=NUM_CLASSES, mode="whole")

    segmenter = pipeline("image-segmentation", model=str(folder))
    confusion = ConfusionMatrix(NUM_CLASSES)
    label2id, predicted_classes = model.config.label2id, set()
    for image, label in samples:
        predicted = np.full(label.shape, -1, dtype=np.int64)
        for segment in segmenter(Image.fromarray(image)):
            predicted[np.array(segment["mask"]) > 0] = label2id[segment["label"]]
        assert (predicted >= 0).all()
        predicted_classes |= set(np.unique(predicted).tolist())
        confusion.update(torch.from_numpy(predicted), torch.from_numpy(label.astype(np.int64)))
    through_pipeline = confusion.compute()

    assert len(predicted_classes) >= 2 and 0.0 < evaluation["mean_iou"] < 1.0
    assert through_pipeline["mean_iou"] == pytest.approx(evaluation["mean_iou"], abs=1e-6)
    assert through_pipeline["overall_accuracy"] == pytest.approx(evaluation["overall_accuracy"], abs=1e-6)


def test_training_rescale_resamples_as_the_saved_processor() -> None:
    """At scale 1 the training transform's pixels are the processor's (PIL bilinear, its long-side rounding), so
    the model trains on what evaluation and the pipeline give it; labels are resized to the same size (nearest)."""
    import numpy as np
    from PIL import Image

    from training.augmentation import build_train_transform, seed_transform

    rng = np.random.default_rng(0)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).resize((480, 360)))
    label = np.repeat(np.repeat(rng.integers(0, 5, (36, 48), dtype=np.uint8), 10, axis=0), 10, axis=1)
    # 480x360 -> short side 128: the processor makes it 170 wide (int(128 * 480 / 360)); OpenCV rounding gives 171
    transform = build_train_transform(
        crop_size=(128, 170), base_size=128, scale_range=(1.0, 1.0), photometric=False, hflip_probability=0.0
    )
    seed_transform(transform, 0)
    trained_on = transform(image=image, mask=label)
    evaluated_on = build_eval_transform(base_size=128)(image=image)["image"]
    assert trained_on["image"].shape == evaluated_on.shape == (128, 170, 3)
    np.testing.assert_allclose(trained_on["image"], evaluated_on, atol=1e-5)
    import cv2

    expected_label = cv2.resize(label, (170, 128), interpolation=cv2.INTER_NEAREST)  # never a blend of classes
    np.testing.assert_array_equal(trained_on["mask"], expected_label)
