"""Confusion-matrix metrics against hand-computed values, incl. a real 2-process gloo reduction."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
