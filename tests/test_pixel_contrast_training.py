"""The pixel-contrast objective in training (training/pixel_contrast.py): the wrapper, export, resume, processes."""

from __future__ import annotations

import copy
import gc
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from tiny_models import tiny_protoseg_config, tiny_segformer_encoder_config
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from modeling_protoseg import ProtoSegForSemanticSegmentation
from test_training_run import TINY_RUN, run_training
from training.config import OptimizationArguments, PixelContrastArguments
from training.optimization import build_optimizer
from training.models import segmentation_model_of
from training.pixel_contrast import PixelContrastTrainingModel, with_pixel_contrast

# Small enough for 32x32 crops (8x8 feature maps): a class needs > 4 pixels there to be an anchor group.
CONTRAST = dict(pixel_contrast=True, pixel_contrast_max_views=4, pixel_contrast_dim=8)
MEMORY = dict(pixel_contrast_segment_memory=6, pixel_contrast_pixel_memory=10, pixel_contrast_pixels_per_segment=2)


def tiny_segformer(num_classes: int = 3) -> SegformerForSemanticSegmentation:
    torch.manual_seed(0)
    id2label = {index: f"class_{index}" for index in range(num_classes)}
    values = tiny_segformer_encoder_config().to_dict()
    values.update(id2label=id2label, label2id={v: k for k, v in id2label.items()}, classifier_dropout_prob=0.0)
    config = SegformerConfig(**values)
    return SegformerForSemanticSegmentation(config)


def batch(seed: int, batch_size: int = 2, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with 8x8 blocks of one class each (every class large at 1/4 resolution), a few ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, 32, 32, generator=generator)
    coarse = torch.randint(0, num_classes, (batch_size, 1, 4, 4), generator=generator).float()
    labels = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="nearest")[:, 0].long()
    labels[:, :2, :2] = 255
    return pixel_values, labels


def test_linear_head_contrast_adds_the_weighted_loss_and_trains_a_projection_head() -> None:
    model = tiny_segformer()
    plain = copy.deepcopy(model).train()
    wrapper = PixelContrastTrainingModel(model, PixelContrastArguments(**CONTRAST, pixel_contrast_weight=0.5)).train()
    pixel_values, labels = batch(0)
    outputs = wrapper(pixel_values, labels=labels)
    plain_loss = plain(pixel_values=pixel_values, labels=labels).loss
    assert outputs.contrast_loss > 0
    torch.testing.assert_close(outputs.loss, plain_loss + 0.5 * outputs.contrast_loss)
    outputs.loss.backward()
    for name, parameter in wrapper.projection_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # the contrastive loss reaches the decoder through the classifier's input features
    classifier_input_grads = model.decode_head.linear_fuse.weight.grad.clone()
    model.zero_grad()
    plain(pixel_values=pixel_values, labels=labels).loss.backward()
    assert not torch.allclose(classifier_input_grads, plain.decode_head.linear_fuse.weight.grad)
    # evaluation: the model's own forward, nothing captured
    wrapper.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapper(pixel_values).logits, model(pixel_values).logits)
    assert wrapper._captured_features is None


def test_protoseg_contrast_uses_its_own_embeddings_without_new_parameters() -> None:
    torch.manual_seed(0)
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config())
    settings = PixelContrastArguments(**CONTRAST, pixel_contrast_weight=1.0)
    wrapper = PixelContrastTrainingModel(copy.deepcopy(model), settings).train()
    assert wrapper.projection_head is None
    assert sum(p.numel() for p in wrapper.parameters()) == sum(p.numel() for p in model.parameters())
    pixel_values, labels = batch(1)
    outputs = wrapper(pixel_values, labels=labels)
    assert torch.isfinite(outputs.contrast_loss) and outputs.contrast_loss > 0
    outputs.loss.backward()
    with_contrast = wrapper.segmentation_model.projection_head.output.weight.grad.clone()
    model.train()(pixel_values=pixel_values, labels=labels).loss.backward()
    assert not torch.allclose(with_contrast, model.projection_head.output.weight.grad)


def test_warmup_counts_optimizer_steps_and_memory_fills_meanwhile() -> None:
    settings = PixelContrastArguments(**CONTRAST, **MEMORY, pixel_contrast_warmup_steps=2)
    wrapper = PixelContrastTrainingModel(tiny_segformer(), settings, micro_batches_per_step=2).train()
    losses = []
    for step in range(5):
        pixel_values, labels = batch(step)
        plain_loss = copy.deepcopy(wrapper.segmentation_model)(pixel_values=pixel_values, labels=labels).loss
        outputs = wrapper(pixel_values, labels=labels)
        losses.append((outputs.loss - plain_loss).abs().item())
    assert losses[:4] == pytest.approx([0.0] * 4, abs=1e-6)  # 2 steps x 2 micro-batches
    assert losses[4] > 1e-4
    assert int(wrapper.segment_memory_filled.sum()) > 0 and int(wrapper.pixel_memory_filled.sum()) > 0


