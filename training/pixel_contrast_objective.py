"""Cross-image pixel contrast (ContrastiveSeg, Wang et al., ICCV 2021): anchor sampling, the loss, the memory.

Pure tensor functions, batched over images and classes at once (no Python loop over classes, one host
synchronisation for the number of anchor groups), in float32 whatever the input dtype. Nothing here is needed at
inference: the objective exists only while training (`training/pixel_contrast.py` attaches it to a model).

The rules follow the official implementation (repository tfzhou/ContrastiveSeg, `lib/loss/loss_contrast*.py` and
`segmentor/trainer_contrastive.py`), with its faults mended:
- anchors: every (image, class) with more than `max_views` labelled pixels is one anchor group; each group gets
  `views = min(max_anchors // groups, max_views)` pixels (at least 1), half of them "hard" (labelled the class but
  predicted otherwise) and half "easy", filled from the other kind when one runs short;
- loss: supervised InfoNCE over the anchors' views (and the memory): for each anchor and each positive p,
  -log(exp(a.p / t) / (exp(a.p / t) + sum over negatives n of exp(a.n / t))), averaged over the positives and then
  the anchors, times t / base_t. Anchors without any positive take no part (the official code divides by zero);
- memory: per class a queue of segment means and a queue of single pixels (detached, L2-normalised), written in a
  ring. Every class is written, class 0 included (the official code skips class 0 as if it were "ignore", which on
  Cityscapes is the road); a queue slot counts only once it has been written (the official queues start as random
  vectors that act as positives); the pixel pointer moves by the number of pixels written (officially by 1, so most
  writes land on the same slots); the rows the anchors are contrasted with are the anchors' own views plus the
  written memory (the official memory variant drops the in-batch views and masks an unrelated column as "self").
- distributed: the entries written to the memory are gathered from every process in process order before the
  write, so every process keeps identical queues (the official queues are per GPU and drift apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class PixelAnchors:
    """Sampled anchors: `pixel_index` (A, V) long flat index `b * N + n` of the V pixels (views) of each of A anchor
    groups (an image and a class with enough pixels), hard views first; `classes` (A,) long class of each group.
    Only the sampled pixels need embeddings (a projection head can run on them alone)."""

    pixel_index: torch.Tensor
    classes: torch.Tensor


def nearest_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) class indices -> (B, h, w) by nearest-neighbour sampling (as the official code), a long tensor."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _random_priorities(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(count,) uniform random numbers from `generator` (on its device), moved to `device`."""
    if generator is None:
        return torch.rand(count, device=device)
    return torch.rand(count, generator=generator, device=generator.device).to(device)


def _rank_within_groups(groups: torch.Tensor, priorities: torch.Tensor) -> torch.Tensor:
    """Rank of each element within its group by ascending priority (0 = lowest priority value).

    Arguments:
        groups: (M,) long group of each element; priorities: (M,) float, distinct.
    Returns:
        (M,) long rank, in the elements' original order.
    """
    by_priority = torch.argsort(priorities)
    order = by_priority[torch.sort(groups[by_priority], stable=True).indices]  # by group, then by priority
    sorted_groups = groups[order]
    position = torch.arange(order.numel(), device=groups.device)
    is_first = torch.ones_like(sorted_groups, dtype=torch.bool)
    is_first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    group_start = torch.cummax(torch.where(is_first, position, torch.zeros_like(position)), dim=0).values
    ranks = torch.empty_like(position)
    ranks[order] = position - group_start
    return ranks


