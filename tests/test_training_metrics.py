"""Confusion-matrix metrics against hand-computed values, incl. a real 2-process gloo reduction."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.metrics import ConfusionMatrix

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# labels / predictions, 255 = ignore. Counted (label, prediction) pairs:
# (0,0) (0,1) (1,1) (1,1) (2,0)   -> matrix rows = true class: [[1,1,0,0],[0,2,0,0],[1,0,0,0],[0,0,0,0]]
LABELS = torch.tensor([[0, 0, 1], [1, 2, 255]])
PREDICTIONS = torch.tensor([[0, 1, 1], [1, 0, 2]])
EXPECTED_MATRIX = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
# class 0: TP 1, union 2 + 2 - 1 = 3; class 1: TP 2, union 2 + 3 - 2 = 3; class 2: TP 0, union 1; class 3: absent
EXPECTED_IOU = [1 / 3, 2 / 3, 0.0, math.nan]
EXPECTED_ACCURACY = [1 / 2, 1.0, 0.0, math.nan]


def _assert_lists_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e), (actual, expected)


def test_confusion_matrix_matches_hand_computed_values() -> None:
    confusion = ConfusionMatrix(4, ignore_index=255)
    confusion.update(PREDICTIONS, LABELS)
    assert confusion.matrix.tolist() == EXPECTED_MATRIX
    metrics = confusion.compute()
    _assert_lists_close(metrics["per_category_iou"], EXPECTED_IOU)
    _assert_lists_close(metrics["per_category_accuracy"], EXPECTED_ACCURACY)
    assert metrics["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)  # the absent class is left out
    assert metrics["mean_accuracy"] == pytest.approx(0.5)
    assert metrics["overall_accuracy"] == pytest.approx(3 / 5)


def test_batches_accumulate_to_the_same_matrix_as_one_pass() -> None:
    confusion = ConfusionMatrix(4)
    for row in range(2):  # two "batches"
        confusion.update(PREDICTIONS[row : row + 1], LABELS[row : row + 1])
    assert confusion.matrix.tolist() == EXPECTED_MATRIX


def test_reduce_with_a_custom_sum_adds_the_other_process_counts() -> None:
    first, second = ConfusionMatrix(4), ConfusionMatrix(4)
    first.update(PREDICTIONS[:1], LABELS[:1])
    second.update(PREDICTIONS[1:], LABELS[1:])
    first.reduce(lambda matrix: matrix + second.matrix)
    assert first.matrix.tolist() == EXPECTED_MATRIX


def test_out_of_range_labels_are_rejected() -> None:
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def _reduce_worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    confusion = ConfusionMatrix(4)
    confusion.update(PREDICTIONS[rank : rank + 1], LABELS[rank : rank + 1])  # each process: one row
    confusion.reduce()
    results[rank] = confusion.matrix.tolist()
    dist.destroy_process_group()


def test_reduce_across_two_gloo_processes(tmp_path) -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        assert results[0] == EXPECTED_MATRIX
        assert results[1] == EXPECTED_MATRIX


# ------------------------------------------------------------------------------ evaluate's mean_iou face


def reference_mean_iou(predictions, references, num_labels: int, ignore_index: int) -> dict:
    """evaluate's `mean_iou` algorithm in numpy: per-image histograms of intersection, prediction and label."""
    import numpy as np

    intersect, area_prediction, area_label = (np.zeros(num_labels) for _ in range(3))
    for prediction, label in zip(predictions, references):
        mask = label != ignore_index
        prediction, label = prediction[mask], label[mask]
        bins = np.arange(num_labels + 1)
        intersect += np.histogram(prediction[prediction == label], bins=bins)[0]
        area_prediction += np.histogram(prediction, bins=bins)[0]
        area_label += np.histogram(label, bins=bins)[0]
    union = area_prediction + area_label - intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, accuracy = intersect / union, intersect / area_label
    return {
        "mean_iou": np.nanmean(iou),
        "mean_accuracy": np.nanmean(accuracy),
        "overall_accuracy": intersect.sum() / area_label.sum(),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


def _assert_same_metrics(actual: dict, expected: dict) -> None:
    import numpy as np

    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(actual[key], dtype=float), value, rtol=1e-12, equal_nan=True, err_msg=key)


def test_mean_iou_has_evaluates_keys_and_values_on_small_arrays() -> None:
    import numpy as np

    from training.metrics import mean_iou

    rng = np.random.default_rng(0)
    # 5 classes: class 3 only predicted (IoU 0, accuracy NaN), class 4 nowhere (both NaN); ignored pixels
    references = [rng.choice([0, 1, 2, 255], size=(6, 7)), rng.choice([0, 1, 2, 255], size=(4, 9))]
    predictions = [rng.choice([0, 1, 2, 3], size=reference.shape) for reference in references]
    expected = reference_mean_iou(predictions, references, num_labels=5, ignore_index=255)
    assert np.isnan(expected["per_category_iou"][4]) and np.isnan(expected["per_category_accuracy"][3])
    result = mean_iou(predictions, references, num_labels=5, ignore_index=255)
    _assert_same_metrics(result, expected)
    assert isinstance(result["per_category_iou"], np.ndarray) and isinstance(result["mean_iou"], float)


@pytest.mark.parametrize("batched", [False, True], ids=["whole_set", "batch_eval_metrics"])
def test_mean_iou_metric_is_a_trainer_compute_metrics(batched: bool) -> None:
    import numpy as np
    from transformers import EvalPrediction

    from training.metrics import MeanIoUMetric

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 4, 4)).astype(np.float32)  # at a quarter of the label size
    labels = rng.choice([0, 1, 2, 255], size=(4, 16, 16))
    upsampled = F.interpolate(torch.from_numpy(logits), size=(16, 16), mode="bilinear", align_corners=False)
    expected = reference_mean_iou(list(upsampled.argmax(dim=1).numpy()), list(labels), num_labels=3, ignore_index=255)
    metric = MeanIoUMetric(num_labels=3)
    if batched:  # Trainer(batch_eval_metrics=True) hands tensors batch by batch
        assert metric(EvalPrediction(torch.from_numpy(logits[:2]), torch.from_numpy(labels[:2])), compute_result=False) == {}
        result = metric(EvalPrediction(torch.from_numpy(logits[2:]), torch.from_numpy(labels[2:])), compute_result=True)
    else:
        result = metric(EvalPrediction(logits, labels))
    _assert_same_metrics(result, expected)