def test_all_ignored_and_single_class_batches_give_finite_losses_and_gradients() -> None:
    wrapper = PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, **MEMORY)).train()
    _, labels = batch(2)
    for case in (torch.full_like(labels, 255), torch.ones_like(labels)):  # no anchor / no negative
        wrapper.zero_grad()
        features = torch.randn(2, 16, 8, 8, requires_grad=True)  # the classifier's input at 1/4 resolution
        loss = wrapper.contrastive_loss(features, torch.randn(2, 3, 8, 8), case)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
        assert torch.isfinite(features.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in wrapper.projection_head.parameters())  # all in the graph
    assert int(wrapper.segment_memory_filled[1]) == 2  # the single-class batch: one segment per image
    assert int(wrapper.segment_memory_filled[0]) == 0 and int(wrapper.segment_memory_filled[2]) == 0


def test_a_non_finite_batch_writes_nothing_to_the_memory() -> None:
    wrapper = PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, **MEMORY)).train()
    wrapper(*batch(3)[:1], labels=batch(3)[1])
    before = {name: buffer.clone() for name, buffer in wrapper.named_buffers() if "memory" in name}
    pixel_values, labels = batch(4)
    features = torch.randn(2, 16, 8, 8)
    features[0] = float("nan")  # every entry of image 0 would be NaN
    wrapper._write_memory(features.permute(0, 2, 3, 1).reshape(-1, 16), labels[:, ::4, ::4].reshape(2, -1))
    for name, buffer in before.items():
        torch.testing.assert_close(dict(wrapper.named_buffers())[name], buffer, rtol=0, atol=0)


def test_optimizer_gives_the_projection_head_the_head_learning_rate() -> None:
    wrapper = with_pixel_contrast(tiny_segformer(), PixelContrastArguments(**CONTRAST), micro_batches_per_step=1)
    optimizer = build_optimizer(wrapper, OptimizationArguments(learning_rate=1e-4, head_lr_multiplier=10))
    encoder = {id(p) for p in wrapper.segmentation_model.segformer.parameters()}
    projection = {id(p) for p in wrapper.projection_head.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= encoder or not ids & encoder
        assert group["lr"] == pytest.approx(1e-4 if ids <= encoder else 1e-3)
    assert projection <= {id(p) for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-3) for p in g["params"]}
    assert segmentation_model_of(wrapper) is wrapper.segmentation_model

    class OtherWrapper(torch.nn.Module):  # the optimizer finds the encoder by module, under any attribute name
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_segformer()

    other = OtherWrapper()
    optimizer = build_optimizer(other, OptimizationArguments(learning_rate=1e-4, head_lr_multiplier=10))
    encoder = {id(p) for p in other.inner.segformer.parameters()}
    assert encoder == {id(p) for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-4) for p in g["params"]}
    assert with_pixel_contrast(wrapper.segmentation_model, PixelContrastArguments(), micro_batches_per_step=1) is (
        wrapper.segmentation_model
    )


def test_bad_settings_and_unsupported_models_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"--pixel_contrast_temperature must be a finite number in .*, got 0"):
        PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, pixel_contrast_temperature=0))
    with pytest.raises(ValueError, match="--pixel_contrast_pixel_memory must be >= 0, got -1"):
        PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, pixel_contrast_pixel_memory=-1))

    with pytest.raises(ValueError, match="--pixel_contrast_segment_memory 10 and --pixel_contrast_pixel_memory 1000000"):
        PixelContrastTrainingModel(  # 3 classes x 10^6 entries x 2048 dimensions: 23 GiB, refused before allocation
            tiny_segformer(), PixelContrastArguments(**{**CONTRAST, "pixel_contrast_dim": 2048},
                                                     pixel_contrast_segment_memory=10, pixel_contrast_pixel_memory=10**6)
        )  # fmt: skip

    class NoClassifier(torch.nn.Module):
        config = tiny_segformer().config

    with pytest.raises(TypeError, match="NoClassifier has none"):
        PixelContrastTrainingModel(NoClassifier(), PixelContrastArguments(**CONTRAST))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("weight", float("nan"), r"--pixel_contrast_weight must be a finite number in \[0, 1000\], got nan"),
        ("weight", float("inf"), r"--pixel_contrast_weight must be a finite number in \[0, 1000\], got inf"),
        ("temperature", float("inf"), r"--pixel_contrast_temperature must be a finite number in \[0.001, 1000\]"),
        ("base_temperature", 1e-300, r"--pixel_contrast_base_temperature must be .* got 1e-300"),
        ("pixel_memory", 10**9, "--pixel_contrast_pixel_memory must be at most 1000000, got 1000000000"),
        ("segment_memory", 10**9, "--pixel_contrast_segment_memory must be at most 1000000, got 1000000000"),
        ("dim", 10**7, "--pixel_contrast_dim must be at most 65536, got 10000000"),
        ("max_anchors", 0, "--pixel_contrast_max_anchors must be >= 1, got 0"),
    ],
)
def test_non_finite_and_absurd_settings_are_refused_naming_the_flag(flag: str, value: float, message: str) -> None:
    """Each of these used to be accepted: every step then skipped as non-finite, or a huge allocation."""
    settings = PixelContrastArguments(**{**CONTRAST, f"pixel_contrast_{flag}": value})
    with pytest.raises(ValueError, match=message):
        PixelContrastTrainingModel(tiny_segformer(), settings)