def _pixel_groups(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(B, N) labels -> (B*N,) group `b * C + c` of each labelled pixel, B*C for the others."""
    batch_size, num_pixels = labels.shape
    flat_labels = labels.reshape(-1)
    labelled = (flat_labels != ignore_index) & (flat_labels >= 0) & (flat_labels < num_classes)
    image_of_pixel = torch.arange(batch_size, device=labels.device).repeat_interleave(num_pixels)
    spare = torch.full_like(flat_labels, batch_size * num_classes)
    return torch.where(labelled, image_of_pixel * num_classes + flat_labels, spare)


def sample_anchors(
    labels: torch.Tensor,
    predictions: torch.Tensor,
    *,
    num_classes: int,
    ignore_index: int,
    max_anchors: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
) -> PixelAnchors | None:
    """Hard/easy anchor sampling of the official `_hard_anchor_sampling`, batched.

    Arguments:
        labels: (B, N) long class index or `ignore_index` of each pixel (N = h * w); predictions: (B, N) long
            predicted class.
        max_anchors: total views wanted (official `max_samples`); max_views: views per group at most, and a group
            needs more labelled pixels than this to be sampled at all.
        generator: the random pixel priorities are drawn from it (`torch.rand`).
    Returns:
        `PixelAnchors`, or None when no (image, class) has more than `max_views` labelled pixels.
    """
    batch_size, _ = labels.shape
    flat_labels, flat_predictions = labels.reshape(-1), predictions.reshape(-1)
    num_groups = batch_size * num_classes
    groups = _pixel_groups(labels, num_classes, ignore_index)  # unlabelled pixels: the spare group, never eligible
    labelled = groups < num_groups
    pixels_per_group = torch.bincount(groups, minlength=num_groups + 1)[:num_groups]  # (B*C,)
    eligible = pixels_per_group > max_views  # (B*C,)
    num_anchor_groups = int(eligible.sum())  # the one host synchronisation: it sets the output's shape
    if num_anchor_groups == 0:
        return None
    views_per_group = max(1, min(max_anchors // num_anchor_groups, max_views))

    is_easy = flat_predictions == flat_labels
    candidate = labelled & torch.cat([eligible, eligible.new_zeros(1)])[groups]
    candidate_index = torch.nonzero(candidate).squeeze(1)  # (M,)
    candidate_groups, candidate_easy = groups[candidate_index], is_easy[candidate_index]
    easy_per_group = torch.bincount(candidate_groups[candidate_easy], minlength=num_groups)
    hard_per_group = pixels_per_group * eligible - easy_per_group
    # official split: half hard, half easy; when one kind runs short the other fills the group
    half = views_per_group / 2
    hard_keep = torch.where(
        (hard_per_group >= half) & (easy_per_group >= half),
        torch.full_like(hard_per_group, views_per_group // 2),
        torch.where(hard_per_group >= half, views_per_group - easy_per_group, hard_per_group),
    )
    easy_keep = views_per_group - hard_keep

    priorities = _random_priorities(candidate_index.numel(), generator, labels.device)
    ranks = _rank_within_groups(candidate_groups * 2 + candidate_easy.long(), priorities)
    keep = torch.where(candidate_easy, easy_keep[candidate_groups], hard_keep[candidate_groups])
    chosen = ranks < keep
    slots = torch.where(candidate_easy, hard_keep[candidate_groups] + ranks, ranks)[chosen]  # hard views first
    anchor_row = (torch.cumsum(eligible.long(), dim=0) - 1)[candidate_groups[chosen]]
    pixel_index = torch.empty((num_anchor_groups, views_per_group), dtype=torch.long, device=labels.device)
    pixel_index[anchor_row, slots] = candidate_index[chosen]
    classes = torch.nonzero(eligible).squeeze(1) % num_classes
    return PixelAnchors(pixel_index=pixel_index, classes=classes)


def pixel_contrast_loss(
    anchor_embeddings: torch.Tensor,
    anchor_classes: torch.Tensor,
    memory_embeddings: torch.Tensor | None = None,
    memory_classes: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """Supervised pixel InfoNCE of each anchor against the other anchors and the memory.

    Arguments:
        anchor_embeddings: (M, D) unit embeddings (the views of all anchor groups); anchor_classes: (M,) long.
        memory_embeddings: (Q, D) unit embeddings to contrast with as well (no gradient flows into them);
            memory_classes: (Q,) long.
        temperature, base_temperature: t and the official `base_temperature` (the loss is scaled by t / base_t).
    Returns:
        scalar loss; 0 (still attached to the graph) when no anchor has a positive.
    """
    with torch.autocast(device_type=anchor_embeddings.device.type, enabled=False):
        anchors = anchor_embeddings.float()
        contrast, contrast_classes = anchors, anchor_classes
        if memory_embeddings is not None and memory_embeddings.numel():
            contrast = torch.cat([anchors, memory_embeddings.detach().float()])
            contrast_classes = torch.cat([anchor_classes, memory_classes])
        logits = (anchors / temperature) @ contrast.T  # (M, M + Q); column i < M is anchor i itself
        same_class = anchor_classes[:, None] == contrast_classes[None, :]
        # log(exp(l_ip) + sum_n exp(l_in)) = logaddexp(l_ip, logsumexp over the negatives), stable at any
        # temperature. No negative: logsumexp = -inf and the pair's term is log(1) = 0.
        log_negative_sum = torch.logsumexp(logits.masked_fill(same_class, float("-inf")), dim=1, keepdim=True)
        log_probability = logits - torch.logaddexp(logits, log_negative_sum)  # (M, M + Q)
        positive_sum = torch.where(same_class, log_probability, 0.0).sum(dim=1) - log_probability.diagonal()
        positive_count = same_class.sum(dim=1) - 1  # without the anchor itself
        has_positive = positive_count > 0
        per_anchor = -(temperature / base_temperature) * positive_sum / positive_count.clamp(min=1)
        return (per_anchor * has_positive).sum() / has_positive.sum().clamp(min=1)


@torch.no_grad()
def segment_means(
    embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, class) the unit mean embedding of its labelled pixels (the segment memory's entries).

    Arguments:
        embeddings: (B, N, D) pixel embeddings; labels: (B, N) long class index or `ignore_index`.
    Returns:
        means: (B, C, D) float32 unit vectors; present: (B, C) bool, whether the image has the class.
    """
    batch_size, _, dim = embeddings.shape
    groups = _pixel_groups(labels, num_classes, ignore_index)
    num_groups = batch_size * num_classes
    sums = embeddings.new_zeros((num_groups + 1, dim), dtype=torch.float32)
    sums.index_add_(0, groups, embeddings.detach().reshape(-1, dim).float())
    present = torch.bincount(groups, minlength=num_groups + 1)[:num_groups] > 0
    return F.normalize(sums[:num_groups], dim=-1).reshape(batch_size, num_classes, dim), present.reshape(
        batch_size, num_classes
    )


@torch.no_grad()
def sample_memory_pixels(
    labels: torch.Tensor,
    *,
    num_classes: int,
    ignore_index: int,
    pixels_per_segment: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `pixels_per_segment` random pixels of every (image, class), in a fixed shape (so processes can gather
    what they write to the pixel memory).

    Arguments:
        labels: (B, N) long class index or `ignore_index`.
    Returns:
        pixel_index: (B, C, F) long flat index `b * N + n` (0 where absent); present: (B, C, F) bool.
    """
    batch_size, _ = labels.shape
    groups = _pixel_groups(labels, num_classes, ignore_index)
    num_groups = batch_size * num_classes
    ranks = _rank_within_groups(groups, _random_priorities(groups.numel(), generator, labels.device))
    chosen = (groups < num_groups) & (ranks < pixels_per_segment)
    pixel_index = torch.zeros((num_groups + 1, pixels_per_segment), dtype=torch.long, device=labels.device)
    present = torch.zeros((num_groups + 1, pixels_per_segment), dtype=torch.bool, device=labels.device)
    pixel_index[groups[chosen], ranks[chosen]] = torch.nonzero(chosen).squeeze(1)
    present[groups[chosen], ranks[chosen]] = True
    shape = (batch_size, num_classes, pixels_per_segment)
    return pixel_index[:num_groups].reshape(shape), present[:num_groups].reshape(shape)


def gather_from_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every process) from all processes along dim 0, in process order; the
    tensor itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


@torch.no_grad()
def write_to_memory_(
    queue: torch.Tensor,
    pointer: torch.Tensor,
    filled: torch.Tensor,
    entries: torch.Tensor,
    entry_classes: torch.Tensor,
) -> None:
    """Write entries into per-class ring buffers, in order, in place.

    Class c's entries go to slots pointer[c], pointer[c] + 1, ... (mod S); when a batch brings more than S entries
    of a class, only its last S are kept. pointer moves by the number written; filled counts the slots written.

    Arguments:
        queue: (C, S, D); pointer: (C,) long next slot; filled: (C,) long written slots (<= S).
        entries: (E, D); entry_classes: (E,) long, in [0, C).
    """
    num_classes, size, _ = queue.shape
    if entries.shape[0] == 0 or size == 0:
        return
    arrival = torch.arange(entry_classes.numel(), device=entry_classes.device, dtype=torch.float32)
    ranks = _rank_within_groups(entry_classes, arrival)  # each entry's position among its class's, in order
    per_class = torch.bincount(entry_classes, minlength=num_classes)
    kept = ranks >= per_class[entry_classes] - size
    slots = (pointer[entry_classes] + ranks) % size
    queue[entry_classes[kept], slots[kept]] = entries[kept].to(queue.dtype)
    pointer.copy_((pointer + per_class) % size)
    filled.copy_(torch.clamp(filled + per_class, max=size))


def memory_contents(queue: torch.Tensor, filled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The written slots of per-class queues: (Q, D) embeddings and (Q,) long classes."""
    num_classes, size, _ = queue.shape
    written = torch.arange(size, device=queue.device)[None, :] < filled[:, None]  # (C, S)
    classes = torch.arange(num_classes, device=queue.device)[:, None].expand(num_classes, size)
    return queue[written], classes[written]


__all__ = [
    "PixelAnchors",
    "gather_from_processes",
    "memory_contents",
    "nearest_labels",
    "pixel_contrast_loss",
    "sample_anchors",
    "sample_memory_pixels",
    "segment_means",
    "write_to_memory_",
]
