"""The pixel-contrast objective (training/pixel_contrast_objective.py) against straightforward per-class references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.pixel_contrast_objective import (
    memory_contents,
    nearest_labels,
    pixel_contrast_loss,
    sample_anchors,
    sample_memory_pixels,
    segment_means,
    write_to_memory_,
)

IGNORE = 255


def random_batch(seed: int, batch_size: int = 3, num_pixels: int = 400, num_classes: int = 4):
    """Labels with large and small classes and ignored pixels; predictions right about 60% of the time."""
    generator = torch.Generator().manual_seed(seed)
    class_weights = torch.tensor([0.5, 0.3, 0.15, 0.05])[:num_classes]
    labels = torch.multinomial(class_weights, batch_size * num_pixels, replacement=True, generator=generator)
    labels = labels.reshape(batch_size, num_pixels)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = IGNORE
    wrong = torch.rand(labels.shape, generator=generator) < 0.4
    predictions = torch.where(wrong, torch.randint(0, num_classes, labels.shape, generator=generator), labels)
    predictions[predictions == IGNORE] = 0
    return labels, predictions


def reference_anchors(labels, predictions, priorities, *, num_classes, max_anchors, max_views):
    """The official rule, one image and one class at a time: classes with more than max_views pixels; n_view =
    min(max_anchors // groups, max_views); half hard, half easy, the other kind filling a shortfall; within a kind
    the pixels with the lowest priorities (the batched code's random order), hard ones first."""
    groups = []
    for b in range(labels.shape[0]):
        for c in range(num_classes):
            if int((labels[b] == c).sum()) > max_views:
                groups.append((b, c))
    if not groups:
        return None
    n_view = max(1, min(max_anchors // len(groups), max_views))
    rows, classes = [], []
    for b, c in groups:
        hard = torch.nonzero((labels[b] == c) & (predictions[b] != c)).squeeze(1)
        easy = torch.nonzero((labels[b] == c) & (predictions[b] == c)).squeeze(1)
        num_hard, num_easy = hard.numel(), easy.numel()
        if num_hard >= n_view / 2 and num_easy >= n_view / 2:
            hard_keep = n_view // 2
        elif num_hard >= n_view / 2:
            hard_keep = n_view - num_easy
        else:
            hard_keep = num_hard
        easy_keep = n_view - hard_keep
        flat = lambda index: b * labels.shape[1] + index  # noqa: E731
        hard = hard[torch.argsort(priorities[flat(hard)])][:hard_keep]
        easy = easy[torch.argsort(priorities[flat(easy)])][:easy_keep]
        rows.append(flat(torch.cat([hard, easy])))
        classes.append(c)
    return torch.stack(rows), torch.tensor(classes)


@pytest.mark.parametrize("seed, max_anchors, max_views", [(0, 64, 20), (1, 1000, 30), (2, 40, 100), (3, 7, 5)])
def test_sample_anchors_matches_per_class_reference(seed, max_anchors, max_views):
    labels, predictions = random_batch(seed)
    anchors = sample_anchors(
        labels, predictions, num_classes=4, ignore_index=IGNORE, max_anchors=max_anchors, max_views=max_views,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    # the batched code draws one priority per candidate pixel (labelled, in an eligible group), in pixel order
    counts = torch.stack([torch.bincount(row[row != IGNORE], minlength=4) for row in labels])  # (B, C)
    flat_labels = labels.reshape(-1)
    group_of_pixel = torch.arange(labels.shape[0]).repeat_interleave(labels.shape[1]) * 4 + flat_labels.clamp(max=3)
    candidate = (flat_labels != IGNORE) & (counts.reshape(-1) > max_views)[group_of_pixel]
    priorities = torch.full((flat_labels.numel(),), float("inf"))
    priorities[candidate] = torch.rand(int(candidate.sum()), generator=torch.Generator().manual_seed(seed))
    expected = reference_anchors(
        labels, predictions, priorities, num_classes=4, max_anchors=max_anchors, max_views=max_views
    )
    assert anchors is not None and expected is not None
    expected_index, expected_classes = expected
    torch.testing.assert_close(anchors.pixel_index, expected_index)
    torch.testing.assert_close(anchors.classes, expected_classes)
    # every view is a pixel of its group's class, from its group's image, never an ignored pixel
    assert (flat_labels[anchors.pixel_index] == anchors.classes[:, None]).all()


def test_sample_anchors_none_when_no_class_is_large_enough():
    labels, predictions = random_batch(0, num_pixels=50)
    assert sample_anchors(labels, predictions, num_classes=4, ignore_index=IGNORE, max_views=100) is None
    all_ignored = torch.full((2, 300), IGNORE)
    assert sample_anchors(all_ignored, torch.zeros_like(all_ignored), num_classes=4, ignore_index=IGNORE) is None


def reference_loss(embeddings, classes, temperature, base_temperature):
    """The official `_contrastive`, written as loops: for every anchor i and positive p != i,
    -log(exp(s_ip) / (exp(s_ip) + sum_n exp(s_in))), averaged over p, then over anchors, times t / base_t."""
    similarities = (embeddings @ embeddings.T / temperature).double()
    losses = []
    for i in range(len(classes)):
        positives = [p for p in range(len(classes)) if p != i and classes[p] == classes[i]]
        negatives = [n for n in range(len(classes)) if classes[n] != classes[i]]
        if not positives:
            continue
        negative_sum = sum(math.exp(similarities[i, n]) for n in negatives)
        terms = [similarities[i, p] - math.log(math.exp(similarities[i, p]) + negative_sum) for p in positives]
        losses.append(-(temperature / base_temperature) * sum(terms) / len(terms))
    return sum(losses) / len(losses)


def test_loss_value_and_gradient_match_reference():
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(24, 8, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    classes = torch.randint(0, 3, (24,), generator=generator)
    classes[0] = 5  # an anchor with no positive takes no part
    loss = pixel_contrast_loss(embeddings.float(), classes, temperature=0.1, base_temperature=0.07)
    expected = reference_loss(embeddings.detach(), classes, 0.1, 0.07)
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)

    # gradient: against torch.autograd on the double-precision reference written with tensors
    def tensor_reference(x):
        s = x @ x.T / 0.1
        same = classes[:, None] == classes[None, :]
        positives = same & ~torch.eye(len(classes), dtype=torch.bool)
        negative_sum = (torch.exp(s) * ~same).sum(1, keepdim=True)
        log_probability = s - torch.log(torch.exp(s) + negative_sum)
        count = positives.sum(1)
        keep = count > 0
        per_anchor = -(0.1 / 0.07) * (log_probability * positives).sum(1)[keep] / count[keep]
        return per_anchor.mean()

    embeddings32 = embeddings.detach().float().requires_grad_()
    pixel_contrast_loss(embeddings32, classes, temperature=0.1, base_temperature=0.07).backward()
    reference_input = embeddings.detach().clone().requires_grad_()
    tensor_reference(reference_input).backward()
    torch.testing.assert_close(embeddings32.grad.double(), reference_input.grad, rtol=1e-4, atol=1e-6)


def test_loss_with_memory_adds_positives_and_negatives():
    generator = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(10, 4, generator=generator), dim=1)
    anchor_classes = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    memory = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    memory_classes = torch.tensor([0, 1, 2, 3, 3, 0])
    loss = pixel_contrast_loss(anchors, anchor_classes, memory, memory_classes, temperature=0.2, base_temperature=0.2)
    # the memory rows are contrast rows, never anchors: the reference over all 16 rows, averaged over the 10 anchors
    everything = torch.cat([anchors, memory])
    classes = torch.cat([anchor_classes, memory_classes])
    s = (everything[:10] @ everything.T / 0.2).double()
    expected = []
    for i in range(10):
        positives = [p for p in range(16) if p != i and classes[p] == classes[i]]
        negative_sum = sum(math.exp(s[i, n]) for n in range(16) if classes[n] != classes[i])
        expected.append(-sum(s[i, p] - math.log(math.exp(s[i, p]) + negative_sum) for p in positives) / len(positives))
    assert loss.item() == pytest.approx(float(sum(expected) / 10), rel=1e-5)


def test_loss_is_finite_for_single_class_and_lone_anchors():
    embeddings = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    single_class = pixel_contrast_loss(embeddings, torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(single_class)  # no negatives: every term is log(1) = 0
    assert single_class.item() == pytest.approx(0.0, abs=1e-6)
    lone = pixel_contrast_loss(embeddings, torch.arange(6))  # no anchor has a positive
    lone.backward()
    assert lone.item() == 0.0 and torch.isfinite(embeddings.grad).all()


def test_memory_ring_buffer_matches_sequential_writes():
    generator = torch.Generator().manual_seed(0)
    queue = torch.zeros(3, 4, 2)
    pointer = torch.tensor([0, 3, 1])
    filled = torch.tensor([0, 4, 1])
    entries = torch.randn(9, 2, generator=generator)
    entry_classes = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0, 2])  # class 0 brings 6 entries > 4 slots
    expected_queue, expected_pointer, expected_filled = queue.clone(), pointer.clone(), filled.clone()
    for entry, c in zip(entries, entry_classes):  # one at a time, in order
        expected_queue[c, expected_pointer[c]] = entry
        expected_pointer[c] = (expected_pointer[c] + 1) % 4
        expected_filled[c] = min(int(expected_filled[c]) + 1, 4)
    write_to_memory_(queue, pointer, filled, entries, entry_classes)
    torch.testing.assert_close(queue, expected_queue)
    torch.testing.assert_close(pointer, expected_pointer)
    torch.testing.assert_close(filled, expected_filled)
    contents, classes = memory_contents(queue, filled)
    assert classes.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    torch.testing.assert_close(contents[-2:], queue[2, :2])


def test_segment_means_and_memory_pixels_match_reference():
    labels, _ = random_batch(4, batch_size=2, num_pixels=120, num_classes=4)
    embeddings = torch.randn(2, 120, 5)
    means, present = segment_means(embeddings, labels, num_classes=4, ignore_index=IGNORE)
    for b in range(2):
        for c in range(4):
            mask = labels[b] == c
            assert bool(present[b, c]) == bool(mask.any())
            if mask.any():
                torch.testing.assert_close(means[b, c], F.normalize(embeddings[b][mask].mean(0), dim=0))
    pixel_index, pixel_present = sample_memory_pixels(labels, num_classes=4, ignore_index=IGNORE, pixels_per_segment=7)
    flat_labels = labels.reshape(-1)
    for b in range(2):
        for c in range(4):
            chosen = pixel_index[b, c][pixel_present[b, c]]
            assert chosen.numel() == min(7, int((labels[b] == c).sum()))
            assert (flat_labels[chosen] == c).all() and (chosen // 120 == b).all()
            assert chosen.unique().numel() == chosen.numel()


def test_nearest_labels_samples_without_mixing_classes():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE], [2, 2, IGNORE, IGNORE]]])
    assert nearest_labels(labels, (2, 2)).tolist() == [[[0, 1], [2, IGNORE]]]
