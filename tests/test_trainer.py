"""ProtoSeg under transformers' `Trainer`: the fine-tuning guide's `compute_metrics` gets the logits alone, and
prototypes move exactly as in a plain training step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_protoseg_config

from modeling_protoseg import ProtoSegForSemanticSegmentation

pytest.importorskip("accelerate", reason="Trainer needs accelerate (the `train` extra)")
from transformers import Trainer, TrainingArguments  # noqa: E402

NUM_CLASSES = 3


def guide_compute_metrics(eval_pred) -> dict[str, float]:
    """The semantic-segmentation fine-tuning guide's `compute_metrics` (upsample, argmax, mean IoU), with the
    mean IoU computed here: `evaluate.load("mean_iou")` needs the Hub."""
    logits, labels = eval_pred
    assert isinstance(logits, np.ndarray), f"compute_metrics got {type(logits).__name__}, not the logits"
    with torch.no_grad():
        upsampled = F.interpolate(
            torch.from_numpy(logits), size=labels.shape[-2:], mode="bilinear", align_corners=False
        )
        predictions = upsampled.argmax(dim=1).numpy()
    valid = labels != 255
    ious = []
    for index in range(NUM_CLASSES):
        intersection = ((predictions == index) & (labels == index) & valid).sum()
        union = (((predictions == index) | (labels == index)) & valid).sum()
        if union > 0:
            ious.append(intersection / union)
    return {"mean_iou": float(np.mean(ious))}


def make_samples(count: int = 4, size: int = 32) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(count):
        labels = torch.randint(0, NUM_CLASSES, (size, size), generator=generator)
        labels[:2] = 255
        samples.append({"pixel_values": torch.randn(3, size, size, generator=generator), "labels": labels})
    return samples


def trainer_arguments(output_dir: str, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=2,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the manual loop below does none
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_trainer_evaluate_hands_compute_metrics_the_logits_alone(tmp_path):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(NUM_CLASSES))
    samples = make_samples()
    trainer = Trainer(
        model=model,
        args=trainer_arguments(str(tmp_path)),
        train_dataset=samples,
        eval_dataset=samples,
        compute_metrics=guide_compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    assert np.isfinite(metrics["eval_loss"])
    predictions = trainer.predict(samples).predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (4, NUM_CLASSES, 8, 8)


def test_trainer_moves_prototypes_exactly_as_a_plain_training_step(tmp_path):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(NUM_CLASSES))
    manual_model = copy.deepcopy(model)
    samples = make_samples()
    Trainer(model=model, args=trainer_arguments(str(tmp_path)), train_dataset=samples).train()

    manual_model.train()
    optimizer = torch.optim.SGD(manual_model.parameters(), lr=0.05)
    for start in (0, 2):
        batch = {key: torch.stack([sample[key] for sample in samples[start : start + 2]]) for key in samples[0]}
        manual_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    assert int(model.prototype_bank.update_counts.sum()) > 0
    torch.testing.assert_close(model.prototypes, manual_model.prototypes, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.prototype_bank.update_counts, manual_model.prototype_bank.update_counts)
    manual_state = manual_model.state_dict()
    for name, trained in model.state_dict().items():
        manual = manual_state[name]
        if trained.is_floating_point():
            assert torch.allclose(trained, manual, rtol=0, atol=1e-6), name
        else:
            assert torch.equal(trained, manual), name


def test_the_packages_mean_iou_metric_streams_under_trainer_and_agrees_with_the_guides(tmp_path):
    from training.metrics import MeanIoUMetric

    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(NUM_CLASSES)).eval()
    samples = make_samples(count=6)

    def evaluate_with(compute_metrics, **arguments) -> dict[str, float]:
        trainer = Trainer(
            model=model,
            args=trainer_arguments(str(tmp_path), **arguments),
            eval_dataset=samples,
            compute_metrics=compute_metrics,
        )
        return trainer.evaluate()

    guide = evaluate_with(guide_compute_metrics)
    streamed = evaluate_with(MeanIoUMetric(num_labels=NUM_CLASSES), batch_eval_metrics=True)
    assert streamed["eval_mean_iou"] == pytest.approx(guide["eval_mean_iou"], abs=1e-12)
    assert {"eval_mean_accuracy", "eval_overall_accuracy", "eval_per_category_iou"} <= set(streamed)