def test_a_run_without_memory_saves_no_empty_memory_and_resumes(tmp_path: Path) -> None:
    """The default memory sizes (0): the empty buffers are not saved (they were dropped as "shared" with a warning
    and the resume failed with `Missing key(s) in state_dict: "pixel_memory"`)."""
    no_memory = ["--pixel_contrast", "--pixel_contrast_max_views", "4", "--pixel_contrast_dim", "8"]
    common = [*TINY_RUN, "--head", "linear", *no_memory, "--max_steps", "3", "--checkpointing_steps", "2"]
    output = tmp_path / "run"
    first = run_training([*common, "--output_dir", str(output)])
    assert "shared tensor" not in first.stderr
    checkpoint = load_file(output / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert "segment_memory" not in checkpoint and "pixel_memory" not in checkpoint
    uninterrupted = load_file(output / "model.safetensors")
    resumed = run_training([*common, "--output_dir", str(output), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in resumed.stderr
    final = load_file(output / "model.safetensors")
    for name in uninterrupted:
        torch.testing.assert_close(final[name], uninterrupted[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------ train.py runs

CONTRAST_FLAGS = [
    "--pixel_contrast", "--pixel_contrast_max_views", "4", "--pixel_contrast_dim", "8",
    "--pixel_contrast_segment_memory", "6", "--pixel_contrast_pixel_memory", "10",
    "--pixel_contrast_pixels_per_segment", "2",
]  # fmt: skip


def test_linear_run_exports_a_plain_segformer_and_resume_restores_the_memory(tmp_path: Path) -> None:
    common = [*TINY_RUN, "--head", "linear", *CONTRAST_FLAGS, "--max_steps", "4", "--checkpointing_steps", "2"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_training([*common, "--output_dir", str(uninterrupted)])

    # the exported folder is a plain transformers SegFormer: no projection head, no memory, no wrapper prefix
    weights = load_file(uninterrupted / "model.safetensors")
    assert not [name for name in weights if "memory" in name or "projection" in name or "segmentation_model" in name]
    assert json.loads((uninterrupted / "config.json").read_text())["architectures"] == ["SegformerForSemanticSegmentation"]
    assert not list(uninterrupted.glob("*.py"))  # no remote code needed
    model = SegformerForSemanticSegmentation.from_pretrained(uninterrupted)
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, model.config.num_labels, 8, 8)

    # the checkpoint holds the wrapper: projection head and the memory, partly filled
    checkpoint = load_file(uninterrupted / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert checkpoint["segment_memory"].shape == (model.config.num_labels, 6, 8)
    assert int(checkpoint["segment_memory_filled"].sum()) > 0 and int(checkpoint["pixel_memory_filled"].sum()) > 0
    assert "projection_head.hidden.weight" in checkpoint

    # resuming from step 2 continues with that memory: the same final weights, bit for bit
    shutil.copytree(uninterrupted / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    run_training([*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    final = load_file(resumed / "model.safetensors")
    assert final.keys() == weights.keys()
    for name in weights:
        torch.testing.assert_close(final[name], weights[name], rtol=0, atol=0, msg=name)


def test_protoseg_run_with_contrast_logs_the_term_and_exports_protoseg(tmp_path: Path) -> None:
    output = tmp_path / "run"
    result = run_training([*TINY_RUN, *CONTRAST_FLAGS, "--max_steps", "3", "--output_dir", str(output),
                           "--report_to", "tensorboard"])  # fmt: skip
    assert result.returncode == 0
    weights = load_file(output / "model.safetensors")
    assert "prototype_bank.prototypes" in weights and not [name for name in weights if "memory" in name]
    card = (output / "README.md").read_text()
    assert "| Pixel contrast (training only) | ContrastiveSeg loss, weight 0.1, temperature 0.1, 1024 anchors" in card
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(output.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "train/contrast_loss" in events.Tags()["scalars"]


# ------------------------------------------------------------------------------ two processes

WORLD_SIZE = 2


def _worker(rank: int, init_file: str, output_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)
    ddp_model, finished = None, False
    try:
        wrapper = PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, **MEMORY)).train()
        ddp_model = torch.nn.parallel.DistributedDataParallel(wrapper)
        torch.manual_seed(10 + rank)  # each process samples its own pixels
        segments_seen = torch.zeros(3, dtype=torch.long)
        for step in range(2):
            pixel_values, labels = batch(100 * step + rank)
            ddp_model(pixel_values, labels=labels).loss.backward()
            for image_labels in labels:
                present = torch.unique(image_labels[::4, ::4])
                segments_seen[present[present != 255]] += 1
        torch.save(
            {"buffers": {name: b.clone() for name, b in wrapper.named_buffers()}, "segments_seen": segments_seen},
            os.path.join(output_dir, f"rank{rank}.pt"),
        )
        finished = True
    finally:
        ddp_model = None  # release DDP before the group (see tests/test_distributed_prototypes.py)
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def test_two_processes_keep_identical_memories_holding_both_processes_entries(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    memory_buffers = [name for name in ranks[0]["buffers"] if "memory" in name]  # (BatchNorm statistics are local)
    assert len(memory_buffers) == 6
    for name in memory_buffers:
        torch.testing.assert_close(ranks[1]["buffers"][name], ranks[0]["buffers"][name], rtol=0, atol=0, msg=name)
    # every segment of both processes' images was written (up to the 6 slots), not just the local ones
    segments_seen = ranks[0]["segments_seen"] + ranks[1]["segments_seen"]
    filled = ranks[0]["buffers"]["segment_memory_filled"]
    assert filled.tolist() == segments_seen.clamp(max=6).tolist()
    assert (filled > ranks[0]["segments_seen"].clamp(max=6)).any()


def test_a_skipped_step_restores_every_buffer_but_the_self_guarded_memory() -> None:
    from training.loop import buffers_to_restore

    wrapper = PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, **MEMORY))
    restored = set(buffers_to_restore(wrapper))
    memory = {name for name, _ in wrapper.named_buffers() if "memory" in name}
    assert len(memory) == 6 and not memory & restored
    assert restored == {name for name, _ in wrapper.named_buffers()} - memory
    assert "training_forwards" in restored and "segmentation_model.decode_head.batch_norm.running_mean" in restored
    nested = torch.nn.Sequential(wrapper)  # names with a prefix (as inside DDP's "module.")
    assert set(buffers_to_restore(nested)) == {f"0.{name}" for name in restored}


def test_memory_entries_use_the_running_batch_norm_statistics_and_leave_them_unchanged() -> None:
    from training.pixel_contrast_objective import segment_means

    wrapper = PixelContrastTrainingModel(tiny_segformer(), PixelContrastArguments(**CONTRAST, **MEMORY)).train()
    wrapper(*batch(5)[:1], labels=batch(5)[1])  # one training forward: running statistics move off their start
    norm = wrapper.projection_head.batch_norm
    running = (norm.running_mean.clone(), norm.running_var.clone())
    memory_before = wrapper.segment_memory.clone()
    _, labels = batch(6)
    pixel_labels = labels[:, ::4, ::4].reshape(2, -1)
    features = torch.randn(2 * 64, 16)
    wrapper._write_memory(features, pixel_labels)
    torch.testing.assert_close((norm.running_mean, norm.running_var), running, rtol=0, atol=0)
    # reference: the head in eval mode (running statistics), then the segment means
    wrapper.projection_head.eval()
    with torch.no_grad():
        expected, present = segment_means(
            wrapper.projection_head(features).reshape(2, 64, -1), pixel_labels, num_classes=3, ignore_index=255
        )
    written = [row for row in expected[present]]
    new_rows = [row for c in range(3) for row in wrapper.segment_memory[c] if not any(torch.equal(row, old) for old in memory_before[c])]
    assert len(new_rows) == len(written)
    for row in written:
        assert any(torch.allclose(row, new, atol=1e-6) for new in new_rows)
